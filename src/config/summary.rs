//! The human summary `cc-gateway check` prints after a config passes.

use super::{redact_url, BudgetStore, Config, LimitKind, RouteAuth};

impl Config {
    /// A short human summary (for `cc-gateway check`).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "server: listen {} (admin {}), {} threads",
            listen.join(", "),
            self.server
                .admin_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            self.server.threads
        );
        let _ = writeln!(s, "issuers ({}):", self.issuers.len());
        for i in &self.issuers {
            let algs: Vec<&str> = i.algorithms.iter().map(|a| a.name()).collect();
            let _ = writeln!(
                s,
                "  {:<16} {}  keys: {}  algs: {}",
                i.name,
                i.issuer,
                i.source,
                algs.join(",")
            );
        }
        let _ = writeln!(s, "routes ({}):", self.routes.len());
        for r in &self.routes {
            let auth = match r.auth {
                RouteAuth::Public => "public".to_string(),
                RouteAuth::Required => format!(
                    "aud={} scopes=[{}]",
                    r.audience.as_deref().unwrap_or("*"),
                    r.scopes.join(",")
                ),
            };
            let _ = writeln!(
                s,
                "  {:<16} {}{} -> {}  {}",
                r.name,
                r.path_prefix,
                if r.strip_prefix { " (strip)" } else { "" },
                self.upstreams[r.upstream].name,
                auth
            );
        }
        let _ = writeln!(s, "upstreams ({}):", self.upstreams.len());
        for u in &self.upstreams {
            let _ = writeln!(s, "  {:<16} {}", u.name, u.endpoints.join(", "));
        }
        if let Some(b) = &self.budgets {
            let _ = writeln!(
                s,
                "budgets ({} rules, store {}, on_store_error {:?}):",
                b.rules.len(),
                match &b.store {
                    BudgetStore::Memory => "memory".to_string(),
                    BudgetStore::Sqlite(p) => format!("sqlite {}", p.display()),
                    BudgetStore::Redis(u) => format!("redis {}", redact_url(u)),
                },
                b.on_store_error
            );
            for r in &b.rules {
                let limit = r
                    .limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "tiers".into());
                let kind = if r.kind == LimitKind::Rate {
                    format!("rate {limit} burst {}", r.burst)
                } else {
                    format!("quota {limit}")
                };
                let _ = writeln!(s, "  {:<16} {kind}", r.name);
            }
        }
        s
    }
}
