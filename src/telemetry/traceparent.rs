//! W3C Trace Context `traceparent`, parsed strictly (version 00's exact shape; a later version
//! by its first four fields only, as the spec asks). Anything else is `None`: the request then
//! starts a new trace, and the malformed header is never forwarded.

/// A parsed `traceparent`: the trace, the caller's span, and its sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`). Lowercase hex only, all-zero
/// ids refused, version `ff` refused, version 00 with anything after the flags refused.
pub fn parse(v: &[u8]) -> Option<TraceParent> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // version 00 is exactly 55 bytes; a future version may append `-…` fields
    if (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(v[36 + 2 * i], v[37 + 2 * i])?;
    }
    let flags = hex_byte(v[53], v[54])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

/// Lowercase only: the spec's `HEXDIGLC`.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// `00-<trace>-<span>-<flags>`, what we send upstream.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    let b = format_bytes(trace_id, span_id, sampled);
    // only ASCII is ever written into it
    String::from_utf8_lossy(&b).into_owned()
}

/// `format` on the stack (the request path: no allocation for the text).
pub fn format_bytes(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    for (i, b) in trace_id.iter().chain(span_id).enumerate() {
        // the span id starts after the trace id's 32 digits and a dash
        let at = 3 + 2 * i + usize::from(i >= 16);
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
    }
    if sampled {
        out[54] = b'1';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tp = parse(OK.as_bytes()).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled);
        let unsampled = OK.replace("-01", "-00");
        assert!(!parse(unsampled.as_bytes()).unwrap().sampled);
        assert_eq!(format(&tp.trace_id, &tp.parent_id, true), OK);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            &OK[..54],
            &OK.to_uppercase(),
            &OK.replace("00-4b", "ff-4b"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &format!("{OK}-extra"),
            &OK.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
        // a future version may carry more fields
        assert!(parse(format!("01{}-what", &OK[2..]).as_bytes()).is_some());
        assert!(parse(format!("01{}what", &OK[2..]).as_bytes()).is_none());
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(tp) = parse(&bytes) {
                let again = format(&tp.trace_id, &tp.parent_id, tp.sampled);
                prop_assert_eq!(parse(again.as_bytes()), Some(tp));
            }
        }

        #[test]
        fn any_well_formed_v00_parses(t in any::<[u8; 16]>(), p in any::<[u8; 8]>(), s: bool) {
            let v = format(&t, &p, s);
            let ok = t != [0; 16] && p != [0; 8];
            prop_assert_eq!(parse(v.as_bytes()).is_some(), ok);
        }
    }
}
