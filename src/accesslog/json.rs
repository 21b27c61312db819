//! The access-log line written without serde: the same bytes `serde_json` writes for a
//! [`Record`] (field order, escapes, number formats — a test compares them), for a fraction of
//! the instructions. Through serde a line cost ~9k instructions (a map serializer because of
//! the flattened AI fields, a per-byte escape loop over every string, `Ipv4Addr`'s and the
//! timestamp's `Display` machinery); here the strings that need no escape — nearly all — are
//! checked in one vectorizable pass and copied whole.

use std::io::Write;
use std::net::IpAddr;

use super::{AiFields, Record};

/// `,"name":` — the keys are ours (plain ASCII), and every one follows another field
/// (`time` opens the object), so each is one constant copy.
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}

impl Record<'_> {
    /// Appends this record as one JSON object (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        str(out, self.time.as_str());
        key!(out, "request_id");
        str(out, self.request_id);
        key!(out, "client_ip");
        ip(out, self.client_ip);
        key!(out, "method");
        str(out, self.method);
        key!(out, "path");
        str(out, self.path);
        key!(out, "protocol");
        str(out, self.protocol);
        key!(out, "route");
        opt_str(out, self.route);
        key!(out, "status");
        int(out, self.status);
        key!(out, "duration_ms");
        float(out, self.duration_ms);
        if let Some(t) = self.ttfb_ms {
            key!(out, "ttfb_ms");
            float(out, t);
        }
        key!(out, "upstream");
        opt_str(out, self.upstream);
        key!(out, "upstream_status");
        match self.upstream_status {
            Some(s) => int(out, s),
            None => out.extend_from_slice(b"null"),
        }
        key!(out, "attempts");
        int(out, self.attempts);
        key!(out, "endpoint");
        opt_str(out, self.endpoint);
        key!(out, "sub");
        opt_str(out, self.sub);
        key!(out, "iss");
        opt_str(out, self.iss);
        key!(out, "realm");
        opt_str(out, self.realm);
        key!(out, "bytes_in");
        int(out, self.bytes_in);
        key!(out, "bytes_out");
        int(out, self.bytes_out);
        key!(out, "reason");
        opt_str(out, self.reason);
        if self.incomplete {
            out.extend_from_slice(b",\"incomplete\":true");
        }
        if let Some(t) = self.trace_id {
            key!(out, "trace_id");
            str(out, t);
        }
        if let Some(ai) = &self.ai {
            ai_fields(out, ai);
        }
        out.push(b'}');
    }
}

/// The flattened AI fields, after the record's own.
fn ai_fields(out: &mut Vec<u8>, ai: &AiFields<'_>) {
    if let Some(m) = ai.model {
        key!(out, "model");
        str(out, m);
    }
    let tokens = |out: &mut Vec<u8>, k: &[u8], v: Option<u64>| {
        if let Some(v) = v {
            out.extend_from_slice(k);
            int(out, v);
        }
    };
    tokens(out, b",\"input_tokens\":", ai.input_tokens);
    tokens(out, b",\"output_tokens\":", ai.output_tokens);
    tokens(out, b",\"cache_read_tokens\":", ai.cache_read_tokens);
    tokens(out, b",\"cache_write_tokens\":", ai.cache_write_tokens);
    tokens(out, b",\"reasoning_tokens\":", ai.reasoning_tokens);
    key!(out, "usage_source");
    str(out, ai.usage_source);
    if let Some(c) = ai.cost_usd {
        key!(out, "cost_usd");
        float(out, c);
    }
    out.extend_from_slice(if ai.stream {
        b",\"stream\":true"
    } else {
        b",\"stream\":false"
    });
}

fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as `serde_json` writes it: `"` and `\` escaped, the control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else (DEL and non-ASCII included) as is.
fn str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.push(b'"');
    // a fold without early exit: the check over the whole string vectorizes
    let clean = b
        .iter()
        .fold(true, |ok, &c| ok & (c >= 0x20 && c != b'"' && c != b'\\'));
    if clean {
        out.extend_from_slice(b);
    } else {
        escape(out, b);
    }
    out.push(b'"');
}

#[cold]
fn escape(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        start = i + 1;
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&[HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
        }
    }
    out.extend_from_slice(&b[start..]);
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `serde_json`'s f64: the shortest representation that round-trips (`zmij`, serde_json's
/// own formatter), `null` when not finite.
fn float(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// An address as a JSON string; IPv4 without the formatting machinery.
fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            let (buf, n) = crate::forward::ipv4_text(v4);
            out.extend_from_slice(&buf[..n]);
        }
        // `Ipv6Addr`'s text has nothing to escape
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::Stamp;
    use super::*;

    /// Strings that exercise every escape: quotes, backslashes, each control character, DEL,
    /// non-ASCII, and clean ones of several lengths (the vectorized check's tail).
    fn samples() -> Vec<String> {
        let mut v: Vec<String> = vec![
            String::new(),
            "a".into(),
            "/ai/v2/completions?x=1&y=\"2\"".into(),
            "back\\slash".into(),
            "tab\there\nnew\rret".into(),
            "\u{7f}del and é ü 漢字 🦀".into(),
            "spiffe://example.org/ns/ci/sa/runner".into(),
            "x".repeat(33),
            "y".repeat(100) + "\"",
        ];
        for c in 0u8..0x20 {
            v.push(format!("c{}d", c as char));
        }
        v
    }

    fn records<'a>(strs: &'a [String], stamp: &'a Stamp) -> Vec<Record<'a>> {
        let mut out = Vec::new();
        for (i, s) in strs.iter().enumerate() {
            let other = &strs[(i * 7 + 3) % strs.len()];
            let some = |k: usize| (i % k != 0).then_some(s.as_str());
            let ai = (i % 3 == 0).then(|| AiFields {
                model: some(2),
                input_tokens: (i % 2 == 0).then_some(i as u64 * 1000),
                output_tokens: Some(u64::MAX - i as u64),
                cache_read_tokens: (i % 4 == 0).then_some(0),
                cache_write_tokens: None,
                reasoning_tokens: (i % 5 == 0).then_some(7),
                usage_source: if i % 2 == 0 { "reported" } else { "missing" },
                cost_usd: [Some(0.0), Some(1.5e-7), Some(12.0), None, Some(f64::NAN)][i % 5],
                stream: i % 2 == 1,
            });
            out.push(Record {
                time: *stamp,
                request_id: other,
                client_ip: if i % 2 == 0 {
                    IpAddr::from([10, 0, i as u8, 255])
                } else {
                    "2001:db8::1".parse().unwrap()
                },
                method: "POST",
                path: s,
                protocol: "HTTP/1.1",
                route: some(2),
                status: 200 + i as u16,
                duration_ms: [0.0, 1.234, 1e-3, 123456.789, f64::INFINITY][i % 5],
                ttfb_ms: [None, Some(0.5), Some(1e21), Some(3.0)][i % 4],
                upstream: some(3),
                upstream_status: (i % 2 == 0).then_some(502),
                attempts: i as u32,
                endpoint: some(4),
                sub: Some(other),
                iss: some(5),
                realm: some(6),
                bytes_in: i as u64,
                bytes_out: u64::MAX,
                reason: some(2),
                incomplete: i % 2 == 0,
                trace_id: some(3),
                ai,
            });
        }
        out
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let strs = samples();
        let stamp =
            Stamp::at(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_787_200_123));
        for r in records(&strs, &stamp) {
            let mut ours = Vec::new();
            r.write_json(&mut ours);
            let theirs = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }
}
