//! A sealed trace record turned into its OTLP spans, as protobuf bytes, on the export thread:
//! the server span and its children (`auth.verify`, `budget.decide`, one `upstream.attempt`
//! per try). Everything here runs off the request path.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::Version;

use super::otlp::{self, tag};
use super::span::{self, Attempt, Sealed, Text, Timing, Trace};

/// Wall-clock time for `Instant`s: one reading of both clocks, taken by the export thread for
/// the records it takes off the queue (the workers read no wall clock). A record is at most a
/// batch delay old, so a clock step in between shifts its spans as it would have shifted a
/// reading taken at the request's start.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    mono: Instant,
    wall_ns: u64,
}

impl Clock {
    pub(super) fn now() -> Clock {
        let mono = Instant::now();
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock { mono, wall_ns }
    }

    fn nanos(&self, at: Instant) -> u64 {
        if at >= self.mono {
            self.wall_ns + (at - self.mono).as_nanos() as u64
        } else {
            self.wall_ns
                .saturating_sub((self.mono - at).as_nanos() as u64)
        }
    }
}

/// Reused buffers: one span's bytes before its length is known, small formatted values.
#[derive(Default)]
pub(super) struct Encoder {
    span: Vec<u8>,
    fmt: String,
}

/// The ids and times of one span.
struct Head<'a> {
    id: &'a [u8; 8],
    parent: Option<&'a [u8; 8]>,
    kind: i32,
    start: Instant,
    end: Instant,
}

impl Encoder {
    /// Appends the spans of `t` (sealed) to `out`, each as a `ScopeSpans.spans` field; returns
    /// how many.
    pub(super) fn trace(&mut self, t: &Trace, clock: &Clock, out: &mut Vec<u8>) -> u64 {
        let Some(e) = &t.end else {
            return 0;
        };
        let text = t.text.as_str();
        let mut n = 1;

        // the server span
        let s = self.begin(
            t,
            clock,
            Head {
                id: &t.span_id,
                parent: t.parent.as_ref(),
                kind: otlp::KIND_SERVER,
                start: t.start,
                end: e.end,
            },
        );
        let method = t.method.as_str();
        match e.route {
            // `GET api` (method and route name), or the method alone for a request no route
            // matched
            Some((_, name)) => otlp::string_parts(s, tag::SPAN_NAME, &[method, " ", name.of(text)]),
            None => otlp::string_parts(s, tag::SPAN_NAME, &[method]),
        }
        if let Some(ts) = e.tracestate {
            otlp::bytes(s, tag::SPAN_TRACE_STATE, ts.of(text).as_bytes());
        }
        self.server_attributes(t, e, text);
        if e.status >= 500 {
            let reason = e.reason.map_or("", |r| r.of(text));
            status(&mut self.span, reason);
        }
        self.end(out);

        if let Some(a) = t.auth.filter(|_| !e.public) {
            let id = span::span_id();
            let s = self.child(t, clock, &id, otlp::KIND_INTERNAL, a, e.end);
            otlp::string_parts(s, tag::SPAN_NAME, &["auth.verify"]);
            if let Some(hit) = t.token_cache {
                let v = if hit { "hit" } else { "miss" };
                otlp::kv_str(s, tag::SPAN_ATTRIBUTES, "cc.token_cache", v);
            }
            self.end(out);
            n += 1;
        }
        if let Some(b) = t.budget {
            let id = span::span_id();
            let s = self.child(t, clock, &id, otlp::KIND_INTERNAL, b, e.end);
            otlp::string_parts(s, tag::SPAN_NAME, &["budget.decide"]);
            self.end(out);
            n += 1;
        }
        for a in t.attempts() {
            self.attempt(t, clock, e, a, text);
            self.end(out);
            n += 1;
        }
        n
    }

    /// Starts a span in `self.span`: its ids and times.
    fn begin(&mut self, t: &Trace, clock: &Clock, h: Head<'_>) -> &mut Vec<u8> {
        let s = &mut self.span;
        s.clear();
        otlp::bytes(s, tag::SPAN_TRACE_ID, &t.trace_id);
        otlp::bytes(s, tag::SPAN_SPAN_ID, h.id);
        if let Some(p) = h.parent {
            otlp::bytes(s, tag::SPAN_PARENT_SPAN_ID, p);
        }
        otlp::int32(s, tag::SPAN_KIND, h.kind);
        otlp::fixed64(s, tag::SPAN_START, clock.nanos(h.start));
        otlp::fixed64(s, tag::SPAN_END, clock.nanos(h.end));
        s
    }

