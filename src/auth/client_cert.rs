//! A route's `client_cert` rule against the connection's verified client certificate. The
//! certificate was verified against `server.tls.client_ca` in the handshake; here only its
//! identities (URI and DNS SANs) are matched.

use super::{AuthError, Reason};
use crate::config::ClientCertRule;
use crate::tls::peer::ClientCert;

/// Admits the certificate or says why not; on success, the URI SAN that matched a `uris`
/// pattern (sent upstream as `<prefix>Client-Uri`), if one did.
pub fn check<'c>(
    rule: &ClientCertRule,
    cert: Option<&'c ClientCert>,
    tls: bool,
) -> Result<Option<&'c str>, AuthError> {
    let Some(cert) = cert else {
        let why = if tls {
            "this route needs a client certificate and none was presented"
        } else {
            "this route needs a client certificate: connect over TLS and present one"
        };
        return Err(AuthError::new(Reason::ClientCertRequired, why));
    };
    rule.admit(&cert.uris, &cert.dns).ok_or_else(|| {
        AuthError::new(
            Reason::ClientCertNotAllowed,
            "the client certificate's identities are not allowed on this route",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UriPattern;

    #[test]
    fn required_not_allowed_and_the_matching_uri() {
        let rule = ClientCertRule {
            uris: vec![UriPattern::Exact("spiffe://td/a".into())],
            dns: vec!["lb.internal".into()],
        };
        let e = check(&rule, None, false).unwrap_err();
        assert_eq!(e.reason, Reason::ClientCertRequired);
        assert!(e.detail.contains("over TLS"), "{e}");
        assert_eq!(
            check(&rule, None, true).unwrap_err().reason,
            Reason::ClientCertRequired
        );
        let other = ClientCert {
            uris: vec!["spiffe://td/b".into()],
            dns: vec!["x.internal".into()],
        };
        assert_eq!(
            check(&rule, Some(&other), true).unwrap_err().reason,
            Reason::ClientCertNotAllowed
        );
        let good = ClientCert {
            uris: vec!["spiffe://td/a".into()],
            dns: vec![],
        };
        assert_eq!(check(&rule, Some(&good), true), Ok(Some("spiffe://td/a")));
        let lb = ClientCert {
            uris: vec![],
            dns: vec!["lb.internal".into()],
        };
        assert_eq!(check(&rule, Some(&lb), true), Ok(None));
    }
}
