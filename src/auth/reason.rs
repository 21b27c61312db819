//! Stable, machine-readable reasons for refusing a request. These strings are public
//! interface (JSON `reason`, metric label, access log): extend, never rename.

use http::StatusCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MalformedToken,
    TokenTooLarge,
    UnsupportedAlgorithm,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    UnknownIssuer,
    AudienceMismatch,
    HeaderMismatch,
    InsufficientScope,
    KeysUnavailable,
    /// the route needs a client certificate and the connection has none (or is plaintext)
    ClientCertRequired,
    /// the client certificate carries none of the route's identities
    ClientCertNotAllowed,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::TokenTooLarge,
        Reason::UnsupportedAlgorithm,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::UnknownIssuer,
        Reason::AudienceMismatch,
        Reason::HeaderMismatch,
        Reason::InsufficientScope,
        Reason::KeysUnavailable,
        Reason::ClientCertRequired,
        Reason::ClientCertNotAllowed,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::HeaderMismatch => "header_mismatch",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::ClientCertRequired => "client_cert_required",
            Reason::ClientCertNotAllowed => "client_cert_not_allowed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::InsufficientScope
            | Reason::ClientCertRequired
            | Reason::ClientCertNotAllowed => StatusCode::FORBIDDEN,
            // our keys are missing: our fault, not the client's; retry later
            Reason::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// RFC 6750 §3.1 error code for `WWW-Authenticate`, when the status calls for one.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Reason::InsufficientScope => Some("insufficient_scope"),
            // not about the bearer token: no challenge
            Reason::KeysUnavailable | Reason::ClientCertRequired | Reason::ClientCertNotAllowed => {
                None
            }
            _ => Some("invalid_token"),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused token: the stable reason plus a human description (never containing the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct AuthError {
    pub reason: Reason,
    pub detail: String,
}

impl AuthError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        AuthError {
            reason,
            detail: detail.into(),
        }
    }
}
