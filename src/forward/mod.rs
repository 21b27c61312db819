//! What crosses the hop: hop-by-hop headers dropped (both ways), identity headers stripped
//! from the client and set from verified claims, `X-Forwarded-*` and `X-Request-Id` added.

use http::header::{HeaderName, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Version};

use std::net::IpAddr;

use crate::auth::Verified;

pub mod head;
pub mod ipnet;
pub use head::HeadError;
pub use ipnet::IpNet;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
/// the h2c upgrade's settings (RFC 7540 §3.2.1): connection-specific, never forwarded
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Identity header names (`<prefix>Subject` …), built once from the config; `None` for one
/// `auth.identity_headers` leaves out.
pub struct IdentityNames {
    prefix: String,
    pub subject: Option<HeaderName>,
    pub issuer: Option<HeaderName>,
    pub scopes: Option<HeaderName>,
    pub realm: Option<HeaderName>,
}

impl IdentityNames {
    pub fn new(prefix_lower: &str, on: &crate::config::IdentityHeaders) -> Self {
        let n = |set: bool, s: &str| {
            set.then(|| {
                HeaderName::from_bytes(format!("{prefix_lower}{s}").as_bytes())
                    .unwrap_or(HeaderName::from_static("x-cc-invalid"))
            })
        };
        IdentityNames {
            prefix: prefix_lower.to_string(),
            subject: n(on.subject, "subject"),
            issuer: n(on.issuer, "issuer"),
            scopes: n(on.scopes, "scopes"),
            realm: n(on.realm, "realm"),
        }
    }

    /// Removes every client header under the identity prefix (anti-spoofing), then sets the
    /// ones the verified token backs.
    pub fn apply(&self, h: &mut HeaderMap, v: Option<&Verified>) {
        let spoofed = h
            .keys()
            .any(|k| k.as_str().starts_with(self.prefix.as_str()));
        if spoofed {
            let names: Vec<HeaderName> = h
                .keys()
                .filter(|k| k.as_str().starts_with(self.prefix.as_str()))
                .cloned()
                .collect();
            for n in names {
                h.remove(n);
            }
        }
        let Some(v) = v else { return };
        let id = &v.identity;
        for (name, val) in [
            (&self.subject, &id.subject),
            (&self.issuer, &id.issuer),
            (&self.scopes, &id.scopes),
            (&self.realm, &id.realm),
        ] {
            if let (Some(name), Some(val)) = (name, val) {
                h.insert(name.clone(), val.clone());
            }
        }
    }
}

/// With `auth.forward_token = false`: the token headers never reach the upstream
/// (`Authorization` only when it carried a Bearer token).
pub fn remove_token(h: &mut HeaderMap, from: &[crate::config::TokenHeader]) {
    for th in from {
        match th {
            crate::config::TokenHeader::Plain(n) => {
                h.remove(n);
            }
            crate::config::TokenHeader::Authorization => {
                let bearer = h.get(http::header::AUTHORIZATION).is_some_and(|v| {
                    v.as_bytes()
                        .get(..7)
                        .is_some_and(|p| p.eq_ignore_ascii_case(b"bearer "))
                });
                if bearer {
                    h.remove(http::header::AUTHORIZATION);
                }
            }
        }
    }
}

