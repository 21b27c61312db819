//! The request head checked before anything acts on it: one valid `Host`, and no transfer
//! coding we would forward wrongly. hyper already refuses conflicting `Content-Length`s and a
//! `Transfer-Encoding` whose last coding is not `chunked`; it lets these through:
//!
//! - two `Host` lines, or none on HTTP/1.1 (RFC 9112 §3.2: a server MUST answer 400). Upstreams
//!   and caches behind us pick one or the other; a request whose host is ambiguous is how host
//!   header attacks (cache poisoning, password-reset links to the attacker's host) begin;
//! - a `Host` that is not `host[:port]` (userinfo, a path, spaces);
//! - on HTTP/2, a `host` naming another host than `:authority` (RFC 9113 §8.3.1: malformed);
//! - a transfer coding before `chunked` (`gzip, chunked`): hyper removes the chunking and the
//!   upstream would get the still-coded bytes as the body, so it is refused 501 (RFC 9112 §6.1)
//!   as nginx does.
//!
//! Cost on the hot path: one `Host` lookup; `Transfer-Encoding` is looked at only on an
//! HTTP/1 request whose body has no declared length.

use http::header::{HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request has no Host header (HTTP/1.1 requires one)")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("the host header names another host than :authority")]
    HostMismatch,
    #[error("transfer codings other than chunked are not supported")]
    TransferCoding,
}

/// Checks the head of a client request (see the module doc).
pub fn check<B: http_body::Body>(req: &Request<B>) -> Result<(), HeadError> {
    let h = req.headers();
    let version = req.version();
    check_host(h, version, req.uri().authority().map(|a| a.as_str()))?;
    if version < Version::HTTP_2 && req.body().size_hint().exact().is_none() {
        check_transfer_coding(h)?;
    }
    Ok(())
}

fn check_host(h: &HeaderMap, version: Version, authority: Option<&str>) -> Result<(), HeadError> {
    let mut hosts = h.get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        // HTTP/1.0 may omit it; HTTP/2 carries :authority instead
        return match version {
            Version::HTTP_11 => Err(HeadError::MissingHost),
            _ => Ok(()),
        };
    };
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    let host = host.as_bytes();
    if !valid_host(host) {
        return Err(HeadError::InvalidHost);
    }
    if version >= Version::HTTP_2 {
        if let Some(a) = authority {
            if !a.as_bytes().eq_ignore_ascii_case(host) {
                return Err(HeadError::HostMismatch);
            }
        }
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 9110 §7.2): a reg-name, IPv4 or bracketed IP literal, no
/// userinfo. Empty is allowed (a target without an authority, RFC 9112 §3.2).
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// Only `chunked` (hyper has already refused any list whose last coding is not `chunked`).
fn check_transfer_coding(h: &HeaderMap) -> Result<(), HeadError> {
    for v in h.get_all(TRANSFER_ENCODING) {
        let codings = v.as_bytes().split(|&b| b == b',');
        for c in codings {
            if !c.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::TransferCoding);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<String> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(String::new()).unwrap_or_default()
    }

    /// A body without a declared length (as a chunked HTTP/1.1 body is).
    struct Unsized;
    impl http_body::Body for Unsized {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
    }

    fn chunked(te: &str) -> Request<Unsized> {
        let mut r = Request::new(Unsized);
        r.headers_mut()
            .insert(HOST, http::HeaderValue::from_static("a"));
        if let Ok(v) = http::HeaderValue::from_str(te) {
            r.headers_mut().insert(TRANSFER_ENCODING, v);
        }
        r
    }

    #[test]
    fn host_rules() {
        use HeadError::*;
        let ok = |v, uri, h: &[(&str, &str)]| check(&req(v, uri, h));
        assert_eq!(
            ok(Version::HTTP_11, "/x", &[("host", "a.example:8080")]),
            Ok(())
        );
        assert_eq!(
            ok(Version::HTTP_11, "/x", &[("host", "[::1]:8080")]),
            Ok(())
        );
        assert_eq!(ok(Version::HTTP_11, "/x", &[("host", "")]), Ok(()));
        assert_eq!(ok(Version::HTTP_10, "/x", &[]), Ok(()));
        assert_eq!(ok(Version::HTTP_11, "/x", &[]), Err(MissingHost));
        assert_eq!(
            ok(Version::HTTP_11, "/x", &[("host", "a"), ("host", "b")]),
            Err(DuplicateHost)
        );
        assert_eq!(
            ok(Version::HTTP_10, "/x", &[("host", "a"), ("host", "a")]),
            Err(DuplicateHost)
        );
        for bad in ["a b", "a/b", "user@a", "a\\b", "a?b", "a#b", "a\"b"] {
            assert_eq!(
                ok(Version::HTTP_11, "/x", &[("host", bad)]),
                Err(InvalidHost),
                "{bad}"
            );
        }
        // HTTP/2: :authority alone, or a host that agrees with it
        assert_eq!(ok(Version::HTTP_2, "http://a.example/x", &[]), Ok(()));
        assert_eq!(
            ok(
                Version::HTTP_2,
                "http://a.example/x",
                &[("host", "A.example")]
            ),
            Ok(())
        );
        assert_eq!(
            ok(
                Version::HTTP_2,
                "http://a.example/x",
                &[("host", "evil.example")]
            ),
            Err(HostMismatch)
        );
        // HTTP/1.1 absolute-form: the target's authority wins (the pipeline uses it), Host
        // must still be there and valid
        assert_eq!(
            ok(
                Version::HTTP_11,
                "http://a.example/x",
                &[("host", "b.example")]
            ),
            Ok(())
        );
    }

    #[test]
    fn only_chunked_transfer_coding() {
        let h = |te: &str| check(&chunked(te));
        assert_eq!(h("chunked"), Ok(()));
        assert_eq!(h("Chunked"), Ok(()));
        assert_eq!(h("gzip, chunked"), Err(HeadError::TransferCoding));
        assert_eq!(h("identity,chunked"), Err(HeadError::TransferCoding));
        // a body of declared length is not looked at (hyper dropped a TE with it anyway)
        let r = req(
            Version::HTTP_11,
            "/x",
            &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
        );
        assert_eq!(check(&r), Ok(()));
    }
}
