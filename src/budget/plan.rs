//! Step one of a decision, synchronous: the rules of the request's route, the request's key
//! under each (see `keys`), the limit that key gets (an override, a tier, the rule's own) and
//! what the request costs. Nothing borrowed from the request is needed after this.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;

use super::keys::{key_into, Claims};
use super::{Budgets, Probe};
use crate::auth::Verified;
use crate::config::{BudgetRule, BudgetUnit, Limit, LimitKind};

/// The keys and limits of one request's rules, ready for the store.
pub struct Plan {
    pub(super) route: usize,
    pub(super) probes: Vec<Probe>,
}

impl Budgets {
    /// The plan for a request on route `route` (index and name); None when no rule applies.
    pub fn plan(
        &self,
        route: usize,
        route_name: &str,
        route_cost: Option<u64>,
        id: Option<&Verified>,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Option<Plan> {
        self.plan_for(route, route_name, route_cost, id, headers, ip)
    }

    fn plan_for<C: Claims + ?Sized>(
        &self,
        route: usize,
        route_name: &str,
        route_cost: Option<u64>,
        id: Option<&C>,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Option<Plan> {
        let rules = self.by_route.get(route).filter(|r| !r.is_empty())?;
        let probes = rules
            .iter()
            .map(|&i| {
                let rule = &self.cfg.rules[i];
                // stored as "<rule>|<key>": one allocation, the rule's name first
                let mut key = String::with_capacity(rule.name.len() + 65);
                key.push_str(&rule.name);
                key.push('|');
                key_into(rule, route_name, id, headers, ip, &mut key);
                let limit = limit_for(rule, &key[rule.name.len() + 1..], id);
                probe(rule, key, limit, route_cost.unwrap_or(rule.cost))
            })
            .collect();
        Some(Plan { route, probes })
    }
}

/// The limit for a key: an override, else the tier of the token's claim, else the rule's own
/// limit, else its first tier.
pub(super) fn limit_for<C: Claims + ?Sized>(rule: &BudgetRule, key: &str, id: Option<&C>) -> Limit {
    if let Some(l) = rule.overrides.get(key) {
        return *l;
    }
    if let Some(t) = &rule.tiers {
        if let Some(x) = id.and_then(|v| v.claim_number(&t.claim)) {
            if let Some(tier) = t.ranges.iter().find(|r| r.low <= x && x <= r.high) {
                return tier.limit;
            }
        }
    }
    rule.limit
        .or_else(|| rule.tiers.as_ref()?.ranges.first().map(|t| t.limit))
        // config validation gives every rule a limit or tiers; this is never reached
        .unwrap_or(Limit {
            count: 1,
            period: Duration::from_secs(1),
        })
}

/// A probe of `rule` for its stored key (`<rule>|<key>`).
pub(super) fn probe(rule: &BudgetRule, key: String, limit: Limit, cost: u64) -> Probe {
    Probe {
        key,
        rate: rule.kind == LimitKind::Rate,
        limit,
        burst: rule.burst,
        cost,
        tokens: rule.unit == BudgetUnit::Tokens,
    }
}

#[cfg(test)]
mod tests {
    //! Key and limit selection, from config text as an operator writes it.

    use std::borrow::Cow;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    use http::{HeaderMap, HeaderValue};
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::budget::keys::number;
    use crate::config::Config;

    /// A token's claims, without a signed token (strings and numbers as `Verified` gives them).
    struct Token(Map<String, Value>);

    impl Claims for Token {
        fn claim_str(&self, name: &str) -> Option<Cow<'_, str>> {
            match self.0.get(name)? {
                Value::String(s) => Some(s.as_str().into()),
                Value::Number(n) => Some(n.to_string().into()),
                _ => None,
            }
        }

        fn claim_number(&self, name: &str) -> Option<f64> {
            number(self.0.get(name)?)
        }
    }

    fn token(claims: Value) -> Token {
        match claims {
            Value::Object(m) => Token(m),
            other => panic!("claims must be an object, not {other}"),
        }
    }

    /// Budgets for `rules` on two routes: `ai` (index 0) and `costly` (index 1, cost 10).
    fn budgets(rules: &str) -> Budgets {
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
[[issuers]]
name = "i"
issuer = "https://i.example"
jwks_file = "/dev/null"
[[routes]]
name = "ai"
path_prefix = "/ai/"
upstream = "u"
audience = "a"
[[routes]]
name = "costly"
path_prefix = "/costly/"
upstream = "u"
audience = "a"
cost = 10
[[upstreams]]
name = "u"
endpoints = ["127.0.0.1:1"]
[budgets]
{rules}
"#
        );
        let cfg =
            Config::parse(&text, Path::new("unit.toml")).unwrap_or_else(|e| panic!("config: {e}"));
        let b = cfg.budgets.as_ref().expect("a [budgets] table");
        Budgets::new_from(b, cfg.routes.len(), None).expect("a memory store")
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).expect("a header value"));
        }
        h
    }

    /// The probes of a request on route `ai` (index 0).
    fn probes(b: &Budgets, id: Option<&Token>, h: &HeaderMap, ip: IpAddr) -> Vec<Probe> {
        b.plan_for(0, "ai", None, id, h, ip)
            .expect("rules apply to ai")
            .probes
    }

    fn key(b: &Budgets, id: Option<&Token>, h: &HeaderMap) -> String {
        let p = probes(b, id, h, IP);
        assert_eq!(p.len(), 1, "one rule, one probe");
        p[0].key.clone()
    }

    fn limit(s: &str) -> Limit {
        let (n, per) = s.split_once('/').expect("N/period");
        Limit {
            count: n.parse().expect("a count"),
            period: humantime::parse_duration(per).expect("a period"),
        }
    }

    const EVERY_PART: &str = r#"
