//! A route's `upstream` split across upstreams by weight and its `canary` table: validated
//! here into a [`Canary`] (the placement itself is `routing::canary`).

use std::collections::HashMap;

use http::HeaderName;

use super::raw::{RawCanary, RawKeyParts};
use super::{KeyPart, Route, RouteAuth, Upstream, VResult, Validator};

/// A route split across upstreams by weight. Each request goes where its canary key hashes
/// (`routing::canary`): one key, one upstream, whatever the process or reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// in the config's order; weights > 0
    pub split: Vec<Share>,
    /// the key a request is placed by: budget key parts (`claim:`, `header:`, `route`,
    /// `client_ip`), `claim:sub` by default (`client_ip` on public routes)
    pub key: Vec<KeyPart>,
    /// a request header naming an upstream of the split, honoured and then stripped (None:
    /// requests cannot choose)
    pub override_header: Option<HeaderName>,
}

/// One upstream of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// index into `Config::upstreams`
    pub upstream: usize,
    pub name: String,
    pub weight: u32,
}

/// The largest weight: weights are relative, and this leaves room for splits in parts per
/// million.
const MAX_WEIGHT: i64 = 1_000_000;

impl Route {
    /// The route's upstream as `check` shows it: a name, or a split with its shares in percent
    /// and its key.
    pub fn upstream_label(&self, upstreams: &[Upstream], tunnels: &[super::Tunnel]) -> String {
        match &self.connect {
            Some(super::TcpTarget::Address { host, port }) if host.contains(':') => {
                return format!("connect [{host}]:{port}")
            }
            Some(super::TcpTarget::Address { host, port }) => {
                return format!("connect {host}:{port}")
            }
            Some(super::TcpTarget::Tunnel { tunnel, service }) => {
                return format!(
                    "connect tunnel:{}/{service}",
                    tunnels.get(*tunnel).map_or("?", |t| t.name.as_str())
                )
            }
            Some(super::TcpTarget::Upstream(u)) => {
                return format!(
                    "connect {}",
                    upstreams.get(*u).map_or("?", |u| u.name.as_str())
                )
            }
            None => {}
        }
        let Some(c) = &self.canary else {
            return upstreams[self.upstream].name.clone();
        };
        let total: u64 = c.split.iter().map(|s| u64::from(s.weight)).sum();
        let shares: Vec<String> = c
            .split
            .iter()
            .map(|s| {
                let pct = 100.0 * f64::from(s.weight) / total as f64;
                format!("{} {pct:.4}%", s.name).replace(".0000%", "%")
            })
            .collect();
        let key: Vec<String> = c.key.iter().map(key_part_label).collect();
        format!("[{}] by {}", shares.join(", "), key.join("+"))
    }
}

/// A key part as the config writes it.
fn key_part_label(k: &KeyPart) -> String {
    match k {
        KeyPart::Claim(c) => format!("claim:{c}"),
        KeyPart::Header(h) => format!("header:{h}"),
        KeyPart::Route => "route".into(),
        KeyPart::ClientIp => "client_ip".into(),
    }
}

