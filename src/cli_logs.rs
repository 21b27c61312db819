//! `cc-gateway logs [stats]`: the request log from the command line. It reads the store the
//! config's `[request_log]` names directly (no running gateway needed), with the same filters
//! and stats as the admin API's `/logs` (`requestlog::api`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};

use cc_gateway::config::Config;
use cc_gateway::requestlog::api::Params;
use cc_gateway::requestlog::Store;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    sub: Option<LogsCmd>,
    #[command(flatten)]
    q: QueryArgs,
}

#[derive(Subcommand)]
enum LogsCmd {
    /// Requests, error ratio, p50/p95/p99 duration, tokens and cost per group.
    Stats {
        /// route, sub, model, status, reason, node, upstream, … or a `fields` name (instance)
        #[arg(long, default_value = "route")]
        by: String,
        /// largest first by requests, tokens, cost, p99 or errors
        #[arg(long, default_value = "requests")]
        sort: String,
        #[command(flatten)]
        q: QueryArgs,
    },
}

#[derive(Args)]
struct QueryArgs {
    /// the config file
    #[arg(
        long,
        short,
        env = "CC_GATEWAY_CONFIG",
        default_value = "/etc/cc-gateway/gateway.toml"
    )]
    config: PathBuf,
    /// from this long ago (1h, 7d) or this RFC 3339 time
    #[arg(long)]
    since: Option<String>,
    /// until this long ago or this RFC 3339 time
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    /// a status (429) or a class (5xx)
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    node: Option<String>,
    /// rows at most (newest first)
    #[arg(long)]
    limit: Option<String>,
    /// one JSON object per line
    #[arg(long)]
    json: bool,
}

impl QueryArgs {
    fn params(&self) -> Params {
        Params {
            since: self.since.clone(),
            until: self.until.clone(),
            route: self.route.clone(),
            sub: self.sub.clone(),
            status: self.status.clone(),
            reason: self.reason.clone(),
            model: self.model.clone(),
            node: self.node.clone(),
            limit: self.limit.clone(),
            by: None,
            sort: None,
        }
    }

    fn store(&self) -> Result<Store> {
        let cfg = Config::load(&self.config)?;
        let Some(rl) = cfg.request_log else {
            bail!("{}: [request_log] is off", self.config.display());
        };
        Ok(Store::open(&rl.store, false)?)
    }
}

pub fn run(a: LogsArgs) -> Result<ExitCode> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    match a.sub {
        None => {
            let p = a.q.params();
            let f = p.filter().map_err(|e| anyhow!(e))?;
            let limit = p.limit().map_err(|e| anyhow!(e))?;
            let rows = a.q.store()?.rows(&f, limit)?;
            if a.q.json {
                for r in &rows {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:<24} {:>3} {:>9} {:<14} {:<20} {:<18} {:>8} {:>8} {:>10} {:<22} REQUEST_ID",
                    "TIME", "ST", "MS", "ROUTE", "SUB", "MODEL", "IN", "OUT", "COST_USD", "REASON"
                )?;
                for r in &rows {
                    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    let n = |v: Option<i64>| v.map_or("-".into(), |n| n.to_string());
                    writeln!(
                        out,
                        "{:<24} {:>3} {:>9.1} {:<14} {:<20} {:<18} {:>8} {:>8} {:>10} {:<22} {}",
                        r.time,
                        r.status,
                        r.duration_ms,
                        o(&r.route),
                        o(&r.sub),
                        o(&r.model),
                        n(r.input_tokens),
                        n(r.output_tokens),
                        r.cost_usd.map_or("-".into(), |c| format!("{c:.6}")),
                        o(&r.reason),
                        r.request_id
                    )?;
                }
            }
        }
        Some(LogsCmd::Stats { by, sort, q }) => {
            let mut p = q.params();
            p.by = Some(by);
            p.sort = Some(sort);
            let f = p.filter().map_err(|e| anyhow!(e))?;
            let g = p.group_by().map_err(|e| anyhow!(e))?;
            let order = p.order().map_err(|e| anyhow!(e))?;
            let groups = q.store()?.stats(&g, &f, order)?;
            if q.json {
                for gr in &groups {
                    let mut v = serde_json::to_value(gr)?;
                    if let Some(o) = v.as_object_mut() {
                        // the group's value under the name it was grouped by, as well
                        let val = o.get("group").cloned().unwrap_or_default();
                        o.insert(g.name().to_string(), val);
                    }
                    writeln!(out, "{v}")?;
                }
            } else {
                writeln!(
                    out,
                    "{:<24} {:>9} {:>7} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12}",
                    g.name().to_uppercase(),
                    "REQUESTS",
                    "ERR%",
                    "P50_MS",
                    "P95_MS",
                    "P99_MS",
                    "TOKENS_IN",
                    "TOKENS_OUT",
                    "COST_USD"
                )?;
                for gr in &groups {
                    writeln!(
                        out,
                        "{:<24} {:>9} {:>6.1}% {:>9.1} {:>9.1} {:>9.1} {:>12} {:>12} {:>12.6}",
                        gr.group.as_deref().unwrap_or("-"),
                        gr.requests,
                        gr.error_ratio * 100.0,
                        gr.p50_ms,
                        gr.p95_ms,
                        gr.p99_ms,
                        gr.input_tokens,
                        gr.output_tokens,
                        gr.cost_usd
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
