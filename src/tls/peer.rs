//! The client certificate of a TLS connection, as routes see it: its URI SANs (SPIFFE ids)
//! and DNS SANs. Parsed once per connection, right after the handshake; every request on the
//! connection shares it.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The identities a verified client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl ClientCert {
    /// The SANs of `leaf`; `None` when it does not parse (rustls has verified it, so only a
    /// certificate webpki accepts and x509-parser does not would get here).
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Option<ClientCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let mut out = ClientCert::default();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::URI(u) => out.uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => out.dns.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_and_dns_sans_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["LB.internal".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/ci/sa/runner".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let cc = ClientCert::from_leaf(cert.der()).expect("parses");
        assert_eq!(cc.uris, vec!["spiffe://example.org/ns/ci/sa/runner"]);
        assert_eq!(cc.dns, vec!["lb.internal"]);
        assert_eq!(
            ClientCert::from_leaf(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }
}
