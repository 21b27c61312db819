//! What `cc-gateway check` verifies beyond the file itself, as `nginx -t` does: the files the
//! config points at are opened and parsed, so a config that `check` passes does not then fail
//! at `run` for a key file that is missing or broken, or an SQLite store or access log in a
//! directory that does not exist. Paths in messages are absolute: `check` often runs from
//! another directory than the gateway will.
//!
//! Kept out of [`Config::load`]: startup and reload keep their own handling of these files
//! (a key file is re-read by its refresher, which keeps the last good keys on failure).

use std::path::{Path, PathBuf};

use super::{AccessLog, BudgetStore, Config, ConfigError, KeySource, ServerTls};
use crate::auth::jwk::parse_jwks;
use crate::tls::certs::{self, CertError};
use crate::tls::pem::{self, PemError};

impl Config {
    /// Opens and parses what the config references: every `jwks_file` (with the parser the
    /// key refresher uses), the SQLite store's directory (and the file, if it exists), the
    /// access log's directory. The first problem is returned as `file: key.path: problem`;
    /// without one, the config comes back (so `load(..).and_then(check_references)` reads).
    pub fn check_references(self) -> Result<Config, ConfigError> {
        let err = |path: String, problem: String| ConfigError {
            file: self.source.display().to_string(),
            path,
            problem,
        };
        for (i, issuer) in self.issuers.iter().enumerate() {
            let KeySource::JwksFile(file) = &issuer.source else {
                continue;
            };
            let key = format!("issuers[{i}].jwks_file");
            let shown = absolute(file);
            let doc = std::fs::read(file)
                .map_err(|e| err(key.clone(), format!("cannot read {}: {e}", shown.display())))?;
            parse_jwks(&doc, &issuer.algorithms, None)
                .map_err(|e| err(key, format!("{}: {e}", shown.display())))?;
        }
        if let Some(BudgetStore::Sqlite(file)) = self.budgets.as_ref().map(|b| &b.store) {
            sqlite_store(file).map_err(|problem| err("budgets.store".into(), problem))?;
        }
        if let AccessLog::File(file) = &self.log.access {
            parent_dir(file).map_err(|problem| err("log.access".into(), problem))?;
        }
        if let Some(tls) = &self.server.tls {
            server_tls(tls).map_err(|(path, problem)| err(path, problem))?;
        }
        super::upstreams::check_tls_files(&self.upstreams).map_err(|(k, p)| err(k, p))?;
        Ok(self)
    }
}

/// Every certificate loads as `run` loads it (chain, matching key, not expired) and the
/// client CA is a usable bundle; the key path of the file at fault comes back with the problem.
fn server_tls(tls: &ServerTls) -> Result<(), (String, String)> {
    let provider = crate::tls::provider();
    for (i, c) in tls.certificates.iter().enumerate() {
        let at = |k: &str| format!("server.tls.certificates[{i}].{k}");
        certs::load(&c.cert, &c.key, &provider).map_err(|e| {
            let key_at_fault = match &e {
                CertError::KeyMismatch { .. } | CertError::Key { .. } => true,
                CertError::Pem(PemError::Read { path, .. } | PemError::Invalid { path, .. }) => {
                    *path == c.key
                }
                CertError::Parse { .. } | CertError::Expired { .. } => false,
            };
            let what = if key_at_fault { "key" } else { "cert" };
            (at(what), absolute_in(&e.to_string(), &[&c.cert, &c.key]))
        })?;
    }
    if let Some(ca) = &tls.client_ca {
        pem::root_store(ca).map_err(|e| {
            (
                "server.tls.client_ca".to_string(),
                absolute_in(&e.to_string(), &[ca]),
            )
        })?;
    }
    Ok(())
}

/// `msg` with the files it names written as absolute paths.
fn absolute_in(msg: &str, files: &[&PathBuf]) -> String {
    let mut out = msg.to_string();
    for f in files {
        let abs = absolute(f);
        if abs != **f && !out.contains(&abs.display().to_string()) {
            out = out.replace(&f.display().to_string(), &abs.display().to_string());
        }
    }
    out
}