/// Is this an HTTP/1.1 upgrade (WebSocket) request?
pub fn is_upgrade(h: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && h.contains_key(UPGRADE)
        && h.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Does `allowed` (a route's `upgrades`, lowercase) cover every protocol the request's
/// `Upgrade` offers? Versions (`websocket/13`) are ignored; an empty or garbled offer is not
/// covered. Only covered upgrades are tunnelled: anything else is proxied as an ordinary
/// request, so no bytes can reach a backend past routing and auth.
pub fn upgrade_allowed(h: &HeaderMap, allowed: &[String]) -> bool {
    let mut offered = h
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().ok().into_iter().flat_map(|s| s.split(',')))
        .map(|p| p.split('/').next().unwrap_or("").trim())
        .peekable();
    if offered.peek().is_none() || h.get_all(UPGRADE).iter().any(|v| v.to_str().is_err()) {
        return false;
    }
    offered.all(|p| !p.is_empty() && allowed.iter().any(|a| a.eq_ignore_ascii_case(p)))
}

/// Drops hop-by-hop headers (RFC 9110 §7.6.1), keeping `Connection: upgrade` + `Upgrade`
/// when the exchange is an upgrade.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // one pass over the names the message has, noting which hop-by-hop ones are there: most
    // requests carry none, most HTTP/1.1 responses only `Connection: keep-alive`, and each
    // removal of an absent name still hashes it
    let mut present = 0u16;
    for name in h.keys() {
        if *name == CONNECTION {
            present |= CONNECTION_BIT;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut upgrade_value = None;
    if present & CONNECTION_BIT != 0 {
        if let Some(conn) = h.remove(CONNECTION) {
            if let Ok(list) = conn.to_str() {
                for name in list.split(',').map(str::trim) {
                    if name.eq_ignore_ascii_case("upgrade")
                        || name.eq_ignore_ascii_case("close")
                        || name.eq_ignore_ascii_case("keep-alive")
                    {
                        continue;
                    }
                    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                        // never let a client drop our own headers by naming them in Connection
                        if n != X_REQUEST_ID && n != X_FORWARDED_FOR && n != HOST {
                            h.remove(n);
                        }
                    }
                }
            }
        }
    }
    if keep_upgrade {
        upgrade_value = h.remove(UPGRADE);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(name);
        }
    }
    if let Some(u) = upgrade_value {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `strip_hop_by_hop`'s mark for `Connection` (bits 0..8 are `HOP_BY_HOP`'s)
const CONNECTION_BIT: u16 = 1 << 8;

/// Removed from every forwarded message (with those `Connection` names).
const HOP_BY_HOP: [HeaderName; 8] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHORIZATION,
    HTTP2_SETTINGS,
    TE,
    TRAILER,
    TRANSFER_ENCODING, // hyper re-frames bodies itself
    UPGRADE,
];

/// The client's address: the TCP peer, unless the peer is a trusted proxy — then the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it are whatever
/// the client claimed, so they are never believed).
pub fn client_ip(h: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in h.get_all(X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else { return peer };
        for item in s.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer, // a garbled chain: trust none of it
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(*ip)))
        .unwrap_or(peer)
}

/// `X-Forwarded-For/-Proto/-Host`. From an untrusted peer (the gateway is the edge) client
/// values are replaced; from a trusted proxy the chain is extended and its proto/host kept.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: IpAddr,
    host: Option<HeaderValue>,
    trusted_peer: bool,
    tls: bool,
) {
    let chain = if trusted_peer {
        let prior: Vec<&str> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            ip_header_value(peer)
        } else {
            HeaderValue::from_str(&format!("{}, {peer}", prior.join(", "))).ok()
        }
    } else {
        ip_header_value(peer)
    };
    if let Some(v) = chain {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !(trusted_peer && h.contains_key(X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if trusted_peer && h.contains_key(X_FORWARDED_HOST) {
        return;
    }
    match host {
        Some(v) => {
            h.insert(X_FORWARDED_HOST, v);
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
}

/// An address as a header value; IPv4 (nearly every request) without the formatting
/// machinery, which costs more than the rest of `set_forwarded` together.
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let (buf, n) = ipv4_text(v4);
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// An IPv4 address's dotted text (its first `n` bytes) without `Display`'s machinery: the
/// forwarding headers and the access log write one per request.
pub fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            buf[n] = b'0' + d;
            n += 1;
        }
    }
    (buf, n)
}

/// The client's `X-Request-Id` when it is sane (1–128 of `[A-Za-z0-9._:-]`), else a new one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    let mut all = h.get_all(X_REQUEST_ID).iter();
    if let (Some(v), None) = (all.next(), all.next()) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    new_request_id()
}