    fn child(
        &mut self,
        t: &Trace,
        clock: &Clock,
        id: &[u8; 8],
        kind: i32,
        time: Timing,
        end: Instant,
    ) -> &mut Vec<u8> {
        let head = Head {
            id,
            parent: Some(&t.span_id),
            kind,
            start: time.start,
            end: time.end.unwrap_or(end),
        };
        self.begin(t, clock, head)
    }

    /// Appends the span in `self.span` to `out`.
    fn end(&self, out: &mut Vec<u8>) {
        otlp::len_prefix(out, tag::SCOPE_SPANS_SPAN, self.span.len());
        out.extend_from_slice(&self.span);
    }

    fn server_attributes(&mut self, t: &Trace, e: &Sealed, text: &str) {
        let (s, fmt) = (&mut self.span, &mut self.fmt);
        let attr = |s: &mut Vec<u8>, k: &str, v: &str| otlp::kv_str(s, tag::SPAN_ATTRIBUTES, k, v);
        attr(s, "http.request.method", t.method.as_str());
        attr(s, "url.path", e.path.of(text));
        attr(s, "url.scheme", if t.tls { "https" } else { "http" });
        attr(s, "network.protocol.version", protocol_version(t.version));
        fmt.clear();
        // writing into a String cannot fail
        let _ = write!(fmt, "{}", e.client);
        attr(s, "client.address", fmt);
        otlp::kv_int(
            s,
            tag::SPAN_ATTRIBUTES,
            "http.response.status_code",
            i64::from(e.status),
        );
        if let Some(h) = e.host {
            let (host, port) = split_host(h.of(text));
            attr(s, "server.address", host);
            if let Some(p) = port {
                otlp::kv_int(s, tag::SPAN_ATTRIBUTES, "server.port", i64::from(p));
            }
        }
        let opt = |s: &mut Vec<u8>, k: &str, v: Option<Text>| {
            if let Some(v) = v {
                attr(s, k, v.of(text));
            }
        };
        opt(s, "cc.request_id", e.request_id);
        opt(s, "url.query", e.query);
        if let Some((prefix, name)) = e.route {
            attr(s, "http.route", prefix.of(text));
            attr(s, "cc.route", name.of(text));
        }
        opt(s, "cc.reason", e.reason);
        opt(s, "cc.sub", e.sub);
        opt(s, "cc.realm", e.realm);
        opt(s, "cc.upstream", e.upstream);
        if e.status >= 500 {
            fmt.clear();
            let _ = write!(fmt, "{}", e.status);
            attr(s, "error.type", fmt);
        }
    }

    fn attempt(&mut self, t: &Trace, clock: &Clock, e: &Sealed, a: &Attempt, text: &str) {
        self.child(t, clock, &a.span_id, otlp::KIND_CLIENT, a.time, e.end);
        let (s, fmt) = (&mut self.span, &mut self.fmt);
        otlp::string_parts(s, tag::SPAN_NAME, &["upstream.attempt"]);
        let attr = |s: &mut Vec<u8>, k: &str, v: &str| otlp::kv_str(s, tag::SPAN_ATTRIBUTES, k, v);
        attr(s, "http.request.method", t.method.as_str());
        if let Some(u) = e.upstream {
            attr(s, "cc.upstream", u.of(text));
        }
        if let Some(ep) = a.endpoint {
            let (host, port) = split_host(ep.of(text));
            attr(s, "server.address", host);
            if let Some(p) = port {
                otlp::kv_int(s, tag::SPAN_ATTRIBUTES, "server.port", i64::from(p));
            }
        }
        if let Some(code) = a.status {
            otlp::kv_int(
                s,
                tag::SPAN_ATTRIBUTES,
                "http.response.status_code",
                i64::from(code),
            );
            if code >= 400 {
                fmt.clear();
                let _ = write!(fmt, "{code}");
                attr(s, "error.type", fmt);
                status(s, "");
            }
        }
        if let Some(err) = a.error {
            attr(s, "error.type", "upstream_error");
            status(s, err.of(text));
        }
    }
}

/// A span's `Status`: an error, with its message.
fn status(s: &mut Vec<u8>, message: &str) {
    otlp::status_error(s, tag::SPAN_STATUS, message);
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        _ => "",
    }
}

/// `host:port` → (host, port); brackets of an IPv6 literal removed.
fn split_host(s: &str) -> (&str, Option<u16>) {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse().ok())
        }
        _ => (s, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn hosts_split() {
        assert_eq!(split_host("a.example:8080"), ("a.example", Some(8080)));
        assert_eq!(split_host("a.example"), ("a.example", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
    }
}
