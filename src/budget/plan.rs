//! Step one of a decision, synchronous: the rules of the request's route, the request's key
//! under each (see `keys`), the limit that key gets (an override, a tier, the rule's own) and
//! what the request costs. Nothing borrowed from the request is needed after this.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;

use super::keys::{key_into, Claims};
use super::{Budgets, Probe};
use crate::auth::Verified;
use crate::config::{BudgetRule, Limit, LimitKind};

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
    }
}
