//! The gRPC wire details the gateway writes itself (refusals, streams it ends): status codes,
//! the `grpc-status` / `grpc-message` headers and the message's percent-encoding
//! (grpc/grpc `doc/PROTOCOL-HTTP2.md`).

use http::{HeaderName, HeaderValue};

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes the gateway answers with.
pub mod code {
    pub const UNKNOWN: u16 = 2;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// `grpc-message` as the gRPC spec writes it: the UTF-8 bytes, with `%` and everything outside
/// printable ASCII (%x20-7E) percent-encoded.
pub fn message(s: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    // only visible ASCII and spaces remain: always a valid header value
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a `grpc-message` as a gRPC client does.
    fn decode(v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'%' {
                let hex = std::str::from_utf8(&v[i + 1..i + 3]).expect("hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("hex byte"));
                i += 3;
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no_route: plain text"), "no_route: plain text");
        assert_eq!(message("100% sure"), "100%25 sure");
        assert_eq!(message("a\nb\u{e9}"), "a%0Ab%C3%A9");
        assert_eq!(message("\u{7f}\u{0}"), "%7F%00");
    }

    proptest::proptest! {
        #[test]
        fn messages_round_trip(s in "\\PC*|[\\x00-\\x7f%]*") {
            let v = message(&s);
            let bytes = v.as_bytes();
            proptest::prop_assert!(bytes.iter().all(|b| (0x20..=0x7e).contains(b)));
            proptest::prop_assert_eq!(decode(bytes), s.as_bytes());
        }
    }
}
