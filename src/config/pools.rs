//! An upstream's pool settings: endpoints with weight and region, `balance`, `fallback`,
//! `outlier` (passive ejection), `health_check` (active checks). Part of `[[upstreams]]`
//! (`upstreams.rs`), in a file of its own to keep each under the size limit.

use std::time::Duration;

use super::raw::{RawEndpoint, RawHealthCheck, RawOutlier};
use super::{VResult, Validator};

/// One configured endpoint: an address (a hostname stands for every address it resolves to),
/// its share of the traffic, and its region (None: the gateway's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// a `host:port` authority
    pub addr: String,
    pub weight: u32,
    pub region: Option<String>,
}

/// `balance`: how a worker chooses among the usable endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// smooth weighted round robin (nginx's): weights respected at every scale, no bursts
    RoundRobin,
    /// power of two choices over latency (peak EWMA) times in-flight requests, per weight
    PeakEwma,
}

/// `outlier = { … }`: passive ejection from live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// failures in a row (connect failures, resets, 5xx) that eject; 0 turns ejection off
    pub consecutive_failures: u32,
    pub ejection: Duration,
    /// the ejection doubles, up to this, while the endpoint keeps failing
    pub max_ejection: Duration,
}

/// `health_check = { … }`: active checks, once per process per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expect_status: Vec<u16>,
}

impl Validator {
    pub(super) fn balance(&self, p: &str, v: Option<&str>) -> VResult<Balance> {
        match v.unwrap_or("round_robin") {
            "round_robin" => Ok(Balance::RoundRobin),
            "peak_ewma" => Ok(Balance::PeakEwma),
            other => Err(self.err(
                format!("{p}.balance"),
                format!("{other:?}: expected \"round_robin\" or \"peak_ewma\""),
            )),
        }
    }

