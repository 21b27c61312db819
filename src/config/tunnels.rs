//! `[[tunnels]]`: private networks reached through an agent that dials out to the gateway.
//! Each names who may be its agent: tokens of one issuer, for one audience, with a `sub` listed
//! in `subjects`.

use super::raw::RawTunnel;
use super::{Issuer, Upstream, VResult, Validator};

/// The reserved domain an upstream endpoint `tunnel:<tunnel>/<service>` stands for inside the
/// engine: `<service>.<tunnel>.tunnel.invalid:1` (`.invalid` never resolves, RFC 2606), so the
/// pools, the balancer and the logs carry it like any `host:port`, and the connector knows it.
const TUNNEL_DOMAIN: &str = ".tunnel.invalid";

/// The authority an upstream endpoint `tunnel:<tunnel>/<service>` stands for.
pub fn tunnel_authority(tunnel: &str, service: &str) -> String {
    format!("{service}.{tunnel}{TUNNEL_DOMAIN}:1")
}

/// `(tunnel, service)` of an endpoint host made by [`tunnel_authority`].
pub fn tunnel_of_host(host: &str) -> Option<(&str, &str)> {
    let rest = host.strip_suffix(TUNNEL_DOMAIN)?;
    let (service, tunnel) = rest.split_once('.')?;
    (!service.is_empty() && !tunnel.is_empty() && !tunnel.contains('.'))
        .then_some((tunnel, service))
}

/// Tunnel and service names: a config name without dots (they are labels of the endpoint host
/// above).
fn tunnel_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tunnel {
    pub name: String,
    /// index into `Config::issuers`: the agents' tokens must come from it
    pub issuer: usize,
    pub audience: String,
    /// the agents' `sub`s (at least one)
    pub subjects: Vec<String>,
}

