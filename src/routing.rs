//! Path routing: the longest matching `path_prefix` wins; `methods` narrows a route. Then, at
//! step 4, the route's upstream: its own, or of a split the one the request's canary key places
//! it on (`canary.rs`).

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, Method};

use crate::auth::Verified;
use crate::config::Route;

mod canary;

pub use canary::Cause;

/// The route a request selected, and its position in the config's routes (per-route metric and
/// budget tables are indexed by it).
#[derive(Clone, Copy, Debug)]
pub struct RouteRef<'a> {
    pub index: usize,
    pub route: &'a Route,
}

pub struct Router {
    /// indices into the config's routes, longest prefix first
    order: Vec<usize>,
    routes: Vec<Route>,
    /// per route (same index): its split's placement, computed once (None: one upstream)
    placements: Vec<Option<canary::Placement>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NoRoute,
    /// a route matches the path but not the method; the allowed methods
    MethodNotAllowed(String),
    /// dot segments (`/../`, `%2e%2e`) could route past a prefix: refused, never normalised
    InvalidPath,
}

impl Router {
    pub fn new(routes: &[Route]) -> Self {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        // longest prefix first; routes with a method filter before catch-alls of the same prefix
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&routes[a], &routes[b]);
            rb.path_prefix
                .len()
                .cmp(&ra.path_prefix.len())
                .then(rb.methods.is_some().cmp(&ra.methods.is_some()))
        });
        Router {
            order,
            routes: routes.to_vec(),
            placements: routes
                .iter()
                .map(|r| {
                    let c = r.canary.as_ref()?;
                    Some(canary::Placement::new(&r.name, r.upstream, c))
                })
                .collect(),
        }
    }

    /// Step 4: the upstream (index into the config's upstreams) for a request on `route`: the
    /// route's own or, on a split route, the one its canary key places it on (see `canary`).
    /// A configured override header is removed from `headers` here: it never goes upstream.
    pub fn upstream(
        &self,
        route: RouteRef<'_>,
        headers: &mut HeaderMap,
        id: Option<&Verified>,
        client: IpAddr,
    ) -> usize {
        match self.placements.get(route.index) {
            Some(Some(p)) => p.choose(&route.route.name, headers, id, client),
            _ => route.route.upstream,
        }
    }

    /// The route for a request.
    pub fn select(&self, method: &Method, path: &str) -> Result<RouteRef<'_>, RouteError> {
        if !is_safe_path(path) {
            return Err(RouteError::InvalidPath);
        }
        let mut allowed: Vec<&str> = Vec::new();
        let mut matched_len = None;
        for &i in &self.order {
            let r = &self.routes[i];
            if !path.starts_with(r.path_prefix.as_str()) {
                continue;
            }
            // a longer prefix that refused the method does not fall back to a shorter one
            if matched_len.is_some_and(|l| l != r.path_prefix.len()) {
                break;
            }
            match &r.methods {
                Some(ms) if !ms.contains(method) => {
                    matched_len = Some(r.path_prefix.len());
                    allowed.extend(ms.iter().map(|m| m.as_str()));
                }
                _ => return Ok(RouteRef { index: i, route: r }),
            }
        }
        if allowed.is_empty() {
            Err(RouteError::NoRoute)
        } else {
            allowed.sort_unstable();
            allowed.dedup();
            Err(RouteError::MethodNotAllowed(allowed.join(", ")))
        }
    }
}

/// The upstream path: the prefix removed when `strip_prefix`, always starting with `/`.
/// A slice of the client's path where one will do (a prefix ending in `/` keeps its slash).
pub fn upstream_path<'a>(route: &Route, path_and_query: &'a str) -> Cow<'a, str> {
    if !route.strip_prefix {
        return path_and_query.into();
    }
    let cut = route.path_prefix.len().min(path_and_query.len());
    let rest = &path_and_query[cut..];
    if rest.starts_with('/') {
        rest.into()
    } else if cut > 0 && path_and_query.as_bytes()[cut - 1] == b'/' {
        path_and_query[cut - 1..].into()
    } else {
        format!("/{rest}").into()
    }
}