[[budgets.rules]]
name = "r"
key = ["claim:sub", "header:x-user", "route", "client_ip"]
quota = "100/1h"
"#;

    #[test]
    fn key_parts_are_joined_in_rule_order_after_the_rule_name() {
        let b = budgets(EVERY_PART);
        let id = token(json!({"sub": "alice"}));
        let h = headers(&[("x-user", "u-1")]);
        assert_eq!(key(&b, Some(&id), &h), "r|alice|u-1|ai|192.0.2.7");
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(
            probes(&b, Some(&id), &h, v6)[0].key,
            "r|alice|u-1|ai|2001:db8::1"
        );
    }

    #[test]
    fn a_missing_claim_or_header_keys_as_missing() {
        let b = budgets(EVERY_PART);
        assert_eq!(
            key(&b, None, &HeaderMap::new()),
            "r|_missing_|_missing_|ai|192.0.2.7",
            "no token, no header"
        );
        let nested = token(json!({"sub": {"id": 1}}));
        assert_eq!(
            key(&b, Some(&nested), &HeaderMap::new()),
            "r|_missing_|_missing_|ai|192.0.2.7",
            "a claim with no string form"
        );
        let numeric = token(json!({"sub": 42}));
        assert_eq!(
            key(&b, Some(&numeric), &HeaderMap::new()),
            "r|42|_missing_|ai|192.0.2.7"
        );
    }

    const HEADER_KEY: &str = r#"
[[budgets.rules]]
name = "h"
key = ["header:x-user"]
quota = "100/1h"
"#;

    #[test]
    fn separators_and_percent_signs_are_escaped_so_values_cannot_collide() {
        let b = budgets(HEADER_KEY);
        let k = |v: &str| key(&b, None, &headers(&[("x-user", v)]));
        assert_eq!(k("a|b%c"), "h|a%7Cb%25c");
        // the escaped form of one value, sent literally, is another key
        assert_eq!(k("a%7Cb"), "h|a%257Cb");
        assert_ne!(k("a|b"), k("a%7Cb"));
        assert_eq!(k("plain-value.1"), "h|plain-value.1", "nothing to escape");
    }

    #[test]
    fn long_values_are_stored_as_their_sha256() {
        let b = budgets(HEADER_KEY);
        let k = |v: &str| key(&b, None, &headers(&[("x-user", v)]));
        let kept = "x".repeat(128);
        assert_eq!(k(&kept), format!("h|{kept}"), "128 bytes are kept");
        assert_eq!(
            k(&"x".repeat(129)),
            "h|sha256:0ec9eb33e74510bcdd1f2ea55206e82f21649c5c2becbf2b433eb475b34c01bd"
        );
        // 50 separators escape to 150 bytes: hashed, and the hash is of the value as sent
        assert_eq!(
            k(&"|".repeat(50)),
            "h|sha256:09f4b94fafdec339516b8c86d08a659f989a1e44b53d08b6ed82c3bec1af96de"
        );
    }

    const TIERED: &str = r#"
