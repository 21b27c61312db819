//! `[log]`: the access log's destination and format, the diagnostic log's level.

use std::path::PathBuf;

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
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.err("log.level", format!("{level:?} is not a level or filter (e.g. \"info\", \"debug\", \"cc_gateway=debug\")")));
        }
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
}
