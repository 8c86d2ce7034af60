//! What every marketplace's sandbox stand-in shares: the request as it arrived
//! ([`SandboxRequest`]), the answer ([`SandboxAnswer`]), the echo of a verified request, and the
//! [`TokenBook`] that mints and checks the short-lived tokens the stand-ins issue. The stand-ins
//! themselves (one per marketplace folder) verify by the marketplace's rules with their own code,
//! never by calling the signer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// One request as it reached the sandbox: what the marketplace would see on the wire.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub method: Method,
    /// Lower-case, without the port: what a profile's host patterns match.
    pub host: String,
    /// The authority as sent (`Host`), port included when there was one.
    pub authority: String,
    /// The raw path, no query.
    pub path: String,
    /// The raw query (no `?`), as sent.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl SandboxRequest {
    /// The query's pairs, decoded as a server decodes them (`%XX`, `+` is a space), in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    /// The first value of query parameter `key`, decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// A header's value as text (lossy), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The body's form fields (`application/x-www-form-urlencoded`), decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// What the stand-in received, for the `sandbox` field of a verified answer: method, path,
    /// decoded query, headers and the body's SHA-256. Values of `secret_headers` and
    /// `secret_params` (tokens, app secrets) are never echoed: only that they were there.
    pub fn echo(&self, secret_headers: &[&str], secret_params: &[&str]) -> Value {
        let query: Vec<Value> = self
            .query_pairs()
            .into_iter()
            .map(|(k, v)| {
                let shown = if secret_params.contains(&k.as_str()) {
                    REDACTED.to_owned()
                } else {
                    v
                };
                json!([k, shown])
            })
            .collect();
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let shown = if secret_headers
                .iter()
                .any(|s| name.as_str().eq_ignore_ascii_case(s))
            {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            headers.insert(name.as_str().to_owned(), Value::String(shown));
        }
        json!({
            "verified": true,
            "method": self.method.as_str(),
            "host": self.host,
            "path": self.path,
            "query": query,
            "headers": headers,
            "body_bytes": self.body.len(),
            "body_sha256": hex::encode(Sha256::digest(&self.body)),
        })
    }
}

/// How an echo shows a secret value.
pub const REDACTED: &str = "(redacted)";

/// A stand-in's answer: a status and a JSON body in the marketplace's envelope.
#[derive(Debug, Clone)]
pub struct SandboxAnswer {
    pub status: StatusCode,
    pub body: Value,
}

impl SandboxAnswer {
    pub fn new(status: StatusCode, body: Value) -> Self {
        SandboxAnswer { status, body }
    }
}

/// What a stand-in is given besides the request: the time, the token lifetime to grant, the
/// token book, and the request id to put in the envelope.
#[derive(Debug, Clone, Copy)]
pub struct SandboxContext<'a> {
    pub now: Timestamp,
    /// Lifetime of the access tokens a stand-in grants (`[sandbox] token_ttl_secs`).
    pub token_ttl_secs: u64,
    pub tokens: &'a TokenBook,
    pub request_id: &'a str,
}

impl<'a> SandboxContext<'a> {
    /// A context at `now` (Unix seconds) granting two-hour tokens, for a stand-in's tests.
    #[cfg(test)]
    pub fn at(now: u64, tokens: &'a TokenBook) -> Self {
        SandboxContext {
            now: Timestamp::from_secs(now),
            token_ttl_secs: 7200,
            tokens,
            request_id: "req-1",
        }
    }
}

/// Access or refresh token, minted apart so that one never passes for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            TokenKind::Access => "at",
            TokenKind::Refresh => "rt",
        }
    }
}

/// What the book knows of a token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Not in the sandbox's format: a token from elsewhere (a static one in the config, a real
    /// marketplace's). The sandbox cannot judge it and lets it pass.
    Foreign,
    Valid {
        expires_at: u64,
    },
    Expired {
        expires_at: u64,
    },
    /// In the sandbox's format but not minted by this sandbox for this app (altered, another
    /// app's, or from an earlier run).
    Unknown,
}

/// Mints and checks the sandbox's tokens. They are self-describing (expiry and a MAC under a
/// per-process key), so checking needs no memory; only spent refresh tokens are remembered,
/// which makes rotating refresh tokens single-use as the strictest marketplace does. Shared
/// across config reloads, so tokens survive a SIGHUP as they would at the marketplace.
pub struct TokenBook {
    key: [u8; 32],
    serial: AtomicU64,
    /// Access tokens minted before this serial count as expired (the sandbox's "expire every
    /// token now" control).
    expired_below: AtomicU64,
    spent: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBook").finish_non_exhaustive()
    }
}

/// Spent refresh tokens remembered at most; past it the oldest memory is dropped (a sandbox
/// refreshing every two hours reaches it after centuries).
const SPENT_LIMIT: usize = 100_000;

