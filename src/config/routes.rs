//! `[[routes]]`: path prefixes to upstreams, with each route's token requirements.

use std::collections::{HashMap, HashSet};

use http::Method;

use super::raw::RawRoute;
use super::{ClientCertRule, Issuer, Upstream, VResult, Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// index into `Config::upstreams`
    pub upstream: usize,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub auth: RouteAuth,
    pub methods: Option<Vec<Method>>,
    /// indices into `Config::issuers` whose tokens this route accepts (None = all)
    pub issuers: Option<Vec<usize>>,
    /// budget units a request on this route costs (overrides each rule's `cost`)
    pub cost: Option<u64>,
    /// the client certificate identities this route admits (`None`: no certificate needed)
    pub client_cert: Option<ClientCertRule>,
}

impl Validator {
    pub(super) fn routes(
        &self,
        raws: Vec<RawRoute>,
        upstreams: &[Upstream],
        issuers: &[Issuer],
    ) -> VResult<Vec<Route>> {
        let ups: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let iss: HashMap<&str, usize> = issuers
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let mut names = HashSet::new();
        let mut prefixes: HashMap<(String, Option<Vec<Method>>), String> = HashMap::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("routes[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if r.name.starts_with('_') {
                // `_none` labels unrouted requests in metrics
                return Err(self.err(format!("{p}.name"), "names starting with '_' are reserved"));
            }
            if !names.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!("{:?} must start with \"/\"", r.path_prefix),
                ));
            }
            if r.path_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!(
                        "{:?} must be a plain path (no spaces, '?' or '#')",
                        r.path_prefix
                    ),
                ));
            }
            let up_name = r.upstream.as_deref().ok_or_else(|| {
                self.err(
                    format!("{p}.upstream"),
                    "missing: name one of [[upstreams]]",
                )
            })?;
            let upstream = *ups.get(up_name).ok_or_else(|| {
                self.err(
                    format!("{p}.upstream"),
                    format!("unknown upstream {up_name:?}"),
                )
            })?;
            let auth = match r.auth.as_deref() {
                None | Some("required") => RouteAuth::Required,
                Some("public") => RouteAuth::Public,
                Some(a) => {
                    return Err(self.err(
                        format!("{p}.auth"),
                        format!("{a:?}: expected \"required\" or \"public\""),
                    ))
                }
            };
            let methods = match &r.methods {
                None => None,
                Some(v) if v.is_empty() => {
                    return Err(self.err(
                        format!("{p}.methods"),
                        "empty: omit it to allow every method",
                    ))
                }
                Some(v) => Some(
                    v.iter()
                        .enumerate()
                        .map(|(j, m)| {
                            let up = m.to_ascii_uppercase();
                            Method::from_bytes(up.as_bytes()).map_err(|_| {
                                self.err(
                                    format!("{p}.methods[{j}]"),
                                    format!("{m:?} is not an HTTP method"),
                                )
                            })
                        })
                        .collect::<VResult<Vec<_>>>()?,
                ),
            };
            let route_issuers = match &r.issuers {
                None => None,
                Some(v) if v.is_empty() => {
                    return Err(self.err(
                        format!("{p}.issuers"),
                        "empty: omit it to accept every issuer",
                    ))
                }
                Some(v) => Some(
                    v.iter()
                        .enumerate()
                        .map(|(j, n)| {
                            iss.get(n.as_str()).copied().ok_or_else(|| {
                                self.err(
                                    format!("{p}.issuers[{j}]"),
                                    format!("unknown issuer {n:?}"),
                                )
                            })
                        })
                        .collect::<VResult<Vec<_>>>()?,
                ),
            };
            if auth == RouteAuth::Required && issuers.is_empty() {
                return Err(self.err(format!("{p}.auth"), "requires tokens but no [[issuers]] are configured (set auth = \"public\" or add an issuer)"));
            }
            let client_cert = r
                .client_cert
                .map(|c| self.client_cert_rule(&p, c))
                .transpose()?;
            let mut sorted_methods = methods.clone();
            if let Some(m) = &mut sorted_methods {
                m.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            }
            if let Some(other) =
                prefixes.insert((r.path_prefix.clone(), sorted_methods), r.name.clone())
            {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!("{:?} is already routed by {other:?}", r.path_prefix),
                ));
            }
            out.push(Route {
                name: r.name,
                path_prefix: r.path_prefix,
                strip_prefix: r.strip_prefix.unwrap_or(false),
                upstream,
                audience: r.audience.filter(|a| !a.is_empty()),
                scopes: r.scopes.unwrap_or_default(),
                auth,
                methods,
                issuers: route_issuers,
                client_cert,
                cost: r
                    .cost
                    .map(|c| {
                        self.count(&format!("{p}.cost"), Some(c), 1, 1, 1_000_000_000)
                            .map(|c| c as u64)
                    })
                    .transpose()?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    #[test]
    fn duplicate_route_names_refused() {
        let dup = format!(
            "{GOOD}\n[[routes]]\nname = \"ai\"\npath_prefix = \"/x/\"\nupstream = \"up\"\n"
        );
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.path, "routes[1].name");
    }
}
