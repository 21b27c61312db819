//! The human summary `cc-gateway check` prints after a config passes.

use super::{Config, LimitKind, RouteAuth, ServerTls};

impl Config {
    /// A short human summary (for `cc-gateway check`).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "server: listen {} (admin {}), {}",
            listen.join(", "),
            self.server
                .admin_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            counted(self.server.threads, "thread", "threads")
        );
        if let Some(t) = &self.server.tls {
            tls_summary(&mut s, t);
        }
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
                r.upstream_label(&self.upstreams, &self.tunnels),
                auth
            );
        }
        let _ = writeln!(s, "upstreams ({}):", self.upstreams.len());
        for u in &self.upstreams {
            let _ = writeln!(s, "  {:<16} {}", u.name, u.endpoint_list());
        }
        if let Some(b) = &self.budgets {
            // config words, so what `check` prints can be pasted back into the file
            let store = b.store.to_string();
            let _ = writeln!(
                s,
                "budgets ({}, store = {store:?}, on_store_error = {:?}):",
                counted(b.rules.len(), "rule", "rules"),
                b.on_store_error.as_str()
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
        if let Some(l) = &self.request_log {
            let _ = writeln!(s, "{}", l.summary());
        }
        s
    }
}

/// The TLS listeners and each certificate as it is on disk now: subject, SANs, expiry.
fn tls_summary(s: &mut String, t: &ServerTls) {
    use std::fmt::Write;
    let listen: Vec<String> = t.listen.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(
        s,
        "tls: listen {}, min_version {:?}, client_auth {:?}",
        listen.join(", "),
        t.min_version.as_str(),
        t.client_auth.as_str()
    );
    let provider = crate::tls::provider();
    for (i, c) in t.certificates.iter().enumerate() {
        let names = if c.server_names.is_empty() {
            "default".to_string()
        } else {
            format!("server_names [{}]", c.server_names.join(", "))
        };
        let _ = writeln!(s, "  certificate {} ({names})", c.cert.display());
        let _ = match crate::tls::certs::load(&c.cert, &c.key, &provider) {
            Ok(l) => writeln!(
                s,
                "    subject {}  SANs [{}]  expires {} (in {} days)",
                l.info.subject,
                l.info.sans.join(", "),
                l.info.not_after_text(),
                (l.info.not_after - crate::tls::certs::unix_now()) / 86_400
            ),
            Err(e) => writeln!(s, "    server.tls.certificates[{i}]: {e}"),
        };
    }
}

/// `1 rule`, `2 rules`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    const RULE: &str =
        "\n[[budgets.rules]]\nname = \"r{i}\"\nkey = [\"claim:sub\"]\nquota = \"10/1h\"\n";

    fn with_rules(n: usize, table: &str) -> String {
        let rules: String = (0..n)
            .map(|i| RULE.replace("{i}", &i.to_string()))
            .collect();
        format!("{GOOD}\n[budgets]\n{table}\n{rules}")
    }

    #[test]
    fn summary_speaks_config_words() {
        let one = parse(&with_rules(1, "")).expect("valid").summary();
        assert!(
            one.contains("budgets (1 rule, store = \"memory\", on_store_error = \"allow\"):"),
            "{one}"
        );
        assert!(one.contains("2 threads"), "{one}");
        let two = parse(&with_rules(2, "on_store_error = \"deny\""))
            .expect("valid")
            .summary();
        assert!(
            two.contains("budgets (2 rules, store = \"memory\", on_store_error = \"deny\"):"),
            "{two}"
        );
        let one_thread = parse(&GOOD.replace("threads = 2", "threads = 1"))
            .expect("valid")
            .summary();
        assert!(one_thread.contains(", 1 thread\n"), "{one_thread}");
    }

    #[test]
    fn summary_hides_store_passwords() {
        let s = parse(&with_rules(
            1,
            "store = \"redis://:s3cret@127.0.0.1:6379/0\"",
        ))
        .expect("valid")
        .summary();
        assert!(
            s.contains("store = \"redis://:***@127.0.0.1:6379/0\""),
            "{s}"
        );
        assert!(!s.contains("s3cret"), "{s}");
    }
}
