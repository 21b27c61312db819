//! `[budgets]`: the counter store and the rules — rate limits and quotas per key, with tiers
//! chosen from a claim and per-key overrides.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::raw::{RawBudgets, RawRule, RawTiers};
use super::secret::{Literal, Secret};
use super::{Limit, Route, RouteKind, VResult, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    pub store: BudgetStore,
    pub on_store_error: OnStoreError,
    pub store_timeout: Duration,
    pub flush_interval: Duration,
    pub response_headers: bool,
    /// memory and SQLite stores: most keys held at once (idle ones go first)
    pub max_keys: usize,
    pub rules: Vec<BudgetRule>,
}

#[derive(Clone, PartialEq)]
pub enum BudgetStore {
    Memory,
    /// counters in memory, persisted to this SQLite file every `flush_interval`
    Sqlite(PathBuf),
    /// counters in Redis, shared by every node pointing at it (the URL as read through
    /// `env:`/`file:` when written so; it may hold a password: shown only through `Display`)
    Redis(String),
}

/// Redacted as `Display` is: a `{:?}` of the config must not print a Redis password either.
impl std::fmt::Debug for BudgetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetStore::Memory => f.write_str("Memory"),
            BudgetStore::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            BudgetStore::Redis(_) => write!(f, "Redis({self})"),
        }
    }
}

/// The store as config writes it and as it may be shown anywhere (`check`, admin API, logs):
/// a Redis password is `***`.
impl std::fmt::Display for BudgetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetStore::Memory => f.write_str("memory"),
            BudgetStore::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            BudgetStore::Redis(u) => f.write_str(&crate::budget::redact::redact_url(u)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    Allow,
    Deny,
}