/// Refuses `.`/`..` segments (also between backslashes, and percent-encoded) that a backend
/// might resolve into a different path than the one we routed.
pub fn is_safe_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    let b = path.as_bytes();
    // an encoded '.' is refused outright (it only serves to hide a dot segment); encoded
    // slashes stay allowed: GitLab-style APIs use them in ids (group%2Fproject)
    for i in 0..b.len().saturating_sub(2) {
        if b[i] == b'%' {
            let h = [b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()];
            if &h == b"2e" {
                return false;
            }
        }
    }
    !path.split(['/', '\\']).any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteAuth;

    fn route(name: &str, prefix: &str, methods: Option<Vec<Method>>) -> Route {
        Route {
            name: name.into(),
            path_prefix: prefix.into(),
            strip_prefix: true,
            upstream: 0,
            canary: None,
            audience: None,
            scopes: vec![],
            auth: RouteAuth::Required,
            methods,
            issuers: None,
            client_cert: None,
            cost: None,
            streams: Default::default(),
            retries: Default::default(),
            kind: Default::default(),
            connect: None,
            max_request_body: None,
        }
    }

    /// The selected route's index and name (they must agree with the config's order).
    fn select(r: &Router, method: Method, path: &str) -> Result<(usize, String), RouteError> {
        r.select(&method, path)
            .map(|sel| (sel.index, sel.route.name.clone()))
    }

    fn ok(index: usize, name: &str) -> Result<(usize, String), RouteError> {
        Ok((index, name.to_string()))
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(&[
            route("a", "/ai/", None),
            route("b", "/ai/v2/chat/", None),
            route("c", "/", None),
        ]);
        assert_eq!(select(&r, Method::GET, "/ai/v2/chat/x"), ok(1, "b"));
        assert_eq!(select(&r, Method::GET, "/ai/v1"), ok(0, "a"));
        assert_eq!(select(&r, Method::GET, "/other"), ok(2, "c"));
    }

    #[test]
    fn methods_filter() {
        let r = Router::new(&[
            route("post", "/ai/", Some(vec![Method::POST])),
            route("root", "/", None),
        ]);
        assert_eq!(select(&r, Method::POST, "/ai/x"), ok(0, "post"));
        assert_eq!(
            select(&r, Method::GET, "/ai/x"),
            Err(RouteError::MethodNotAllowed("POST".into()))
        );
        let r = Router::new(&[
            route("post", "/ai/", Some(vec![Method::POST])),
            route("get", "/ai/", Some(vec![Method::GET])),
        ]);
        assert_eq!(select(&r, Method::GET, "/ai/x"), ok(1, "get"));
        assert_eq!(
            select(&r, Method::PUT, "/ai/x"),
            Err(RouteError::MethodNotAllowed("GET, POST".into()))
        );
    }

    #[test]
    fn no_route() {
        let r = Router::new(&[route("a", "/ai/", None)]);
        assert_eq!(select(&r, Method::GET, "/ai"), Err(RouteError::NoRoute));
        assert_eq!(select(&r, Method::GET, "*"), Err(RouteError::InvalidPath));
    }

    #[test]
    fn strip() {
        let r = route("a", "/ai/", None);
        assert_eq!(
            upstream_path(&r, "/ai/v2/completions?x=1"),
            "/v2/completions?x=1"
        );
        assert_eq!(upstream_path(&r, "/ai/"), "/");
        assert_eq!(upstream_path(&r, "/ai"), "/");
        // the client's own bytes where they already start with '/'
        assert!(matches!(upstream_path(&r, "/ai/v2"), Cow::Borrowed("/v2")));
        let mut r2 = route("b", "/api", None);
        assert_eq!(upstream_path(&r2, "/api/x"), "/x");
        assert_eq!(upstream_path(&r2, "/api"), "/");
        r2.strip_prefix = false;
        assert_eq!(upstream_path(&r2, "/api/x"), "/api/x");
    }

    #[test]
    fn unsafe_paths() {
        for p in [
            "/ai/../admin",
            "/ai/./x",
            "/ai/..",
            "/ai/%2e%2e/x",
            "/ai/%2E./x",
            "/ai\\..\\x",
            "/ai/x/..\\",
        ] {
            assert!(!is_safe_path(p), "{p}");
        }
        for p in [
            "/",
            "/ai/v2/completions",
            "/ai/a..b",
            "/ai/.well-known",
            "/ai/%20x",
            "/ai/x%",
            "/ai/group%2Fproject",
        ] {
            assert!(is_safe_path(p), "{p}");
        }
    }
}
