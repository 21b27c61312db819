//! `[[prices]]`: what AI tokens cost, per model, in USD per million tokens. The cost of a
//! response on a `kind = "ai"` route is computed from its usage with the *first* entry whose
//! `model` glob matches the response's model (so specific globs go before catch-alls); a
//! model no entry matches has no cost (`cost_usd` absent), never a made-up one.

use super::raw::RawPrice;
use super::{VResult, Validator};
use crate::usage::Usage;

/// One `[[prices]]` entry (USD per million tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// a glob: `*` any run of characters, `?` one character, anything else itself
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// defaults to `input`: no discount unless one is configured
    pub cache_read: f64,
    /// defaults to `input`
    pub cache_write: f64,
}

/// The price list, in configuration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices(pub Vec<Price>);

impl Prices {
    /// The first entry matching `model` (no model: only a `*` entry matches).
    pub fn find(&self, model: Option<&str>) -> Option<&Price> {
        let m = model.unwrap_or("");
        self.0.iter().find(|p| glob(&p.model, m))
    }

    /// The cost of `usage` in USD, or None when no entry prices the model.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> Option<f64> {
        self.find(model).map(|p| p.cost(usage))
    }
}

impl Price {
    /// `input` counts cached tokens too (see `usage::Usage`): only its uncached part is
    /// charged at the `input` price.
    pub fn cost(&self, u: &Usage) -> f64 {
        let uncached = u
            .input
            .saturating_sub(u.cache_read.saturating_add(u.cache_write));
        (uncached as f64 * self.input
            + u.cache_read as f64 * self.cache_read
            + u.cache_write as f64 * self.cache_write
            + u.output as f64 * self.output)
            / 1e6
    }
}

/// `*` and `?` globbing over bytes (model names are ASCII), iterative with one backtrack
/// point: linear in practice, never exponential.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Validator {
    pub(super) fn prices(&self, raws: Vec<RawPrice>) -> VResult<Prices> {
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("prices[{i}]");
            if r.model.trim().is_empty() {
                return Err(self.err(
                    format!("{p}.model"),
                    "empty: name a model or a glob (\"claude-*\", \"*\")",
                ));
            }
            let usd = |key: &str, v: f64| {
                if v.is_finite() && v >= 0.0 {
                    Ok(v)
                } else {
                    Err(self.err(
                        format!("{p}.{key}"),
                        format!("{v}: expected USD per million tokens, 0 or more"),
                    ))
                }
            };
            let input = usd("input", r.input)?;
            let output = usd("output", r.output)?;
            let cache_read = usd("cache_read", r.cache_read.unwrap_or(input))?;
            let cache_write = usd("cache_write", r.cache_write.unwrap_or(input))?;
            if cache_read > input {
                return Err(self.err(
                    format!("{p}.cache_read"),
                    format!("{cache_read} is more than input ({input}): a cached token never costs more than an uncached one"),
                ));
            }
            out.push(Price {
                model: r.model,
                input,
                output,
                cache_read,
                cache_write,
            });
        }
        Ok(Prices(out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    #[test]
    fn globs() {
        for (p, n, ok) in [
            ("*", "", true),
            ("*", "gpt-4o", true),
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("claude-*-4-5*", "claude-sonnet-4-5-20250929", true),
            ("claude-*-4-5", "claude-sonnet-4-1", false),
            ("o?", "o3", true),
            ("o?", "o3-mini", false),
            ("*mini", "gpt-4o-mini", true),
            ("a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ] {
            assert_eq!(glob(p, n), ok, "{p} vs {n}");
        }
    }

    const PRICES: &str = r#"
[[prices]]
model = "gpt-4o-mini*"
input = 0.15
output = 0.6
cache_read = 0.075
[[prices]]
model = "gpt-4o*"
input = 2.5
output = 10
cache_read = 1.25
[[prices]]
model = "claude-sonnet-*"
input = 3
output = 15
cache_read = 0.3
cache_write = 3.75
"#;

    #[test]
    fn first_match_wins_and_cost_splits_cached_tokens() {
        let c = parse(&format!("{GOOD}{PRICES}")).expect("valid");
        let p = &c.prices;
        assert_eq!(
            p.find(Some("gpt-4o-mini-2024")).map(|p| p.input),
            Some(0.15)
        );
        assert_eq!(
            p.find(Some("gpt-4o-2024-08-06")).map(|p| p.input),
            Some(2.5)
        );
        assert_eq!(p.find(Some("llama")), None);
        assert_eq!(p.find(None), None);
        let u = Usage {
            input: 1320,
            output: 42,
            cache_read: 1000,
            cache_write: 300,
            reasoning: 0,
        };
        // 20 uncached * 3 + 1000 * 0.3 + 300 * 3.75 + 42 * 15, per million
        let cost = p.cost(Some("claude-sonnet-4-5"), &u).expect("priced");
        assert!((cost - 0.002115).abs() < 1e-12, "{cost}");
        // cache prices default to the input price
        let c = parse(&format!(
            "{GOOD}[[prices]]\nmodel = \"*\"\ninput = 1\noutput = 2\n"
        ))
        .expect("valid");
        assert_eq!(c.prices.0[0].cache_read, 1.0);
        assert_eq!(c.prices.0[0].cache_write, 1.0);
        assert!(parse(GOOD).expect("valid").prices.0.is_empty());
    }

    #[test]
    fn invalid_prices_name_their_key() {
        for (entry, path) in [
            (
                "model = \"x\"\ninput = 1\noutput = 2\ncache_read = 1.5",
                "prices[0].cache_read",
            ),
            ("model = \"x\"\ninput = -1\noutput = 2", "prices[0].input"),
            ("model = \"\"\ninput = 1\noutput = 2", "prices[0].model"),
            ("model = \"x\"\ninput = 1\noutput = nan", "prices[0].output"),
        ] {
            let e = parse(&format!("{GOOD}[[prices]]\n{entry}\n")).unwrap_err();
            assert_eq!(e.path, path, "{entry}: {e}");
        }
    }
}
