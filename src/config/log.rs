//! `[log]`: the access log's destination and format, the diagnostic log's level.

use std::path::PathBuf;

use tracing::level_filters::LevelFilter;

use super::raw::RawLog;
use super::{VResult, Validator};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLog,
    pub level: String,
    pub format: LogFormat,
}

impl Validator {
    pub(super) fn log(&self, r: RawLog) -> VResult<Log> {
        let access = match r.access.as_deref() {
            None | Some("stdout") => AccessLog::Stdout,
            Some("off") => AccessLog::Off,
            Some("") => {
                return Err(self.err(
                    "log.access",
                    "empty: use \"stdout\", \"off\" or a file path",
                ))
            }
            Some(p) => AccessLog::File(self.path(p)),
        };
        let level = r.level.unwrap_or_else(|| "info".into());
        self.level(&level)?;
        let format = match r.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(f) => {
                return Err(self.err(
                    "log.format",
                    format!("{f:?}: expected \"text\" or \"json\""),
                ))
            }
        };
        Ok(Log {
            access,
            level,
            format,
        })
    }

    /// A level (`info`) or `EnvFilter` directives (`info,cc_gateway::keysync=debug`). A bare
    /// word that is not a level is refused although `EnvFilter` takes it: it reads as a target
    /// name (`inf` = "everything from a module called inf"), which silently turns every
    /// diagnostic log off — almost always a typo for a level.
    fn level(&self, level: &str) -> VResult<()> {
        const LEVELS: &str = "trace, debug, info, warn, error or off";
        let p = "log.level";
        if level.trim().is_empty() {
            return Err(self.err(p, format!("empty: expected a level ({LEVELS})")));
        }
        for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let targeted = d.contains('=') || d.contains('[');
            if !targeted && d.parse::<LevelFilter>().is_err() {
                return Err(self.err(
                    p,
                    format!(
                        "{d:?} is not a level: expected {LEVELS}, or target=level directives such as \"info,cc_gateway::keysync=debug\""
                    ),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
            self.err(
                p,
                format!("{level:?} is not a level or filter ({e}); levels: {LEVELS}"),
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    fn with_log(log: &str) -> String {
        format!("{GOOD}\n[log]\n{log}\n")
    }

    #[test]
    fn levels_and_filters_pass() {
        for level in [
            "info",
            "DEBUG",
            "off",
            "warn,cc_gateway::keysync=debug",
            "cc_gateway=trace",
            "info,",
        ] {
            let c = parse(&with_log(&format!("level = {level:?}")))
                .unwrap_or_else(|e| panic!("{level:?}: {e}"));
            assert_eq!(c.log.level, level);
        }
    }

    #[test]
    fn a_typo_for_a_level_is_refused() {
        for level in [
            "inf",
            "",
            "  ",
            "info,debugg",
            "cc_gateway",
            "cc_gateway=loud",
        ] {
            let e = parse(&with_log(&format!("level = {level:?}"))).unwrap_err();
            assert_eq!(e.path, "log.level", "{level:?}: {e}");
            assert!(
                e.problem.contains("trace, debug, info, warn, error or off"),
                "{level:?}: {e}"
            );
        }
    }

    #[test]
    fn access_and_format_are_checked() {
        let e = parse(&with_log("access = \"\"")).unwrap_err();
        assert_eq!(e.path, "log.access", "{e}");
        let e = parse(&with_log("format = \"xml\"")).unwrap_err();
        assert_eq!(e.path, "log.format", "{e}");
    }
}
