//! Pure request signers: (request head, body bytes, credentials, token, now) → signed head plus an
//! explanation with every secret masked. No I/O and no clock reads happen here.

pub mod ebay;
pub mod keys;
pub mod tiktok;

use http::{HeaderMap, Method};

use crate::secret::Secret;

/// A profile's signing scheme and credentials.
#[derive(Debug, Clone)]
pub enum Signer {
    Tiktok(tiktok::TiktokCredentials),
    Ebay(ebay::EbayCredentials),
}

impl Signer {
    /// Signs `head` + `body` as of `now` (Unix seconds), adding `access_token` where the
    /// marketplace expects it if the request carries none.
    pub fn sign(
        &self,
        head: RequestHead,
        body: &[u8],
        access_token: Option<&Secret>,
        now: u64,
    ) -> Result<Signed, SignError> {
        match self {
            Signer::Tiktok(creds) => tiktok::sign(head, body, creds, access_token, now),
            Signer::Ebay(creds) => ebay::sign(head, body, creds, access_token, now),
        }
    }

    /// Whether [`Signer::sign`] would use an access token for this request.
    pub fn wants_access_token(&self, head: &RequestHead) -> bool {
        match self {
            Signer::Tiktok(_) => tiktok::wants_access_token(head),
            Signer::Ebay(_) => ebay::wants_access_token(head),
        }
    }
}

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

/// A signed request head and the human-readable account of how it was signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub head: RequestHead,
    /// The string-to-sign or signature base, secrets masked. Meant for `--explain` and `doctor`.
    pub explanation: String,
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