    /// `fallback` names known upstreams, never the upstream itself, and no chain of fallbacks
    /// comes back to where it started.
    /// `ups`: each upstream's name and fallback list, in config order.
    pub(super) fn fallbacks(&self, ups: &[(&str, &[String])]) -> VResult<()> {
        let index = |n: &str| ups.iter().position(|u| u.0 == n);
        for (i, u) in ups.iter().enumerate() {
            for (j, f) in u.1.iter().enumerate() {
                let path = format!("upstreams[{i}].fallback[{j}]");
                match index(f) {
                    None => return Err(self.err(path, format!("unknown upstream {f:?}"))),
                    Some(k) if k == i => {
                        return Err(self.err(path, "an upstream cannot fall back to itself"))
                    }
                    Some(_) => {}
                }
            }
        }
        // depth-first from each upstream: a name met again on the current chain is a cycle
        fn visit(
            ups: &[(&str, &[String])],
            at: usize,
            chain: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            if chain.contains(&at) {
                chain.push(at);
                return Some(chain.clone());
            }
            chain.push(at);
            for f in ups[at].1 {
                if let Some(k) = ups.iter().position(|u| u.0 == f) {
                    if let Some(c) = visit(ups, k, chain) {
                        return Some(c);
                    }
                }
            }
            chain.pop();
            None
        }
        for i in 0..ups.len() {
            if let Some(c) = visit(ups, i, &mut Vec::new()) {
                let names: Vec<&str> = c.iter().map(|&k| ups[k].0).collect();
                return Err(self.err(
                    format!("upstreams[{i}].fallback"),
                    format!("fallback cycle: {}", names.join(" -> ")),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn pool_endpoint(&self, path: &str, e: &RawEndpoint) -> VResult<Endpoint> {
        let (addr, weight, region) = match e {
            RawEndpoint::Addr(a) => (a, None, None),
            RawEndpoint::Table(t) => (&t.addr, t.weight, t.region.as_ref()),
        };
        let addr_path = match e {
            RawEndpoint::Addr(_) => path.to_string(),
            RawEndpoint::Table(_) => format!("{path}.addr"),
        };
        if let Some(g) = region {
            self.name(&format!("{path}.region"), g)?;
        }
        Ok(Endpoint {
            addr: self.endpoint(&addr_path, addr)?,
            weight: self.count(&format!("{path}.weight"), weight, 1, 1, 10_000)? as u32,
            region: region.cloned(),
        })
    }

    pub(super) fn outlier(&self, p: &str, r: RawOutlier) -> VResult<Outlier> {
        let ejection = self.positive_duration(
            &format!("{p}.ejection"),
            &r.ejection,
            Duration::from_secs(30),
        )?;
        let max_ejection = self.positive_duration(
            &format!("{p}.max_ejection"),
            &r.max_ejection,
            Duration::from_secs(300).max(ejection),
        )?;
        if max_ejection < ejection {
            return Err(self.err(
                format!("{p}.max_ejection"),
                "must not be less than ejection",
            ));
        }
        Ok(Outlier {
            consecutive_failures: self.count(
                &format!("{p}.consecutive_failures"),
                r.consecutive_failures,
                5,
                0,
                1_000_000,
            )? as u32,
            ejection,
            max_ejection,
        })
    }

    pub(super) fn health_check(&self, p: &str, r: RawHealthCheck) -> VResult<HealthCheck> {
        let path = r.path.unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
            return Err(self.err(
                format!("{p}.path"),
                format!("{path:?}: expected a path like \"/healthz\""),
            ));
        }
        let interval = self.positive_duration(
            &format!("{p}.interval"),
            &r.interval,
            Duration::from_secs(5),
        )?;
        let timeout =
            self.positive_duration(&format!("{p}.timeout"), &r.timeout, Duration::from_secs(1))?;
        let mut expect_status = Vec::new();
        for (j, s) in r
            .expect_status
            .unwrap_or_else(|| vec![200])
            .iter()
            .enumerate()
        {
            match u16::try_from(*s) {
                Ok(s) if (100..=599).contains(&s) => expect_status.push(s),
                _ => {
                    return Err(self.err(
                        format!("{p}.expect_status[{j}]"),
                        format!("{s} is not an HTTP status"),
                    ))
                }
            }
        }
        if expect_status.is_empty() {
            return Err(self.err(format!("{p}.expect_status"), "needs at least one status"));
        }
        let threshold = |key: &str, v: Option<i64>, default: usize| {
            self.count(&format!("{p}.{key}"), v, default, 1, 1000)
                .map(|n| n as u32)
        };
        Ok(HealthCheck {
            path,
            interval,
            timeout,
            healthy_threshold: threshold("healthy_threshold", r.healthy_threshold, 2)?,
            unhealthy_threshold: threshold("unhealthy_threshold", r.unhealthy_threshold, 3)?,
            expect_status,
        })
    }

    /// `host:port`, no scheme, port required.
    pub(super) fn endpoint(&self, path: &str, e: &str) -> VResult<String> {
        let e = e.trim();
        if let Some(rest) = e.strip_prefix("tunnel:") {
            // the tunnel itself is checked once [[tunnels]] are read (`tunnel_endpoints`)
            let (tunnel, service) = rest.split_once('/').ok_or_else(|| {
                self.err(
                    path,
                    format!("{e:?}: expected \"tunnel:<tunnel>/<service>\""),
                )
            })?;
            self.tunnel_service(path, service)?;
            self.tunnel_service(path, tunnel)?;
            return Ok(super::tunnels::tunnel_authority(tunnel, service));
        }
        if e.contains("://") {
            return Err(self.err(
                path,
                format!("{e:?}: give \"host:port\" without a scheme (TLS is `tls = {{}}`)"),
            ));
        }
        let auth: http::uri::Authority = e
            .parse()
            .map_err(|_| self.err(path, format!("{e:?} is not \"host:port\"")))?;
        if auth.port_u16().is_none() {
            return Err(self.err(path, format!("{e:?} has no port")));
        }
        Ok(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    fn with(keys: &str) -> String {
        GOOD.replace("name = \"up\"", &format!("name = \"up\"\n{keys}"))
    }

    #[test]
    fn endpoint_tables_balance_health_and_outlier() {
        let text = GOOD.replace(
            "[\"127.0.0.1:5052\"]",
            "[\"127.0.0.1:1\", { addr = \"127.0.0.2:1\", weight = 3, region = \"us-east1\" }]\n\
             balance = \"peak_ewma\"\n\
             outlier = { consecutive_failures = 2, ejection = \"100ms\", max_ejection = \"1s\" }\n\
             health_check = { path = \"/hz\", interval = \"1s\", timeout = \"200ms\", healthy_threshold = 1, unhealthy_threshold = 4, expect_status = [200, 204] }",
        );
        let u = parse(&text).expect("valid").upstreams[0].clone();
        assert_eq!(u.endpoints[1].weight, 3);
        assert_eq!(u.endpoints[1].region.as_deref(), Some("us-east1"));
        assert_eq!(u.endpoints[0].region, None);
        assert_eq!(u.balance, Balance::PeakEwma);
        assert_eq!(u.outlier.ejection, Duration::from_millis(100));
        let h = u.health_check.expect("health_check");
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (1, 4));
        assert_eq!(h.expect_status, vec![200, 204]);
    }

    #[test]
    fn pool_mistakes_name_their_key() {
        let cases = [
            ("endpoints = [{ addr = \"127.0.0.1:1\", weight = 0 }]", "upstreams[1].endpoints[0].weight"),
            ("endpoints = [{ addr = \"127.0.0.1\" }]", "upstreams[1].endpoints[0].addr"),
            ("endpoints = [{ addr = \"127.0.0.1:1\", region = \"a b\" }]", "upstreams[1].endpoints[0].region"),
            ("endpoints = [\"127.0.0.1:1\"]\nbalance = \"random\"", "upstreams[1].balance"),
            ("endpoints = [\"127.0.0.1:1\"]\nfallback = [\"nope\"]", "upstreams[1].fallback[0]"),
            ("endpoints = [\"127.0.0.1:1\"]\nfallback = [\"b\"]", "upstreams[1].fallback[0]"),
            ("endpoints = [\"127.0.0.1:1\"]\noutlier = { ejection = \"1m\", max_ejection = \"1s\" }", "upstreams[1].outlier.max_ejection"),
            ("endpoints = [\"127.0.0.1:1\"]\nhealth_check = { path = \"hz\" }", "upstreams[1].health_check.path"),
            ("endpoints = [\"127.0.0.1:1\"]\nhealth_check = { expect_status = [99] }", "upstreams[1].health_check.expect_status[0]"),
            ("endpoints = [\"127.0.0.1:1\"]\nhealth_check = { unhealthy_threshold = 0 }", "upstreams[1].health_check.unhealthy_threshold"),
        ];
        for (keys, path) in cases {
            let text = format!("{GOOD}\n[[upstreams]]\nname = \"b\"\n{keys}\n");
            let e = parse(&text).unwrap_err();
            assert!(e.path.starts_with(path), "{keys}: {e}");
        }
    }

    #[test]
    fn fallback_cycles_are_refused_and_chains_accepted() {
        let chain = format!(
            "{}\n[[upstreams]]\nname = \"b\"\nendpoints = [\"127.0.0.1:1\"]\nfallback = [\"c\"]\n\
             [[upstreams]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n",
            with("fallback = [\"b\", \"c\"]")
        );
        assert_eq!(
            parse(&chain).expect("valid").upstreams[0].fallback,
            ["b", "c"]
        );
        let cycle = chain.replace(
            "name = \"c\"\nendpoints = [\"127.0.0.1:2\"]",
            "name = \"c\"\nendpoints = [\"127.0.0.1:2\"]\nfallback = [\"up\"]",
        );
        let e = parse(&cycle).unwrap_err();
        assert_eq!(e.path, "upstreams[0].fallback", "{e}");
        assert!(e.problem.contains("up -> b -> c -> up"), "{e}");
    }

    #[test]
    fn server_region_is_a_name() {
        assert_eq!(parse(GOOD).expect("valid").server.region, None);
        let text = GOOD.replacen("[server]\n", "[server]\nregion = \"europe-west1\"\n", 1);
        let c = parse(&text).expect("valid");
        assert_eq!(c.server.region.as_deref(), Some("europe-west1"));
        let bad = GOOD.replacen("[server]\n", "[server]\nregion = \"\"\n", 1);
        assert_eq!(parse(&bad).unwrap_err().path, "server.region");
    }
}
