//! User-given URLs (a coordinator's nodes, GitHub's API, etcd's endpoints), checked before any
//! request is made, in messages that never repeat credentials a URL may carry.

/// Checks an http(s) URL: a host, a valid port, no credentials, no query string. Says why not in
/// words that never repeat the URL (it may carry credentials).
pub fn http_url(raw: &str) -> std::result::Result<(String, http::Uri), &'static str> {
    let trimmed = raw.trim().trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| "not a URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the scheme must be http or https");
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials do not belong in the URL");
    }
    if authority.host().is_empty() {
        return Err("no host");
    }
    if let Some(port) = authority.as_str().rsplit_once(':').map(|(_, p)| p)
        && !authority.host().ends_with(']')
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err("the port must be a number from 1 to 65535");
    }
    if uri.query().is_some() {
        return Err("no query string is allowed");
    }
    Ok((trimmed.to_string(), uri))
}

/// What a message shows of a URL the user gave: nothing when it carries credentials.
pub fn shown_url(raw: &str) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.contains('@') {
        "(not shown: it contains credentials)".to_string()
    } else {
        format!("{trimmed:?}")
    }
}
