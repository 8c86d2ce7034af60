//! Signing primitives every marketplace shares: the [`RequestHead`] signers take and return,
//! [`SignError`], and small helpers over heads. No marketplace, no I/O, no clock.

use http::{HeaderMap, Method};

/// The head of a request as it will be sent upstream. Signers take one and return the signed one.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// Lower-case host, with `:port` only when the port is not the https default (443).
    pub authority: String,
    /// Raw path and query exactly as they go on the wire; always starts with `/`.
    pub path_and_query: String,
    pub headers: HeaderMap,
}

impl RequestHead {
    /// The raw path, without `?` and query.
    pub fn path(&self) -> &str {
        split_path_query(&self.path_and_query).0
    }

    /// The raw query (no leading `?`), if any.
    pub fn query(&self) -> Option<&str> {
        split_path_query(&self.path_and_query).1
    }
}

/// Why a request could not be signed. `BadRequest` is the client's to fix (400); `Failed` is ours
/// or the credentials' (500 `signing_failed`).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Failed(String),
}

/// Splits `/p?q` into (`/p`, Some(`q`)). A fragment never reaches a proxy, so none is handled.
pub fn split_path_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

/// The media type of `content-type` (before any `;` parameters), trimmed and lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or("").trim();
    Some(media.to_ascii_lowercase())
}

/// `host` lower-cased, plus `:port` unless the port is 443 (https default).
pub fn https_authority(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_query_split() {
        assert_eq!(split_path_query("/a/b?x=1&y"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_path_query("/a"), ("/a", None));
        assert_eq!(split_path_query("/a?"), ("/a", Some("")));
    }

    #[test]
    fn media_type_ignores_parameters_and_case() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "Multipart/Form-Data; boundary=xyz".parse().unwrap(),
        );
        assert_eq!(media_type(&h).as_deref(), Some("multipart/form-data"));
    }

    #[test]
    fn authority_drops_default_port_only() {
        assert_eq!(https_authority("API.eBay.com", 443), "api.ebay.com");
        assert_eq!(https_authority("localhost", 8080), "localhost:8080");
    }
}