/// A new request id: a UUIDv7 (RFC 9562) as 32 hex digits — the first 12 are the Unix time in
/// milliseconds, 74 of the other bits random. Time order keeps the request log's unique index
/// on `request_id` appending at its end, where random ids touched a random page of it per row,
/// and lets an operator sort ids by time.
pub fn new_request_id() -> HeaderValue {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    HeaderValue::from_bytes(&uuid_v7_hex(ms, fastrand::u128(..)))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// UUIDv7 from a millisecond time and random bits, as 32 lower-case hex digits.
fn uuid_v7_hex(unix_ms: u64, random: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = (u128::from(unix_ms & 0xffff_ffff_ffff) << 80)
        | (0x7 << 76) // version 7
        | (random & (0xfff << 64)) // rand_a: 12 bits
        | (0b10 << 62) // variant 10
        | (random & ((1 << 62) - 1)); // rand_b: 62 bits
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn new_request_ids_are_uuid_v7_in_time_order() {
        let id = uuid_v7_hex(0x0189_5a2b_3c4d, u128::MAX);
        assert_eq!(&id, b"01895a2b3c4d7fffbfffffffffffffff");
        let id = uuid_v7_hex(0x0189_5a2b_3c4d, 0);
        assert_eq!(&id, b"01895a2b3c4d70008000000000000000");
        // only the low 48 bits of the time fit
        assert_eq!(&uuid_v7_hex(u64::MAX, 0)[..12], b"ffffffffffff");
        // a later millisecond sorts after, whatever the random bits
        assert!(uuid_v7_hex(1_700_000_000_000, u128::MAX) < uuid_v7_hex(1_700_000_000_001, 0));
        let ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = ms();
        let a = new_request_id();
        let after = ms();
        let t = u64::from_str_radix(std::str::from_utf8(&a.as_bytes()[..12]).unwrap(), 16).unwrap();
        assert!(
            (before..=after).contains(&t),
            "{a:?}: {t} not in {before}..={after}"
        );
        assert_eq!(a.as_bytes()[12], b'7');
        assert!(matches!(a.as_bytes()[16], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn client_ip_from_trusted_proxies() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 203.0.113.7"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        assert_eq!(
            client_ip(&h, peer, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // an untrusted peer's claims are ignored
        assert_eq!(
            client_ip(&h, "8.8.8.8".parse().unwrap(), &trusted),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        // garbage in the chain: the peer
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, nonsense"),
        );
        assert_eq!(client_ip(&h, peer, &trusted), peer);
        // nothing but proxies: the peer
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.1.1.1"));
        assert_eq!(client_ip(&h, peer, &trusted), peer);
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, x-request-id"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("r"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key(CONNECTION) && !h.contains_key(TE));
        assert!(h.contains_key(X_REQUEST_ID));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        // the fast path skips messages without any: each one alone must still be seen
        for name in HOP_BY_HOP.iter().chain([&CONNECTION]) {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("a"));
            h.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} forwarded");
            assert!(h.contains_key(HOST));
        }
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a"));
        h.insert("x-other", HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.7",
            "10.0.0.1",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                ip_header_value(ip).unwrap().to_str().unwrap(),
                ip.to_string()
            );
        }
        for a in 0..=255u8 {
            let ip = IpAddr::from([a, 255 - a, a / 3, a.wrapping_mul(7)]);
            assert_eq!(
                ip_header_value(ip).unwrap().to_str().unwrap(),
                ip.to_string()
            );
        }
    }

    #[test]
    fn forwarded_proto_says_https_on_tls_unless_a_trusted_proxy_said_otherwise() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let proto = |trusted: bool, tls: bool, sent: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(p) = sent {
                h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(p));
            }
            set_forwarded(&mut h, peer, None, trusted, tls);
            h.get(X_FORWARDED_PROTO)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(proto(false, true, None), "https");
        assert_eq!(proto(false, false, Some("https")), "http");
        assert_eq!(proto(true, true, Some("http")), "http");
        assert_eq!(proto(true, false, None), "http");
    }

    #[test]
    fn upgrades_only_as_allowed() {
        let ws = vec!["websocket".to_string()];
        let offer = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(UPGRADE, HeaderValue::from_static(v));
            h
        };
        assert!(upgrade_allowed(&offer("websocket"), &ws));
        assert!(upgrade_allowed(&offer("WebSocket/13"), &ws));
        assert!(!upgrade_allowed(&offer("h2c"), &ws));
        assert!(!upgrade_allowed(&offer("websocket, h2c"), &ws));
        assert!(!upgrade_allowed(&offer(""), &ws));
        assert!(!upgrade_allowed(&offer(" , "), &ws));
        assert!(!upgrade_allowed(&offer("websocket"), &[]));
        assert!(!upgrade_allowed(&HeaderMap::new(), &ws));
    }

    #[test]
    fn h2c_upgrade_headers_never_cross() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(HTTP2_SETTINGS, HeaderValue::from_static("AAMAAABkAAQAAP__"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn identity_spoofing_removed() {
        let names = IdentityNames::new("x-cc-", &Default::default());
        let mut h = HeaderMap::new();
        h.insert("x-cc-subject", HeaderValue::from_static("admin"));
        h.insert("X-CC-Anything", HeaderValue::from_static("1"));
        names.apply(&mut h, None);
        assert!(h.is_empty());
    }
}
