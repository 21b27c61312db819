//! Showing store URLs without their secrets: a Redis URL may carry a password, and the URL is
//! printed by `check`, served by `GET /budgets` and named in store errors.

/// A store URL fit to show: a password in it (`redis://:secret@host`) becomes `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn store_urls_are_shown_without_passwords() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:s3cret@r.example/1"),
            "rediss://app:***@r.example/1"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://app@h/0"), "redis://app@h/0");
        assert_eq!(redact_url("redis://:p@ss@h/0"), "redis://:***@h/0");
    }
}