impl OnStoreError {
    /// The config word (`on_store_error = "allow"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BudgetUnit {
    /// each request costs the rule's (or route's) `cost`, charged when it is admitted
    #[default]
    Requests,
    /// AI tokens (input + output) of the response, charged after it from its usage; a request
    /// is admitted while the window's tokens are under the limit
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// GCRA: a sustained rate with a burst
    Rate,
    /// fixed windows aligned to UTC (multiples of the period since the Unix epoch)
    Quota,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPart {
    Claim(String),
    Header(HeaderName),
    Route,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub low: f64,
    pub high: f64,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    pub claim: String,
    pub ranges: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRule {
    pub name: String,
    /// indices into `Config::routes` (None = every route)
    pub routes: Option<Vec<usize>>,
    pub key: Vec<KeyPart>,
    pub kind: LimitKind,
    /// the rule's own limit (None: tiers only)
    pub limit: Option<Limit>,
    /// GCRA: how many requests may arrive at once
    pub burst: u64,
    pub cost: u64,
    pub tiers: Option<Tiers>,
    pub overrides: HashMap<String, Limit>,
    /// `unit = "tokens"`: a token quota (only on `kind = "ai"` routes)
    pub unit: BudgetUnit,
}

impl Validator {
    pub(super) fn budgets(&self, r: RawBudgets, routes: &[Route]) -> VResult<Budgets> {
        let store = match r.store.as_deref() {
            None => BudgetStore::Memory,
            // a Redis URL may carry a password: `env:`/`file:` keep it out of the config
            Some(s) if s.starts_with("env:") || s.starts_with("file:") => {
                let url = self.secret("budgets.store", s, Literal::Allowed)?;
                self.store(url.expose(), Some(&url))?
            }
            Some(s) => self.store(s, None)?,
        };
        let on_store_error = match r.on_store_error.as_deref().unwrap_or("allow") {
            "allow" => OnStoreError::Allow,
            "deny" => OnStoreError::Deny,
            s => {
                return Err(self.err(
                    "budgets.on_store_error",
                    format!("{s:?}: expected \"allow\" or \"deny\""),
                ))
            }
        };
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, rr) in r.rules.into_iter().enumerate() {
            let p = format!("budgets.rules[{i}]");
            self.name(&format!("{p}.name"), &rr.name)?;
            if !names.insert(rr.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate rule name {:?}", rr.name),
                ));
            }
            rules.push(self.rule(&p, rr, routes)?);
        }
        Ok(Budgets {
            store,
            on_store_error,
            store_timeout: self.positive_duration(
                "budgets.store_timeout",
                &r.store_timeout,
                Duration::from_millis(20),
            )?,
            flush_interval: self.positive_duration(
                "budgets.flush_interval",
                &r.flush_interval,
                Duration::from_secs(1),
            )?,
            response_headers: r.response_headers.unwrap_or(true),
            max_keys: match r.max_keys {
                None => 1_000_000,
                Some(n) if (1024..=1_000_000_000).contains(&n) => n as usize,
                Some(n) => {
                    return Err(self.err(
                        "budgets.max_keys",
                        format!("{n}: expected a number of keys from 1024 to 1000000000"),
                    ))
                }
            },
            rules,
        })
    }

    /// `memory`, `sqlite://PATH` (relative to the config file) or `redis://HOST:PORT/DB`; `from`
    /// is the secret it was read through, named in messages instead of the value.
    fn store(&self, s: &str, from: Option<&Secret>) -> VResult<BudgetStore> {
        Ok(match s {
            "memory" => BudgetStore::Memory,
            s if s.starts_with("sqlite://") => {
                let p = &s["sqlite://".len()..];
                if p.is_empty() {
                    return Err(self.err("budgets.store", "sqlite:// needs a file path, e.g. \"sqlite:///var/lib/cc-gateway/budgets.db\""));
                }
                BudgetStore::Sqlite(self.path(p))
            }
            s if s.starts_with("redis://") || s.starts_with("rediss://") => {
                if redis::Client::open(s).is_err() {
                    let shown = from.map_or_else(
                        || format!("{:?}", crate::budget::redact::redact_url(s)),
                        |f| format!("the value of {f}"),
                    );
                    return Err(self.err(
                        "budgets.store",
                        format!("{shown} is not a Redis URL (redis://HOST:PORT/DB)"),
                    ));
                }
                BudgetStore::Redis(s.to_string())
            }
            other => {
                let shown =
                    from.map_or_else(|| format!("{other:?}"), |f| format!("the value of {f}"));
                return Err(self.err(
                    "budgets.store",
                    format!(
                    "{shown}: expected \"memory\", \"sqlite://PATH\", \"redis://HOST:PORT/DB\" or one of them through \"env:NAME\" / \"file:PATH\""
                ),
                ));
            }
        })
    }

    /// One `[[budgets.rules]]` entry at key path `p`.
    fn rule(&self, p: &str, rr: RawRule, routes: &[Route]) -> VResult<BudgetRule> {
        let route_idx = match &rr.routes {
            None => None,
            Some(v) if v.is_empty() => {
                return Err(self.err(
                    format!("{p}.routes"),
                    "empty: omit it to apply to every route",
                ))
            }
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(j, n)| {
                        routes.iter().position(|r| &r.name == n).ok_or_else(|| {
                            self.err(format!("{p}.routes[{j}]"), format!("unknown route {n:?}"))
                        })
                    })
                    .collect::<VResult<Vec<_>>>()?,
            ),
        };
        if rr.key.is_empty() {
            return Err(self.err(
                format!("{p}.key"),
                "needs at least one part (claim:<name>, header:<name>, route, client_ip)",
            ));
        }
        let key = rr
            .key
            .iter()
            .enumerate()
            .map(|(j, k)| self.key_part(&format!("{p}.key[{j}]"), k))
            .collect::<VResult<Vec<_>>>()?;
        let (kind, limit) = match (&rr.rate, &rr.quota) {
            (Some(_), Some(_)) => {
                return Err(self.err(p, "has both rate and quota: one rule, one kind of limit"))
            }
            (Some(r), None) => (LimitKind::Rate, Some(self.limit(&format!("{p}.rate"), r)?)),
            (None, Some(q)) => (
                LimitKind::Quota,
                Some(self.limit(&format!("{p}.quota"), q)?),
            ),
            (None, None) if rr.tiers.is_some() => (LimitKind::Rate, None),
            (None, None) => {
                return Err(self.err(p, "needs rate = \"N/period\" or quota = \"N/period\""))
            }
        };
        if rr.burst.is_some() && kind == LimitKind::Quota {
            return Err(self.err(format!("{p}.burst"), "applies to rate rules only"));
        }
        let unit = match rr.unit.as_deref() {
            None | Some("requests") => BudgetUnit::Requests,
            Some("tokens") => BudgetUnit::Tokens,
            Some(u) => {
                return Err(self.err(
                    format!("{p}.unit"),
                    format!("{u:?}: expected \"requests\" (the default) or \"tokens\""),
                ))
            }
        };
        let route_idx = match unit {
            BudgetUnit::Requests => route_idx,
            BudgetUnit::Tokens => Some(self.token_routes(p, route_idx, routes)?),
        };
        if unit == BudgetUnit::Tokens {
            if kind != LimitKind::Quota {
                return Err(self.err(
                    format!("{p}.unit"),
                    "\"tokens\" counts a quota: set quota = \"N/period\" (tokens are charged after the response, which a rate cannot wait for)",
                ));
            }
            if rr.cost.is_some() {
                return Err(self.err(
                    format!("{p}.cost"),
                    "a token rule charges each response's tokens, not a cost per request",
                ));
            }
        }
        let burst = self.count(&format!("{p}.burst"), rr.burst, 1, 1, 1_000_000_000)? as u64;
        let cost = self.count(&format!("{p}.cost"), rr.cost, 1, 1, 1_000_000_000)? as u64;
        let tiers = rr
            .tiers
            .map(|t| self.tiers(&format!("{p}.tiers"), t))
            .transpose()?;
        let mut overrides = HashMap::new();
        for (k, v) in &rr.overrides {
            overrides.insert(k.clone(), self.limit(&format!("{p}.overrides.{k}"), v)?);
        }
        Ok(BudgetRule {
            name: rr.name,
            routes: route_idx,
            key,
            kind,
            limit,
            burst,
            cost,
            tiers,
            overrides,
            unit,
        })
    }

    /// The routes of a token rule: only `kind = "ai"` routes report usage, so one that names
    /// another route is refused, and one that names none applies to every AI route.
    fn token_routes(
        &self,
        p: &str,
        named: Option<Vec<usize>>,
        routes: &[Route],
    ) -> VResult<Vec<usize>> {
        let ai = |i: &usize| routes[*i].kind == RouteKind::Ai;
        match named {
            Some(v) => match v.iter().position(|i| !ai(i)) {
                Some(j) => Err(self.err(
                    format!("{p}.routes[{j}]"),
                    format!(
                        "{:?} is not kind = \"ai\": only AI routes report the tokens a token rule counts",
                        routes[v[j]].name
                    ),
                )),
                None => Ok(v),
            },
            None => {
                let v: Vec<usize> = (0..routes.len()).filter(ai).collect();
                if v.is_empty() {
                    return Err(self.err(
                        format!("{p}.unit"),
                        "\"tokens\" needs a route with kind = \"ai\" (no route reports usage)",
                    ));
                }
                Ok(v)
            }
        }
    }

    /// `claim:<name>`, `header:<name>`, `route` or `client_ip`.
    pub(super) fn key_part(&self, kp: &str, k: &str) -> VResult<KeyPart> {
        Ok(match k {
            "route" => KeyPart::Route,
            "client_ip" => KeyPart::ClientIp,
            _ => match k.split_once(':') {
                Some(("claim", c)) if !c.is_empty() => KeyPart::Claim(c.to_string()),
                Some(("header", h)) => KeyPart::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| self.err(kp, format!("{h:?} is not a header name")))?,
                ),
                _ => {
                    return Err(self.err(
                        kp,
                        format!("{k:?}: expected claim:<name>, header:<name>, route or client_ip"),
                    ))
                }
            },
        })
    }

    /// `tiers = { claim, ranges = [[low, high, "N/period"], …] }`. Bounds are inclusive and the
    /// first matching range wins, so ranges must ascend without overlapping: otherwise a later
    /// range is partly or wholly dead and the limit a claim value gets is not the one written.
    fn tiers(&self, tp: &str, t: RawTiers) -> VResult<Tiers> {
        if t.claim.is_empty() {
            return Err(self.err(format!("{tp}.claim"), "must name a numeric claim"));
        }
        if t.ranges.is_empty() {
            return Err(self.err(
                format!("{tp}.ranges"),
                "needs at least one [low, high, \"N/period\"]",
            ));
        }
        let mut ranges = Vec::new();
        for (j, r) in t.ranges.iter().enumerate() {
            let rp = format!("{tp}.ranges[{j}]");
            let num = |v: &toml::Value| match v {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                toml::Value::String(s) if s == "inf" => Some(f64::INFINITY),
                _ => None,
            };
            let (Some(low), Some(high), Some(toml::Value::String(l))) =
                (r.first().and_then(num), r.get(1).and_then(num), r.get(2))
            else {
                return Err(self.err(
                    rp,
                    "expected [low, high, \"N/period\"] (high may be \"inf\")",
                ));
            };
            if r.len() != 3 || low > high {
                return Err(self.err(rp, "expected [low, high, \"N/period\"] with low <= high"));
            }
            if let Some(prev) = ranges.last() {
                ordered_after(prev, low).map_err(|problem| self.err(&rp, problem))?;
            }
            ranges.push(Tier {
                low,
                high,
                limit: self.limit(&rp, l)?,
            });
        }
        Ok(Tiers {
            claim: t.claim,
            ranges,
        })
    }
}

