//! `[[upstreams]]`: the backends routes forward to, their endpoints, timeouts and pools.

use std::collections::HashSet;
use std::time::Duration;

use super::raw::RawUpstream;
use super::{VResult, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// `host:port` authorities
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

impl Validator {
    pub(super) fn upstreams(&self, raws: Vec<RawUpstream>) -> VResult<Vec<Upstream>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("upstreams[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if !seen.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate upstream name {:?}", r.name),
                ));
            }
            if r.endpoints.is_empty() {
                return Err(self.err(format!("{p}.endpoints"), "needs at least one \"host:port\""));
            }
            let mut endpoints = Vec::new();
            for (j, e) in r.endpoints.iter().enumerate() {
                endpoints.push(self.endpoint(&format!("{p}.endpoints[{j}]"), e)?);
            }
            out.push(Upstream {
                name: r.name,
                endpoints,
                connect_timeout: self.positive_duration(
                    &format!("{p}.connect_timeout"),
                    &r.connect_timeout,
                    Duration::from_secs(2),
                )?,
                read_timeout: self.positive_duration(
                    &format!("{p}.read_timeout"),
                    &r.read_timeout,
                    Duration::from_secs(60),
                )?,
                pool_idle_timeout: self.positive_duration(
                    &format!("{p}.pool_idle_timeout"),
                    &r.pool_idle_timeout,
                    Duration::from_secs(60),
                )?,
                pool_max_idle: self.count(
                    &format!("{p}.pool_max_idle"),
                    r.pool_max_idle,
                    1024,
                    0,
                    1 << 20,
                )?,
            });
        }
        Ok(out)
    }

    fn endpoint(&self, path: &str, e: &str) -> VResult<String> {
        let e = e.trim();
        if e.contains("://") {
            return Err(self.err(
                path,
                format!("{e:?}: give \"host:port\" without a scheme (plain HTTP/1.1 upstreams)"),
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

    #[test]
    fn endpoints_are_host_port_without_scheme() {
        let u = &parse(GOOD).expect("valid").upstreams[0];
        assert_eq!(u.endpoints, vec!["127.0.0.1:5052".to_string()]);
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        let cases = [
            ("[\"http://127.0.0.1:5052\"]", "without a scheme"),
            ("[\"127.0.0.1\"]", "has no port"),
            ("[]", "at least one"),
        ];
        for (endpoints, problem) in cases {
            let text = GOOD.replace("[\"127.0.0.1:5052\"]", endpoints);
            let e = parse(&text).unwrap_err();
            assert!(
                e.path.starts_with("upstreams[0].endpoints"),
                "{endpoints}: {e}"
            );
            assert!(e.problem.contains(problem), "{endpoints}: {e}");
        }
    }

    #[test]
    fn duplicate_names_and_zero_timeouts_are_refused() {
        let dup = format!("{GOOD}\n[[upstreams]]\nname = \"up\"\nendpoints = [\"127.0.0.1:1\"]\n");
        assert_eq!(parse(&dup).unwrap_err().path, "upstreams[1].name");
        let zero = GOOD.replace("name = \"up\"", "name = \"up\"\nread_timeout = \"0s\"");
        assert_eq!(parse(&zero).unwrap_err().path, "upstreams[0].read_timeout");
    }
}