impl Validator {
    /// `upstream` (a name or a split) and `canary`: the upstream index (of a split, the
    /// heaviest, the first listed on a tie) and the split.
    pub(super) fn route_upstream(
        &self,
        p: &str,
        v: Option<&toml::Value>,
        canary: Option<RawCanary>,
        auth: RouteAuth,
        ups: &HashMap<&str, usize>,
    ) -> VResult<(usize, Option<Canary>)> {
        let known = |key: &str, name: &str| {
            ups.get(name)
                .copied()
                .ok_or_else(|| self.err(key, format!("unknown upstream {name:?}")))
        };
        let key = format!("{p}.upstream");
        let items = match v {
            None => return Err(self.err(key, "missing: name one of [[upstreams]]")),
            Some(toml::Value::String(name)) => {
                if canary.is_some() {
                    return Err(self.err(
                        format!("{p}.canary"),
                        "applies to a split: upstream = [{ name = \"…\", weight = N }, …]",
                    ));
                }
                return Ok((known(&key, name)?, None));
            }
            Some(toml::Value::Array(items)) if !items.is_empty() => items,
            Some(_) => {
                return Err(self.err(
                    key,
                    "expected an upstream's name or a split [{ name = \"…\", weight = N }, …]",
                ))
            }
        };
        let mut split: Vec<Share> = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let sp = format!("{key}[{j}]");
            let Some(t) = item.as_table() else {
                return Err(self.err(sp, "expected { name = \"…\", weight = N }"));
            };
            if let Some(k) = t.keys().find(|k| *k != "name" && *k != "weight") {
                return Err(self.err(
                    format!("{sp}.{k}"),
                    "unknown key: a share has name and weight",
                ));
            }
            let name = match t.get("name") {
                Some(toml::Value::String(n)) => n,
                _ => {
                    return Err(self.err(format!("{sp}.name"), "missing: name one of [[upstreams]]"))
                }
            };
            let upstream = known(&format!("{sp}.name"), name)?;
            if split.iter().any(|s| s.upstream == upstream) {
                return Err(self.err(
                    format!("{sp}.name"),
                    format!("{name:?} is already in the split"),
                ));
            }
            let weight = match t.get("weight") {
                Some(toml::Value::Integer(w)) if (1..=MAX_WEIGHT).contains(w) => *w as u32,
                Some(toml::Value::Integer(w)) => {
                    return Err(self.err(
                        format!("{sp}.weight"),
                        format!("{w} is out of range: must be > 0 (and at most {MAX_WEIGHT}); remove the share to send it nothing"),
                    ))
                }
                _ => {
                    return Err(self.err(
                        format!("{sp}.weight"),
                        "missing or not a whole number: weight = N, relative to the others",
                    ))
                }
            };
            split.push(Share {
                upstream,
                name: name.clone(),
                weight,
            });
        }
        // the first of the heaviest: where a request without a key goes
        let heaviest = split
            .iter()
            .rev()
            .max_by_key(|s| s.weight)
            .map_or(split[0].upstream, |s| s.upstream);
        let (key, override_header) = match canary {
            None => (None, None),
            Some(c) => (c.key, c.override_header),
        };
        let cp = format!("{p}.canary");
        let key = match key {
            None if auth == RouteAuth::Public => vec![KeyPart::ClientIp],
            None => vec![KeyPart::Claim("sub".into())],
            Some(RawKeyParts::One(k)) => vec![self.key_part(&format!("{cp}.key"), &k)?],
            Some(RawKeyParts::Many(ks)) if ks.is_empty() => {
                return Err(self.err(
                    format!("{cp}.key"),
                    "needs at least one part (claim:<name>, header:<name>, route, client_ip)",
                ))
            }
            Some(RawKeyParts::Many(ks)) => ks
                .iter()
                .enumerate()
                .map(|(j, k)| self.key_part(&format!("{cp}.key[{j}]"), k))
                .collect::<VResult<Vec<_>>>()?,
        };
        if auth == RouteAuth::Public && key.iter().any(|k| matches!(k, KeyPart::Claim(_))) {
            return Err(self.err(
                format!("{cp}.key"),
                "a public route has no token: place requests by client_ip or header:<name>",
            ));
        }
        let override_header = override_header
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    self.err(
                        format!("{cp}.override_header"),
                        format!("{h:?} is not a header name"),
                    )
                })
            })
            .transpose()?;
        Ok((
            heaviest,
            Some(Canary {
                split,
                key,
                override_header,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    /// GOOD with a second upstream `v2`, and route `ai`'s `upstream = …` line replaced by `up`.
    fn split(up: &str) -> String {
        format!(
            "{}\n[[upstreams]]\nname = \"v2\"\nendpoints = [\"127.0.0.1:5053\"]\n",
            GOOD.replace("upstream = \"up\"", up)
        )
    }

    #[test]
    fn upstream_split() {
        use crate::config::{KeyPart, Share};
        let c = parse(&split(
            "upstream = [{ name = \"v2\", weight = 5 }, { name = \"up\", weight = 95 }]",
        ))
        .expect("valid");
        let r = &c.routes[0];
        assert_eq!(r.upstream, 0, "the heaviest: up");
        let canary = r.canary.as_ref().expect("a split");
        assert_eq!(
            canary.split,
            vec![
                Share {
                    upstream: 1,
                    name: "v2".into(),
                    weight: 5
                },
                Share {
                    upstream: 0,
                    name: "up".into(),
                    weight: 95
                },
            ]
        );
        assert_eq!(
            canary.key,
            vec![KeyPart::Claim("sub".into())],
            "the default"
        );
        assert_eq!(canary.override_header, None);
        assert_eq!(
            r.upstream_label(&c.upstreams, &c.tunnels),
            "[v2 5%, up 95%] by claim:sub"
        );
        // a tie: the first listed
        let c = parse(&split(
            "upstream = [{ name = \"v2\", weight = 1 }, { name = \"up\", weight = 1 }]\ncanary = { key = [\"claim:sub\", \"header:X-Instance\"], override_header = \"X-Canary-Upstream\" }",
        ))
        .expect("valid");
        let r = &c.routes[0];
        assert_eq!(r.upstream, 1, "the first of the heaviest: v2");
        let canary = r.canary.as_ref().expect("a split");
        assert_eq!(canary.key.len(), 2);
        assert_eq!(
            canary.override_header.as_ref().map(|h| h.as_str()),
            Some("x-canary-upstream")
        );
        // one name: no split, as before
        assert_eq!(parse(GOOD).expect("valid").routes[0].canary, None);
    }

    #[test]
    fn public_split_defaults_to_client_ip() {
        use crate::config::KeyPart;
        let c = parse(&split(
            "auth = \"public\"\nupstream = [{ name = \"v2\", weight = 5 }, { name = \"up\", weight = 95 }]",
        ))
        .expect("valid");
        let canary = c.routes[0].canary.as_ref().expect("a split");
        assert_eq!(canary.key, vec![KeyPart::ClientIp]);
        let e = parse(&split(
            "auth = \"public\"\nupstream = [{ name = \"v2\", weight = 5 }]\ncanary = { key = \"claim:sub\" }",
        ))
        .unwrap_err();
        assert_eq!(e.path, "routes[0].canary.key", "{e}");
    }

    #[test]
    fn split_problems_name_their_key() {
        let two = |a: &str, b: &str| format!("upstream = [{a}, {b}]");
        let v2 = "{ name = \"v2\", weight = 5 }";
        for (up, path) in [
            (
                two(v2, "{ name = \"up\", weight = 0 }"),
                "routes[0].upstream[1].weight",
            ),
            (
                two(v2, "{ name = \"up\", weight = -3 }"),
                "routes[0].upstream[1].weight",
            ),
            (
                two(v2, "{ name = \"up\", weight = 2.5 }"),
                "routes[0].upstream[1].weight",
            ),
            (two(v2, "{ name = \"up\" }"), "routes[0].upstream[1].weight"),
            (
                two(v2, "{ name = \"v3\", weight = 5 }"),
                "routes[0].upstream[1].name",
            ),
            (
                two(v2, "{ name = \"v2\", weight = 1 }"),
                "routes[0].upstream[1].name",
            ),
            (two(v2, "{ weight = 1 }"), "routes[0].upstream[1].name"),
            (
                two(v2, "{ name = \"up\", weight = 1, region = \"x\" }"),
                "routes[0].upstream[1].region",
            ),
            (two(v2, "\"up\""), "routes[0].upstream[1]"),
            ("upstream = []".into(), "routes[0].upstream"),
            ("upstream = 3".into(), "routes[0].upstream"),
            ("upstream = \"nope\"".into(), "routes[0].upstream"),
            (
                "upstream = \"up\"\ncanary = { key = \"claim:sub\" }".into(),
                "routes[0].canary",
            ),
            (
                format!("upstream = [{v2}]\ncanary = {{ key = \"claims:sub\" }}"),
                "routes[0].canary.key",
            ),
            (
                format!("upstream = [{v2}]\ncanary = {{ key = [\"claim:sub\", \"ip\"] }}"),
                "routes[0].canary.key[1]",
            ),
            (
                format!("upstream = [{v2}]\ncanary = {{ key = [] }}"),
                "routes[0].canary.key",
            ),
            (
                format!("upstream = [{v2}]\ncanary = {{ override_header = \"X Canary\" }}"),
                "routes[0].canary.override_header",
            ),
        ] {
            let e = parse(&split(&up)).unwrap_err();
            assert_eq!(e.path, path, "{up}: {e}");
        }
        let e = parse(&split(
            "upstream = [{ name = \"v2\", weight = 5 }]\ncanary = { keys = \"x\" }",
        ))
        .unwrap_err();
        assert!(e.path.contains("keys"), "unknown canary key: {e}");
    }
}