impl Validator {
    pub(super) fn tunnels(&self, raw: Vec<RawTunnel>, issuers: &[Issuer]) -> VResult<Vec<Tunnel>> {
        let mut out: Vec<Tunnel> = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            let at = |k: &str| format!("tunnels[{i}].{k}");
            let name = t.name.ok_or_else(|| self.err(at("name"), "is required"))?;
            if !tunnel_name_ok(&name) {
                return Err(self.err(
                    at("name"),
                    format!("{name:?}: tunnel names are 1-63 of [A-Za-z0-9_-]"),
                ));
            }
            if out.iter().any(|o| o.name == name) {
                return Err(self.err(at("name"), format!("{name:?} is defined twice")));
            }
            let issuer_name = t.issuer.ok_or_else(|| {
                self.err(
                    at("issuer"),
                    "is required: the [[issuers]] entry that signs agent tokens",
                )
            })?;
            let issuer = issuers
                .iter()
                .position(|x| x.name == issuer_name)
                .ok_or_else(|| self.err(at("issuer"), format!("unknown issuer {issuer_name:?}")))?;
            let audience = t.audience.filter(|a| !a.is_empty()).ok_or_else(|| {
                self.err(at("audience"), "is required (e.g. \"cc-gateway-tunnel\")")
            })?;
            let subjects = t.subjects.unwrap_or_default();
            if subjects.is_empty() || subjects.iter().any(String::is_empty) {
                return Err(self.err(
                    at("subjects"),
                    "needs the agents' token subjects (`sub`), at least one, none empty",
                ));
            }
            out.push(Tunnel {
                name,
                issuer,
                audience,
                subjects,
            });
        }
        Ok(out)
    }

    /// A service name of a `tunnel:<tunnel>/<service>` target.
    pub(super) fn tunnel_service(&self, key: &str, service: &str) -> VResult<()> {
        if tunnel_name_ok(service) {
            Ok(())
        } else {
            Err(self.err(
                key,
                format!("{service:?}: service names are 1-63 of [A-Za-z0-9_-]"),
            ))
        }
    }

    /// Upstream endpoints behind a tunnel (`tunnel:<tunnel>/<service>`, made an authority by
    /// `endpoint`) must name a configured tunnel, and their upstream cannot add TLS (the
    /// agent's connection is the gateway's TLS; the hop behind it is the agent's network).
    pub(super) fn tunnel_endpoints(
        &self,
        upstreams: &[Upstream],
        tunnels: &[Tunnel],
    ) -> VResult<()> {
        for (i, u) in upstreams.iter().enumerate() {
            for (j, e) in u.endpoints.iter().enumerate() {
                let host = e.addr.rsplit_once(':').map_or(e.addr.as_str(), |(h, _)| h);
                let Some((tunnel, service)) = tunnel_of_host(host) else {
                    continue;
                };
                let key = format!("upstreams[{i}].endpoints[{j}]");
                if !tunnels.iter().any(|t| t.name == tunnel) {
                    return Err(self.err(
                        key,
                        format!("\"tunnel:{tunnel}/{service}\": no [[tunnels]] entry is named {tunnel:?}"),
                    ));
                }
                if u.tls.is_some() {
                    return Err(self.err(
                        format!("upstreams[{i}].tls"),
                        "an upstream behind a tunnel takes no tls: the agent's connection to the gateway is the encrypted hop",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    const TUNNEL: &str = "\n[[tunnels]]\nname = \"onprem\"\nissuer = \"a\"\naudience = \"cc-gateway-tunnel\"\nsubjects = [\"agent-1\"]\n";

    #[test]
    fn a_tunnel_names_its_agents() {
        let c = parse(&format!("{GOOD}{TUNNEL}")).expect("valid");
        assert_eq!(c.tunnels[0].name, "onprem");
        assert_eq!(c.tunnels[0].issuer, 0);
        assert_eq!(c.tunnels[0].subjects, vec!["agent-1".to_string()]);
        for (from, to, path) in [
            ("issuer = \"a\"", "issuer = \"b\"", "tunnels[0].issuer"),
            (
                "subjects = [\"agent-1\"]",
                "subjects = []",
                "tunnels[0].subjects",
            ),
            (
                "audience = \"cc-gateway-tunnel\"",
                "audience = \"\"",
                "tunnels[0].audience",
            ),
            ("name = \"onprem\"", "name = \"on prem\"", "tunnels[0].name"),
        ] {
            let e = parse(&format!("{GOOD}{}", TUNNEL.replace(from, to))).unwrap_err();
            assert_eq!(e.path, path, "{to}: {e}");
        }
        let twice = format!("{GOOD}{TUNNEL}{TUNNEL}");
        assert_eq!(parse(&twice).unwrap_err().path, "tunnels[1].name");
    }

    #[test]
    fn upstream_endpoints_behind_a_tunnel() {
        let up = |endpoints: &str, more: &str| {
            GOOD.replace("[\"127.0.0.1:5052\"]", endpoints)
                .replace("name = \"up\"", &format!("name = \"up\"\n{more}"))
                + TUNNEL
        };
        let c = parse(&up("[\"tunnel:onprem/ai\"]", "")).expect("valid");
        assert_eq!(
            c.upstreams[0].endpoints[0].addr,
            "ai.onprem.tunnel.invalid:1"
        );
        assert_eq!(
            super::tunnel_of_host("ai.onprem.tunnel.invalid"),
            Some(("onprem", "ai"))
        );
        assert_eq!(super::tunnel_of_host("ai.example.org"), None);
        for (endpoints, more, path) in [
            ("[\"tunnel:nowhere/ai\"]", "", "upstreams[0].endpoints[0]"),
            ("[\"tunnel:onprem/a.i\"]", "", "upstreams[0].endpoints[0]"),
            ("[\"tunnel:onprem/ai\"]", "tls = {}", "upstreams[0].tls"),
        ] {
            let e = parse(&up(endpoints, more)).unwrap_err();
            assert_eq!(e.path, path, "{endpoints} {more}: {e}");
        }
    }

    #[test]
    fn tunnel_targets_name_a_tunnel_and_a_service() {
        let tcp = |target: &str| {
            format!("{GOOD}{TUNNEL}\n[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:5433\"]\ntarget = \"{target}\"\n")
        };
        let c = parse(&tcp("tunnel:onprem/pg")).expect("valid");
        assert_eq!(
            c.tcp_routes[0].target,
            super::super::TcpTarget::Tunnel {
                tunnel: 0,
                service: "pg".into()
            }
        );
        for bad in [
            "tunnel:elsewhere/pg",
            "tunnel:onprem",
            "tunnel:onprem/",
            "tunnel:onprem/a b",
        ] {
            let e = parse(&tcp(bad)).unwrap_err();
            assert_eq!(e.path, "tcp_routes[0].target", "{bad}: {e}");
        }
    }
}
