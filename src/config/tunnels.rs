//! `[[tunnels]]`: private networks reached through an agent that dials out to the gateway.
//! Each names who may be its agent: tokens of one issuer, for one audience, with a `sub` listed
//! in `subjects`.

use super::raw::RawTunnel;
use super::{Issuer, VResult, Validator};

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
            self.name(&at("name"), &name)?;
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
