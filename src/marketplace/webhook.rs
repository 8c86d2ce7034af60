//! The inbound half of the seam: how a marketplace verifies the webhooks it sends. A profile
//! offers a [`Webhook`]; each `[[inbound.NAME.routes]]` entry becomes a [`WebhookRoute`] through
//! it. Verification is pure (raw body and headers in, an event id or a refusal out); the inbound
//! module does the I/O: listening, dedupe, forwarding, and fetching keys a verifier names.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::{ProfileContext, ProfileError};

/// Why a webhook is refused. Never carries a secret or a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature header.
    Unsigned,
    /// A signature that does not verify.
    Forged,
    /// A signature or body that cannot be read (not hex, not JSON, no event id).
    Malformed,
}

impl Refusal {
    /// How logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Forged => "forged",
            Refusal::Malformed => "malformed",
        }
    }
}

/// A public key a verifier asked for by id (eBay's `kid`), as the key service answered it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key's SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// The digest the key service names for it (`SHA1`).
    pub digest: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A self-answered request (eBay's endpoint challenge): status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
}

/// A test event as `signproxy webhook send` sends it to a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEvent {
    pub method: http::Method,
    /// The query to add to the route's path (eBay's `challenge_code=...`).
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A marketplace's webhook verification for one profile's credentials.
pub trait Webhook: Send + Sync + fmt::Debug {
    /// The route for one `[[inbound.NAME.routes]]` entry: `fields` are its keys besides `path`,
    /// `profile` and `deadline_ms` (Shopee's `callback_url`, eBay's `verification_token` and
    /// `endpoint`); unknown keys are errors.
    fn route(
        &self,
        fields: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<Arc<dyn WebhookRoute>, ProfileError>;
}

/// One configured route's verifier and answers.
pub trait WebhookRoute: Send + Sync + fmt::Debug {
    /// The id of the key this request is signed with, when verifying needs a key fetched by id:
    /// `Ok(None)` when it needs none. An `Err` refuses the request before any fetch.
    fn key_id(&self, _headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        Ok(None)
    }
    /// Verifies the raw body against the headers (with the key [`WebhookRoute::key_id`] named,
    /// fetched); the event id to de-duplicate on, or why not. Compares in constant time.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        key: Option<&PublicKey>,
    ) -> Result<String, Refusal>;
    /// The headers carrying the marketplace's signature: removed before the app sees the event.
    fn signature_headers(&self) -> &'static [&'static str];
    /// What the marketplace expects as the answer to a refused request.
    fn refusal_status(&self, refusal: Refusal) -> StatusCode;
    /// What acknowledges a duplicate, so the marketplace stops retrying.
    fn duplicate_status(&self) -> StatusCode {
        StatusCode::OK
    }
    /// How long the app may take before signproxy answers 504 (just under the marketplace's own
    /// limit).
    fn default_deadline(&self) -> Duration;
    /// A request signproxy answers itself instead of verifying and forwarding (eBay's
    /// `GET ?challenge_code=`): `None` for everything else.
    fn self_answer(&self, _method: &http::Method, _query: Option<&str>) -> Option<Answer> {
        None
    }
    /// The request that fetches key `kid` with the profile's application token, and the key in
    /// its answer: only for marketplaces whose [`WebhookRoute::key_id`] names keys.
    fn key_request(
        &self,
        _kid: &str,
        _app_token: &crate::secret::Secret,
    ) -> Result<http::Request<bytes::Bytes>, String> {
        Err("this marketplace signs webhooks without fetched keys".to_owned())
    }
    /// A test event of `event_type` signed as the marketplace signs it, with the signature
    /// spoiled when `forged`. `unique` makes its event id new; `now_secs` is its timestamp.
    fn test_event(
        &self,
        _event_type: &str,
        _unique: u64,
        _now_secs: u64,
        _forged: bool,
    ) -> Result<TestEvent, String> {
        Err("signproxy cannot make test events for this marketplace".to_owned())
    }
    /// The key in the key service's answer.
    fn parse_key(&self, _status: StatusCode, _body: &[u8]) -> Result<PublicKey, String> {
        Err("this marketplace signs webhooks without fetched keys".to_owned())
    }
}

/// The lowercase or uppercase hex in `text` as exactly `len` bytes, or `None`.
pub fn hex_exact(text: &str, len: usize) -> Option<Vec<u8>> {
    let bytes = hex::decode(text.trim()).ok()?;
    (bytes.len() == len).then_some(bytes)
}

/// Whether the HMAC-SHA256 of `parts` (concatenated) under `key` equals `given`, in constant
/// time.
pub fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], given: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    // verify_slice compares in constant time (length first).
    mac.verify_slice(given).is_ok()
}

/// The hex HMAC-SHA256 of `parts` (concatenated) under `key`: what test events are signed with.
pub fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// A signature spoiled for a forged test event: its first hex digit changed.
pub fn spoil(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == '0' { '1' } else { '0' };
    }
    chars.into_iter().collect()
}