/// Why a range starting at `low` may not follow `prev` (bounds inclusive, first match wins).
fn ordered_after(prev: &Tier, low: f64) -> Result<(), String> {
    let shown = |x: f64| {
        if x.is_infinite() {
            "\"inf\"".to_string()
        } else {
            x.to_string()
        }
    };
    if low < prev.low {
        Err(format!(
            "starts at {}, below the previous range [{}, {}]: list ranges in ascending order",
            shown(low),
            shown(prev.low),
            shown(prev.high)
        ))
    } else if low <= prev.high {
        Err(format!(
            "starts at {}, inside the previous range [{}, {}] (bounds are inclusive): ranges must not overlap, e.g. [0, 100, …], [101, 1000, …]",
            shown(low),
            shown(prev.low),
            shown(prev.high)
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    fn with_rule(rule: &str) -> String {
        format!(
            "{GOOD}\n[budgets]\n[[budgets.rules]]\nname = \"r\"\nkey = [\"claim:sub\"]\n{rule}\n"
        )
    }

    fn tiers(ranges: &str) -> String {
        with_rule(&format!(
            "tiers = {{ claim = \"seats\", ranges = {ranges} }}"
        ))
    }

    #[test]
    fn token_rules() {
        use crate::config::{BudgetUnit, RouteKind};
        // GOOD's one route made an AI route, and an ordinary one beside it
        let ai = GOOD.replace("strip_prefix = true", "strip_prefix = true\nkind = \"ai\"");
        let plain = "[[routes]]\nname = \"plain\"\npath_prefix = \"/p/\"\nupstream = \"up\"\n";
        let rule = |keys: &str| {
            format!("{ai}\n{plain}\n[budgets]\n[[budgets.rules]]\nname = \"t\"\nkey = [\"claim:sub\"]\n{keys}\n")
        };
        let c = parse(&rule("quota = \"2000000/30d\"\nunit = \"tokens\"")).expect("valid");
        assert_eq!(c.routes[0].kind, RouteKind::Ai);
        let r = &c.budgets.expect("budgets").rules[0];
        assert_eq!(r.unit, BudgetUnit::Tokens);
        assert_eq!(r.routes, Some(vec![0]), "every AI route, no other");
        for (keys, path) in [
            (
                "rate = \"10/1s\"\nunit = \"tokens\"",
                "budgets.rules[0].unit",
            ),
            (
                "quota = \"10/1d\"\nunit = \"tokens\"\ncost = 2",
                "budgets.rules[0].cost",
            ),
            (
                "quota = \"10/1d\"\nunit = \"tokens\"\nroutes = [\"ai\", \"plain\"]",
                "budgets.rules[0].routes[1]",
            ),
            (
                "quota = \"10/1d\"\nunit = \"bytes\"",
                "budgets.rules[0].unit",
            ),
        ] {
            let e = parse(&rule(keys)).unwrap_err();
            assert_eq!(e.path, path, "{keys}: {e}");
        }
        let c = parse(&with_rule("quota = \"10/1d\"")).expect("valid");
        assert_eq!(
            c.budgets.expect("budgets").rules[0].unit,
            BudgetUnit::Requests
        );
        let e = parse(&with_rule("quota = \"10/1d\"\nunit = \"tokens\"")).unwrap_err();
        assert_eq!(e.path, "budgets.rules[0].unit", "no AI route: {e}");
    }

    #[test]
    fn ascending_disjoint_tiers_pass() {
        let c = parse(&tiers(
            r#"[[0, 100, "600/1m"], [101, 1000, "3000/1m"], [1001, "inf", "12000/1m"]]"#,
        ))
        .expect("valid");
        let t = c.budgets.expect("budgets").rules[0]
            .tiers
            .clone()
            .expect("tiers");
        assert_eq!(t.ranges.len(), 3);
        assert_eq!(t.ranges[2].high, f64::INFINITY);
        parse(&tiers(r#"[[0, 100, "1/1m"], [100.5, "inf", "2/1m"]]"#)).expect("gap is fine");
    }

    #[test]
    fn overlapping_or_unordered_tiers_are_refused() {
        let cases = [
            (r#"[[0, 100, "1/1m"], [50, 1000, "2/1m"]]"#, "overlap"),
            (r#"[[0, 100, "1/1m"], [100, 1000, "2/1m"]]"#, "overlap"),
            (r#"[[0, "inf", "1/1m"], [5, 10, "2/1m"]]"#, "overlap"),
            (r#"[[101, 1000, "2/1m"], [0, 100, "1/1m"]]"#, "ascending"),
        ];
        for (ranges, word) in cases {
            let e = parse(&tiers(ranges)).unwrap_err();
            assert_eq!(e.path, "budgets.rules[0].tiers.ranges[1]", "{ranges}: {e}");
            assert!(e.problem.contains(word), "{ranges}: {e}");
        }
        let e = parse(&tiers(
            r#"[[0, 10, "1/1m"], [20, 30, "2/1m"], [25, 40, "3/1m"]]"#,
        ))
        .unwrap_err();
        assert_eq!(e.path, "budgets.rules[0].tiers.ranges[2]", "{e}");
    }

    #[test]
    fn one_kind_of_limit_per_rule() {
        let e = parse(&with_rule("rate = \"1/1s\"\nquota = \"1/1d\"")).unwrap_err();
        assert_eq!(e.path, "budgets.rules[0]", "{e}");
        let e = parse(&with_rule("quota = \"1/1d\"\nburst = 5")).unwrap_err();
        assert_eq!(e.path, "budgets.rules[0].burst", "{e}");
        let e = parse(&with_rule("rate = \"0/1s\"")).unwrap_err();
        assert_eq!(e.path, "budgets.rules[0].rate", "{e}");
    }

    #[test]
    fn store_through_env_or_file_stays_redacted() {
        use crate::config::BudgetStore;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("redis-url");
        std::fs::write(&file, "redis://:s3cret@10.0.0.1:6379/0\n").expect("write");
        let with_store = |store: &str| format!("{GOOD}\n[budgets]\nstore = {store:?}\n");
        let c = parse(&with_store(&format!("file:{}", file.display()))).expect("valid");
        let b = c.budgets.expect("budgets");
        assert_eq!(
            b.store,
            BudgetStore::Redis("redis://:s3cret@10.0.0.1:6379/0".into())
        );
        assert_eq!(b.store.to_string(), "redis://:***@10.0.0.1:6379/0");
        assert!(!format!("{:?}", b).contains("s3cret"), "Debug redacts too");
        // a literal URL keeps working, redacted in the same way
        let c = parse(&with_store("redis://:s3cret@h:6379/0")).expect("valid");
        let b = c.budgets.expect("budgets");
        assert_eq!(b.store.to_string(), "redis://:***@h:6379/0");
        assert!(!format!("{b:?}").contains("s3cret"));
        // problems name the key, and neither the value nor its password
        let e = parse(&with_store("env:CC_GW_TEST_SURELY_UNSET_REDIS_URL")).unwrap_err();
        assert_eq!(e.path, "budgets.store", "{e}");
        assert!(
            e.problem.contains("CC_GW_TEST_SURELY_UNSET_REDIS_URL"),
            "{e}"
        );
        std::fs::write(&file, "mysql://:s3cret@h/0\n").expect("write");
        let e = parse(&with_store(&format!("file:{}", file.display()))).unwrap_err();
        assert_eq!(e.path, "budgets.store", "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = parse(&with_store("redis://:s3cret@h:notaport/0")).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