[[budgets.rules]]
name = "seats"
key = ["claim:sub"]
tiers = { claim = "seats", ranges = [[0, 100, "2/1h"], [101, "inf", "5/1h"]] }
"#;

    fn limit_of(b: &Budgets, claims: Value) -> Limit {
        probes(b, Some(&token(claims)), &HeaderMap::new(), IP)[0].limit
    }

    #[test]
    fn tiers_pick_the_limit_by_the_claims_range() {
        let b = budgets(TIERED);
        assert_eq!(limit_of(&b, json!({"sub": "a", "seats": 0})), limit("2/1h"));
        assert_eq!(
            limit_of(&b, json!({"sub": "a", "seats": 100})),
            limit("2/1h")
        );
        assert_eq!(
            limit_of(&b, json!({"sub": "a", "seats": 101})),
            limit("5/1h")
        );
        assert_eq!(
            limit_of(&b, json!({"sub": "a", "seats": 1e9})),
            limit("5/1h")
        );
        assert_eq!(
            limit_of(&b, json!({"sub": "a", "seats": "250"})),
            limit("5/1h"),
            "a numeric string counts as its number"
        );
    }

    #[test]
    fn without_a_usable_tier_claim_the_first_tier_applies() {
        let b = budgets(TIERED);
        for claims in [
            json!({"sub": "a"}),
            json!({"sub": "a", "seats": "many"}),
            json!({"sub": "a", "seats": -1}),    // in no range
            json!({"sub": "a", "seats": 100.5}), // between the ranges
        ] {
            assert_eq!(limit_of(&b, claims.clone()), limit("2/1h"), "{claims}");
        }
        let no_token = probes(&b, None, &HeaderMap::new(), IP);
        assert_eq!(no_token[0].limit, limit("2/1h"));
    }

    #[test]
    fn a_rules_own_limit_applies_when_no_tier_matches() {
        let b = budgets(
            r#"
[[budgets.rules]]
name = "seats"
key = ["claim:sub"]
rate = "7/1m"
tiers = { claim = "seats", ranges = [[10, 100, "60/1m"]] }
"#,
        );
        assert_eq!(limit_of(&b, json!({"sub": "a", "seats": 5})), limit("7/1m"));
        assert_eq!(
            limit_of(&b, json!({"sub": "a", "seats": 50})),
            limit("60/1m")
        );
    }

    #[test]
    fn overrides_win_over_tiers_and_match_the_escaped_key() {
        let b = budgets(
            r#"
[[budgets.rules]]
name = "seats"
key = ["header:x-user"]
quota = "3/1h"
tiers = { claim = "seats", ranges = [[0, "inf", "50/1h"]] }
overrides = { "vip" = "1000/1h", "a%7Cb" = "4/1h" }
"#,
        );
        let limit_for = |user: &str, claims: Value| {
            let h = headers(&[("x-user", user)]);
            probes(&b, Some(&token(claims)), &h, IP)[0].limit
        };
        assert_eq!(limit_for("vip", json!({"seats": 5})), limit("1000/1h"));
        assert_eq!(limit_for("a|b", json!({})), limit("4/1h"));
        assert_eq!(limit_for("other", json!({"seats": 5})), limit("50/1h"));
        assert_eq!(limit_for("other", json!({})), limit("3/1h"));
    }

    #[test]
    fn a_route_cost_replaces_the_rules_cost() {
        let b = budgets(
            r#"
[[budgets.rules]]
name = "units"
key = ["claim:sub"]
quota = "100/1h"
cost = 3
"#,
        );
        let h = HeaderMap::new();
        let cost = |route: usize, name: &str, route_cost: Option<u64>| {
            let plan = b.plan_for::<Token>(route, name, route_cost, None, &h, IP);
            plan.expect("the rule applies everywhere").probes[0].cost
        };
        assert_eq!(cost(0, "ai", None), 3);
        assert_eq!(cost(1, "costly", Some(10)), 10);
    }

    #[test]
    fn rules_apply_only_to_their_routes_in_config_order() {
        let b = budgets(
            r#"
[[budgets.rules]]
name = "burst"
key = ["client_ip"]
rate = "10/1s"
burst = 4
[[budgets.rules]]
name = "costly-only"
key = ["route"]
quota = "5/1d"
routes = ["costly"]
"#,
        );
        let h = HeaderMap::new();
        let on = |route: usize, name: &str| {
            b.plan_for::<Token>(route, name, None, None, &h, IP)
                .map(|p| p.probes)
                .unwrap_or_default()
        };
        let ai = on(0, "ai");
        assert_eq!(ai.len(), 1);
        assert_eq!(ai[0].key, "burst|192.0.2.7");
        assert!(ai[0].rate, "a rate rule");
        assert_eq!(ai[0].burst, 4);
        let costly = on(1, "costly");
        let keys: Vec<&str> = costly.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["burst|192.0.2.7", "costly-only|costly"]);
        assert!(!costly[1].rate, "a quota rule");
        assert!(b.plan_for::<Token>(7, "gone", None, None, &h, IP).is_none());
    }

    #[test]
    fn a_route_without_rules_has_no_plan() {
        let b = budgets(
            r#"
[[budgets.rules]]
name = "costly-only"
key = ["route"]
quota = "5/1d"
routes = ["costly"]
"#,
        );
        let h = HeaderMap::new();
        assert!(b.plan_for::<Token>(0, "ai", None, None, &h, IP).is_none());
    }
}