/// The store's directory must exist (the gateway creates the file, not directories); an
/// existing file must be an SQLite database. Opened read-only: `check` changes nothing.
fn sqlite_store(file: &Path) -> Result<(), String> {
    parent_dir(file)?;
    if !file.exists() {
        return Ok(());
    }
    let shown = absolute(file);
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    rusqlite::Connection::open_with_flags(file, flags)
        // SQLite opens lazily: reading the schema is what finds a file that is not a database
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(|_| ())
        .map_err(|e| format!("cannot open {} as an SQLite database: {e}", shown.display()))
}

/// The directory a file is to be created in exists and is a directory.
fn parent_dir(file: &Path) -> Result<(), String> {
    let file = absolute(file);
    let dir = file.parent().unwrap_or(Path::new("/"));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "directory {} does not exist (for {})",
            dir.display(),
            file.display()
        ))
    }
}

/// For messages: relative paths are anchored at the config file's directory already, but
/// that directory may itself be relative to where `check` was run.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::super::tests::GOOD;
    use super::*;

    fn load(dir: &Path, text: &str) -> Config {
        let path = dir.join("gw.toml");
        std::fs::write(&path, text).expect("writing config");
        Config::load(&path).expect("valid config")
    }

    fn with_jwks_file(dir: &Path, file: &str) -> Config {
        load(
            dir,
            &GOOD.replace("discovery = true", &format!("jwks_file = {file:?}")),
        )
    }

    #[test]
    fn a_missing_or_broken_jwks_file_is_named_by_absolute_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = dir.path().join("keys.json");
        let e = with_jwks_file(dir.path(), "keys.json")
            .check_references()
            .unwrap_err();
        assert_eq!(e.path, "issuers[0].jwks_file", "{e}");
        assert!(e.problem.contains(&keys.display().to_string()), "{e}");
        assert!(e.problem.starts_with("cannot read "), "{e}");

        std::fs::write(&keys, "{\"keys\": ").expect("writing keys");
        let e = with_jwks_file(dir.path(), "keys.json")
            .check_references()
            .unwrap_err();
        assert_eq!(e.path, "issuers[0].jwks_file", "{e}");
        assert!(e.problem.contains("not a JWKS document"), "{e}");

        std::fs::write(&keys, "{\"keys\": []}").expect("writing keys");
        let e = with_jwks_file(dir.path(), "keys.json")
            .check_references()
            .unwrap_err();
        assert!(e.problem.contains("no usable key"), "{e}");
    }

    #[test]
    fn sqlite_store_needs_its_directory_and_a_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = |p: &str| {
            load(
                dir.path(),
                &format!(
                    "{GOOD}\n[budgets]\nstore = \"sqlite://{p}\"\n[[budgets.rules]]\nname = \"r\"\nkey = [\"claim:sub\"]\nquota = \"1/1h\"\n"
                ),
            )
        };
        let e = store("no-such-dir/b.db").check_references().unwrap_err();
        assert_eq!(e.path, "budgets.store", "{e}");
        let missing = dir.path().join("no-such-dir");
        assert!(
            e.problem
                .contains(&format!("directory {} does not exist", missing.display())),
            "{e}"
        );

        store("b.db")
            .check_references()
            .expect("a new file in an existing directory");
        assert!(!dir.path().join("b.db").exists(), "check created the store");

        std::fs::write(
            dir.path().join("junk.db"),
            "not a database, just text padding it out",
        )
        .expect("writing junk");
        let e = store("junk.db").check_references().unwrap_err();
        assert_eq!(e.path, "budgets.store", "{e}");
        assert!(e.problem.contains("as an SQLite database"), "{e}");
    }

    #[test]
    fn access_log_needs_its_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = load(
            dir.path(),
            &format!("{GOOD}\n[log]\naccess = \"nowhere/access.log\"\n"),
        );
        let e = c.check_references().unwrap_err();
        assert_eq!(e.path, "log.access", "{e}");
        let c = load(
            dir.path(),
            &format!("{GOOD}\n[log]\naccess = \"access.log\"\n"),
        );
        c.check_references().expect("existing directory");
    }
}
