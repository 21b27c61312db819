//! `[telemetry]`: OpenTelemetry traces exported as OTLP/HTTP protobuf to a collector.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::raw::RawTelemetry;
use super::secret::Literal;
use super::{VResult, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// the collector's traces URL (`otlp_endpoint` + `/v1/traces`)
    pub endpoint: Uri,
    /// sent with every export (`Authorization` to a hosted collector); values resolved from
    /// `env:`/`file:` at load, never printed
    pub headers: Vec<(HeaderName, SecretHeader)>,
    /// head sampling of new traces, 0.0..=1.0
    pub sample_ratio: f64,
    /// also export refused, 5xx and slow requests that head sampling left out
    pub keep_errors: bool,
    pub slow_threshold: Duration,
    pub service_name: String,
    /// extra resource attributes (`deployment.environment`, …)
    pub resource: BTreeMap<String, String>,
}

/// A header value that may be a secret: compared, but `Debug` never shows it.
#[derive(Clone, PartialEq)]
pub struct SecretHeader(pub HeaderValue);

impl fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"(redacted)\"")
    }
}

impl Validator {
    pub(super) fn telemetry(&self, r: Option<RawTelemetry>) -> VResult<Option<Telemetry>> {
        let Some(r) = r else { return Ok(None) };
        let Some(endpoint) = &r.otlp_endpoint else {
            return Err(self.err(
                "telemetry.otlp_endpoint",
                "required: the collector's OTLP/HTTP address (e.g. \"http://127.0.0.1:4318\")",
            ));
        };
        let endpoint = self.otlp_endpoint(endpoint)?;
        let mut headers = Vec::new();
        for (name, value) in &r.headers {
            let path = format!("telemetry.headers.{name}");
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.err(&path, format!("{name:?} is not a header name")))?;
            // the shared `env:`/`file:` syntax; anything else is the value itself
            let secret = self.secret(&path, value, Literal::Allowed)?;
            let v = HeaderValue::from_str(secret.expose())
                .map_err(|_| self.err(&path, format!("{secret}: not a valid header value")))?;
            headers.push((n, SecretHeader(v)));
        }
        let sample_ratio = r.sample_ratio.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(self.err(
                "telemetry.sample_ratio",
                format!("{sample_ratio} is out of range (0.0..=1.0)"),
            ));
        }
        let service_name = r.service_name.unwrap_or_else(|| "cc-gateway".into());
        if service_name.trim().is_empty() {
            return Err(self.err("telemetry.service_name", "empty"));
        }
        if let Some(k) = r.resource.keys().find(|k| k.trim().is_empty()) {
            return Err(self.err(format!("telemetry.resource.{k}"), "empty attribute name"));
        }
        Ok(Some(Telemetry {
            endpoint,
            headers,
            sample_ratio,
            keep_errors: r.keep_errors.unwrap_or(true),
            slow_threshold: self.positive_duration(
                "telemetry.slow_threshold",
                &r.slow_threshold,
                Duration::from_secs(1),
            )?,
            service_name,
            resource: r.resource,
        }))
    }

    fn otlp_endpoint(&self, s: &str) -> VResult<Uri> {
        let p = "telemetry.otlp_endpoint";
        let uri: Uri = s
            .parse()
            .map_err(|_| self.err(p, format!("{s:?} is not a URL")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(self.err(
                    p,
                    format!("{s:?}: expected http:// or https:// (OTLP/HTTP, e.g. \"http://127.0.0.1:4318\")"),
                ))
            }
        }
        if uri.authority().is_none_or(|a| a.host().is_empty()) || uri.query().is_some() {
            return Err(self.err(p, format!("{s:?}: expected scheme://host[:port][/path]")));
        }
        let base = uri.path().trim_end_matches('/');
        let full = format!(
            "{}://{}{base}/v1/traces",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        full.parse()
            .map_err(|_| self.err(p, format!("{s:?} is not a URL")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    fn with(t: &str) -> String {
        format!("{GOOD}\n[telemetry]\n{t}\n")
    }

    #[test]
    fn defaults_and_endpoint_path() {
        let c = parse(&with("otlp_endpoint = \"http://127.0.0.1:4318\"")).unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.01);
        assert!(t.keep_errors);
        assert_eq!(t.slow_threshold.as_secs(), 1);
        assert_eq!(t.service_name, "cc-gateway");
        let c = parse(&with("otlp_endpoint = \"https://otel.example/prefix/\"")).unwrap();
        assert_eq!(
            c.telemetry.unwrap().endpoint.to_string(),
            "https://otel.example/prefix/v1/traces"
        );
        assert!(parse(GOOD).unwrap().telemetry.is_none());
    }

    #[test]
    fn secrets_resolve_and_stay_hidden() {
        std::env::set_var("CC_TEST_OTLP_TOKEN", "Bearer s3cret");
        let c = parse(&with(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = { Authorization = \"env:CC_TEST_OTLP_TOKEN\" }",
        ))
        .unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.headers[0].1 .0, "Bearer s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        let e = parse(&with(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = { Authorization = \"env:CC_TEST_NOT_SET_ANYWHERE\" }",
        ))
        .unwrap_err();
        assert_eq!(e.path, "telemetry.headers.Authorization", "{e}");
        assert!(
            e.problem
                .contains("environment variable \"CC_TEST_NOT_SET_ANYWHERE\" is not set"),
            "{e}"
        );
        // the shared syntax: a file (its newline dropped), and an empty value refused
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("otlp-token");
        std::fs::write(&file, "Bearer f1le-s3cret\n").expect("write");
        let c = parse(&with(&format!(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = {{ Authorization = \"file:{}\" }}",
            file.display()
        )))
        .unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.headers[0].1 .0, "Bearer f1le-s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::write(&file, "\n").expect("write");
        let e = parse(&with(&format!(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = {{ Authorization = \"file:{}\" }}",
            file.display()
        )))
        .unwrap_err();
        assert_eq!(e.path, "telemetry.headers.Authorization", "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (t, key) in [
            (
                "otlp_endpoint = \"grpc://x:4317\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"127.0.0.1:4318\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://h:1\"\nsample_ratio = 1.5",
                "telemetry.sample_ratio",
            ),
            (
                "otlp_endpoint = \"http://h:1\"\nslow_threshold = \"0s\"",
                "telemetry.slow_threshold",
            ),
            (
                "otlp_endpoint = \"http://h:1\"\nheaders = { \"bad name\" = \"x\" }",
                "telemetry.headers.bad name",
            ),
            ("sample_ratio = 0.5", "telemetry.otlp_endpoint"),
            (
                "otlp_endpoint = \"http://h:1\"\nsampling = 1",
                "telemetry.sampling",
            ),
        ] {
            let e = parse(&with(t)).unwrap_err();
            assert_eq!(e.path, key, "{t}: {e}");
        }
    }
}
