//! Secret-bearing config strings, one syntax for every key that holds one (`server.admin_token`,
//! `budgets.store`, and upstream request headers next): `"env:NAME"` reads an environment
//! variable, `"file:PATH"` a file (relative to the config file), at load time — so the value is
//! never written in the config, which is copied, diffed and printed. Keys that may also hold a
//! plain value (a Redis URL without a password) say so with [`Literal::Allowed`].
//!
//! A [`Secret`] never shows its value: `Debug` and `Display` print where it came from
//! (`env:NAME`, `file:PATH`) or `<redacted>`; only [`Secret::expose`] hands the value out, for
//! the one place that uses it.

use std::fmt;
use std::path::PathBuf;

use super::{VResult, Validator};

/// Where a secret's value was read from (never the value: safe to show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:NAME`
    Env(String),
    /// `file:PATH` (resolved against the config file's directory)
    File(PathBuf),
    /// written in the config itself (only where the key allows it)
    Literal,
}

/// A value read through `env:NAME` / `file:PATH` (or, where allowed, written as is), with
/// surrounding whitespace — a file's trailing newline — removed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Whether a key accepts its value written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    /// as a plain value too (e.g. a Redis URL, which needs no password)
    Allowed,
    /// only `env:`/`file:`; the text says what to write instead
    Refused(&'static str),
}

impl Secret {
    /// The value, for the one place that needs it (never for a message or a log).
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

/// Where it came from, never what it is.
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::Literal => f.write_str("<redacted>"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl Validator {
    /// The secret at key path `key`, written as `raw`. A variable that is not set, a file that
    /// cannot be read, or an empty value is an error naming the key (and the variable or file,
    /// never the value).
    pub(super) fn secret(&self, key: &str, raw: &str, literal: Literal) -> VResult<Secret> {
        let (value, source) = if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err(self.err(key, "env: needs a variable name, e.g. \"env:TOKEN\""));
            }
            let v = std::env::var(name).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                self.err(key, format!("environment variable {name:?} {why}"))
            })?;
            (v, SecretSource::Env(name.to_string()))
        } else if let Some(f) = raw.strip_prefix("file:") {
            if f.is_empty() {
                return Err(self.err(key, "file: needs a path, e.g. \"file:/run/secrets/token\""));
            }
            let path = self.path(f);
            let v = std::fs::read_to_string(&path)
                .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
            (v, SecretSource::File(path))
        } else {
            match literal {
                Literal::Allowed => (raw.to_string(), SecretSource::Literal),
                Literal::Refused(hint) => return Err(self.err(key, hint)),
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            let from = Secret {
                value: String::new(),
                source,
            };
            return Err(self.err(key, format!("{from} is empty")));
        }
        Ok(Secret { value, source })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn v(dir: &Path) -> Validator {
        Validator {
            file: "gw.toml".into(),
            base: dir.to_path_buf(),
        }
    }

    #[test]
    fn env_file_and_literal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let v = v(dir.path());
        // a variable every test process has (setting one would race other threads' getenv)
        let path = std::env::var("PATH").expect("PATH is set");
        let s = v.secret("k", "env:PATH", Literal::Allowed).expect("set");
        assert_eq!(s.expose(), path.trim());
        assert_eq!(s.to_string(), "env:PATH");
        assert_eq!(format!("{s:?}"), "Secret(env:PATH)");

        std::fs::write(dir.path().join("tok"), "  s3cret-from-file\n").expect("write");
        let s = v.secret("k", "file:tok", Literal::Allowed).expect("file");
        assert_eq!(s.expose(), "s3cret-from-file");
        assert_eq!(*s.source(), SecretSource::File(dir.path().join("tok")));
        assert!(!format!("{s} {s:?}").contains("s3cret"));

        let s = v
            .secret("k", "plain-s3cret", Literal::Allowed)
            .expect("literal");
        assert_eq!(s.expose(), "plain-s3cret");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
    }

    #[test]
    fn problems_name_the_key_never_the_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let v = v(dir.path());
        let e = v
            .secret("a.b", "env:CC_GW_SECRET_TEST_UNSET", Literal::Allowed)
            .unwrap_err();
        assert_eq!(e.path, "a.b");
        assert!(
            e.problem.contains("\"CC_GW_SECRET_TEST_UNSET\" is not set"),
            "{e}"
        );
        let e = v
            .secret("a.b", "file:missing", Literal::Allowed)
            .unwrap_err();
        assert_eq!(e.path, "a.b");
        assert!(e.problem.contains("cannot read"), "{e}");
        let e = v
            .secret("a.b", "s3cret", Literal::Refused("use env:"))
            .unwrap_err();
        assert_eq!((e.path.as_str(), e.problem.as_str()), ("a.b", "use env:"));
        assert!(!e.to_string().contains("s3cret"), "{e}");
        std::fs::write(dir.path().join("blank"), " \n").expect("write");
        let e = v.secret("a.b", "file:blank", Literal::Allowed).unwrap_err();
        assert!(e.problem.contains("is empty"), "{e}");
        for raw in ["env:", "file:"] {
            let e = v.secret("a.b", raw, Literal::Allowed).unwrap_err();
            assert_eq!(e.path, "a.b", "{raw}");
        }
    }
}