impl TokenBook {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        // A fixed key would let tokens outlive the process (or be forged); without randomness,
        // fall back to the clock, which still differs per run.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            key = Sha256::digest(nanos.to_le_bytes()).into();
        }
        TokenBook {
            key,
            serial: AtomicU64::new(1),
            expired_below: AtomicU64::new(0),
            spent: Mutex::new(HashSet::new()),
        }
    }

    /// A new token for `app` (the stand-in's name for the credential: app key, client id) that
    /// expires at `expires_at`: `{prefix}{expires_at}.{serial}.{mac}`.
    pub fn mint(&self, kind: TokenKind, prefix: &str, app: &str, expires_at: u64) -> String {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mac = self.mac(kind, app, expires_at, serial);
        format!("{prefix}{expires_at}.{serial}.{mac}")
    }

    /// What `token` is, for `app` at `now`.
    pub fn check(
        &self,
        kind: TokenKind,
        prefix: &str,
        app: &str,
        token: &str,
        now: Timestamp,
    ) -> TokenCheck {
        let Some(rest) = token.strip_prefix(prefix) else {
            return TokenCheck::Foreign;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(expires), Some(serial), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return TokenCheck::Unknown;
        };
        let (Ok(expires_at), Ok(serial)) = (expires.parse::<u64>(), serial.parse::<u64>()) else {
            return TokenCheck::Unknown;
        };
        let expected = self.mac(kind, app, expires_at, serial);
        if !bool::from(crate::secret::constant_time_eq(
            mac.as_bytes(),
            expected.as_bytes(),
        )) {
            return TokenCheck::Unknown;
        }
        let expired_early =
            kind == TokenKind::Access && serial < self.expired_below.load(Ordering::Relaxed);
        if now.secs() >= expires_at || expired_early {
            TokenCheck::Expired { expires_at }
        } else {
            TokenCheck::Valid { expires_at }
        }
    }

    /// Makes every access token minted so far expired, as if their time had run out: what a
    /// marketplace does when it revokes tokens early. Refresh tokens keep working.
    pub fn expire_access_tokens(&self) {
        self.expired_below
            .store(self.serial.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Spends `app`'s single-use token (a refresh token, an authorization code): true the first
    /// time, false ever after. Per app: two marketplaces' profiles may well be configured with
    /// the same demo text.
    pub fn spend(&self, app: &str, token: &str) -> bool {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent.len() >= SPENT_LIMIT {
            spent.clear();
        }
        spent.insert(format!("{app}\0{token}"))
    }

    fn mac(&self, kind: TokenKind, app: &str, expires_at: u64, serial: u64) -> String {
        // The key is 32 bytes: HMAC accepts any key length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(format!("{}\0{app}\0{expires_at}\0{serial}", kind.tag()).as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

impl Default for TokenBook {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    #[test]
    fn minted_tokens_check_until_they_expire_and_only_for_their_app_and_kind() {
        let book = TokenBook::new();
        let token = book.mint(TokenKind::Access, "T_", "app", 1_000);
        assert_eq!(
            book.check(TokenKind::Access, "T_", "app", &token, at(999)),
            TokenCheck::Valid { expires_at: 1_000 }
        );
        assert_eq!(
            book.check(TokenKind::Access, "T_", "app", &token, at(1_000)),
            TokenCheck::Expired { expires_at: 1_000 }
        );
        assert_eq!(
            book.check(TokenKind::Access, "T_", "other", &token, at(0)),
            TokenCheck::Unknown
        );
        assert_eq!(
            book.check(TokenKind::Refresh, "T_", "app", &token, at(0)),
            TokenCheck::Unknown
        );
        // A later expiry written into the token breaks its MAC.
        let stretched = token.replacen("1000.", "9000.", 1);
        assert_eq!(
            book.check(TokenKind::Access, "T_", "app", &stretched, at(0)),
            TokenCheck::Unknown
        );
        assert_eq!(
            book.check(TokenKind::Access, "T_", "app", "real-token", at(0)),
            TokenCheck::Foreign
        );
        // Another process's book does not know this one's tokens.
        assert_eq!(
            TokenBook::new().check(TokenKind::Access, "T_", "app", &token, at(0)),
            TokenCheck::Unknown
        );
    }

    #[test]
    fn expiring_access_tokens_early_spares_new_ones_and_refresh_tokens() {
        let book = TokenBook::new();
        let old = book.mint(TokenKind::Access, "T_", "app", 1_000);
        let refresh = book.mint(TokenKind::Refresh, "R_", "app", 1_000);
        book.expire_access_tokens();
        let new = book.mint(TokenKind::Access, "T_", "app", 1_000);
        let check = |kind, prefix, token: &str| book.check(kind, prefix, "app", token, at(1));
        assert_eq!(
            check(TokenKind::Access, "T_", &old),
            TokenCheck::Expired { expires_at: 1_000 }
        );
        assert_eq!(
            check(TokenKind::Access, "T_", &new),
            TokenCheck::Valid { expires_at: 1_000 }
        );
        assert_eq!(
            check(TokenKind::Refresh, "R_", &refresh),
            TokenCheck::Valid { expires_at: 1_000 }
        );
    }

    #[test]
    fn refresh_tokens_are_spent_once() {
        let book = TokenBook::new();
        assert!(book.spend("app", "rt-1"));
        assert!(!book.spend("app", "rt-1"));
        assert!(book.spend("app", "rt-2"));
        assert!(book.spend("another app", "rt-1"));
    }

    #[test]
    fn the_echo_never_shows_secret_headers_or_params() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tts-access-token", "TTP_secret".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let req = SandboxRequest {
            method: Method::POST,
            host: "h".into(),
            authority: "h".into(),
            path: "/p".into(),
            query: Some("app_secret=s3cr3t&a=b%20c".into()),
            headers,
            body: Bytes::from_static(b"{}"),
        };
        let echo = req
            .echo(&["X-TTS-Access-Token"], &["app_secret"])
            .to_string();
        assert!(
            !echo.contains("TTP_secret") && !echo.contains("s3cr3t"),
            "{echo}"
        );
        assert!(echo.contains(r#"["a","b c"]"#), "{echo}");
        assert!(echo.contains("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"));
    }
}
