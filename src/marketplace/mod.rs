//! The marketplace seam: the traits every marketplace implements ([`Marketplace`], [`Sign`],
//! [`TokenEndpoint`]) and [`MARKETPLACES`], the one list of them. Each marketplace lives in its
//! own folder; nothing outside that folder names it. A protocol several marketplaces share
//! (`iop/`: Lazada and AliExpress) has a folder of its own that names none of them, configured
//! by a policy value from each marketplace's folder.
//!
//! Adding one: a folder with a `static` value implementing [`Marketplace`] (its config table and
//! default hosts), a pure [`Sign`] and, if it has OAuth, a [`TokenEndpoint`]; then one line in
//! [`MARKETPLACES`].

pub mod aliexpress;
pub mod amazon;
pub mod ebay;
pub mod iop;
pub mod lazada;
pub mod shopee;
pub mod stand_in;
pub mod tiktok;
pub mod tool;
pub mod webhook;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};

use crate::clock::Timestamp;
use crate::secret::{Secret, SecretRef};
use crate::signing::{RequestHead, SignError};
pub use stand_in::{SandboxAnswer, SandboxContext, SandboxRequest};

/// Every marketplace signproxy knows, by config table name.
pub static MARKETPLACES: &[&dyn Marketplace] = &[
    &tiktok::TIKTOK,
    &ebay::EBAY,
    &shopee::SHOPEE,
    &lazada::LAZADA,
    &aliexpress::ALIEXPRESS,
    &amazon::AMAZON,
];

/// The marketplace whose config table is `id` (`tiktok`, `ebay`, ...).
pub fn by_id(id: &str) -> Option<&'static dyn Marketplace> {
    MARKETPLACES.iter().copied().find(|m| m.id() == id)
}

/// One marketplace: its config table and what a profile of it is made of.
pub trait Marketplace: Sync {
    /// The config table: `[tiktok.NAME]`, `[ebay.NAME]`, ...
    fn id(&self) -> &'static str;
    /// The hosts a profile serves when its table lists none.
    fn default_hosts(&self) -> &'static [&'static str];
    /// Builds a profile from its table (secrets resolved through `cx`).
    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError>;
    /// The commands it adds to the CLI, as `signproxy <id> <command>` (eBay's `create-key`).
    fn tools(&self) -> &'static [&'static dyn tool::Tool] {
        &[]
    }
}

/// What a marketplace makes of a profile table.
pub struct ProfileParts {
    /// The host patterns as written (the marketplace's defaults when the table lists none).
    pub hosts: Vec<String>,
    pub signer: Arc<dyn Sign>,
    pub token: TokenSource,
    /// The profile's offline stand-in for `run --sandbox` and `sandbox serve`.
    pub stand_in: Arc<dyn StandIn>,
    /// How the profile's secret verifies the webhooks the marketplace sends, when it sends any.
    pub webhook: Option<Arc<dyn webhook::Webhook>>,
}

/// What a marketplace needs from the config loader while it builds a profile.
pub struct ProfileContext<'a> {
    /// The profile's name: `default` in `[tiktok.default]`.
    pub name: &'a str,
    resolve: &'a dyn Fn(&str, &SecretRef) -> Result<Secret, ProfileError>,
    warn: Option<&'a dyn Fn(String)>,
}

impl<'a> ProfileContext<'a> {
    /// `resolve` reads a secret for a key of the table (`app_secret`).
    pub fn new(
        name: &'a str,
        resolve: &'a dyn Fn(&str, &SecretRef) -> Result<Secret, ProfileError>,
    ) -> Self {
        ProfileContext {
            name,
            resolve,
            warn: None,
        }
    }

    /// Where [`ProfileContext::warn`] sends its warnings: the config's, which `check` prints and
    /// `run` logs once logging is set up (a log line at load time would come before that).
    pub fn with_warnings(mut self, warn: &'a dyn Fn(String)) -> Self {
        self.warn = Some(warn);
        self
    }

    /// A problem with the profile that does not stop it from loading (a host known to answer
    /// every signature with an error, say). Without a sink, it is logged.
    pub fn warn(&self, message: String) {
        match self.warn {
            Some(warn) => warn(message),
            None => tracing::warn!(profile = %self.name, "{message}"),
        }
    }

    /// A profile's token: `access_token` (static) or `refresh_token` (managed, through the
    /// endpoint `managed` makes of the refresh token), not both; neither is none.
    pub fn token_source(
        &self,
        access_token: Option<SecretRef>,
        refresh_token: Option<SecretRef>,
        managed: impl FnOnce(Secret) -> Arc<dyn TokenEndpoint>,
    ) -> Result<TokenSource, ProfileError> {
        match (access_token, refresh_token) {
            (Some(_), Some(_)) => Err(ProfileError::new(
                "refresh_token",
                "set either access_token (a static token) or refresh_token (signproxy obtains and refreshes access tokens), not both",
            )),
            (Some(r), None) => Ok(TokenSource::Static(self.secret("access_token", &r)?)),
            (None, Some(r)) => Ok(TokenSource::Managed(managed(
                self.secret("refresh_token", &r)?,
            ))),
            (None, None) => Ok(TokenSource::None),
        }
    }

    /// The secret `source` names, for the table's `key`.
    pub fn secret(&self, key: &str, source: &SecretRef) -> Result<Secret, ProfileError> {
        (self.resolve)(key, source)
    }

    /// Deserializes the table into a marketplace's raw schema (unknown keys are errors); a type
    /// error names the key and never the value, which may be a secret.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        table: toml::Table,
    ) -> Result<T, ProfileError> {
        // A date-time reaches serde as its text here, and would pass for a literal secret: no
        // profile key takes one, so refuse it by type, without the value.
        if let Some(key) = table
            .iter()
            .find(|(_, v)| holds_datetime(v))
            .map(|(k, _)| k)
        {
            return Err(ProfileError::new(
                key.clone(),
                format!(
                    "expected {}; found a date-time (value not shown)",
                    crate::secret::SECRET_FORMS
                ),
            ));
        }
        table.try_into().map_err(|e: toml::de::Error| {
            // Display, not message(): only Display carries the "in `key`" context.
            let shown = e.to_string();
            let message = shown.trim_end();
            // toml appends "in `key`" to errors inside a table: the key, for the locator.
            let (message, key) = match message.rsplit_once("\nin `") {
                Some((text, key)) => (text, key.trim_end_matches('`').to_owned()),
                None => (message, String::new()),
            };
            ProfileError::new(key, crate::secret::without_quoted_strings(message))
        })
    }
}

fn holds_datetime(value: &toml::Value) -> bool {
    match value {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(items) => items.iter().any(holds_datetime),
        toml::Value::Table(table) => table.values().any(holds_datetime),
        _ => false,
    }
}

/// A problem with one key of a profile table (empty key: the table itself).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProfileError {
    pub key: String,
    pub message: String,
}

impl ProfileError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ProfileError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Whether a request would get the profile's access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenNeed {
    /// The request carries its own credential, or the endpoint takes none.
    None,
    AccessToken,
    /// A token the marketplace mints, with the access token, for this one operation (an
    /// operation that returns personal data): it is sent instead of the access token. The
    /// token manager mints it through [`TokenEndpoint::restricted_request`] and caches it by
    /// [`RestrictedResource::cache_key`].
    Restricted(RestrictedResource),
}

/// The operation a restricted token is minted for, as the marketplace names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RestrictedResource {
    pub method: String,
    /// The resource path the token covers: no host, no query.
    pub path: String,
    /// The kinds of personal data asked for, sorted and without repeats.
    pub data_elements: Vec<String>,
}

impl RestrictedResource {
    /// What a minted token is cached by: one token serves every request with the same method,
    /// path and data elements.
    pub fn cache_key(&self) -> String {
        format!(
            "{} {} [{}]",
            self.method,
            self.path,
            self.data_elements.join(",")
        )
    }
}

/// What a signer is given: the head as it will go upstream, the exact body bytes, the token to
/// add (if the request needs one), and the time. Nothing is read from a clock.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    pub head: &'a RequestHead,
    pub body: &'a [u8],
    pub access_token: Option<&'a Secret>,
    pub now: Timestamp,
}

/// A marketplace's request signing, pure: time comes in, nothing is read from a clock.
pub trait Sign: Send + Sync + fmt::Debug {
    /// How `check` names the scheme: "TikTok Shop HMAC-SHA256".
    fn scheme(&self) -> String;
    /// Whether signing would place an access token on this request.
    fn token_need(&self, head: &RequestHead) -> TokenNeed;
    /// The head to send: the marketplace's signature, timestamp and token set, the client's own
    /// signing artefacts replaced, everything else as it was.
    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError>;
    /// The string-to-sign or signature base with every secret masked. Only computed when asked
    /// (`sign --explain`, diagnostics): never on the proxy's hot path.
    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError>;
    /// False for a profile that refuses every request until it is completed (an eBay profile
    /// before `create-key`): signproxy then fetches no token for it, and readiness leaves it out.
    fn can_sign(&self) -> bool {
        true
    }
    /// When the signing credential stops working (eBay's signing keys last three years), for
    /// the start-up and `/readyz` warnings. Default: it does not expire.
    fn credential_expiry(&self) -> Option<CredentialExpiry> {
        None
    }
    /// The marketplace's code when an API answer says the signature (or its timestamp) was
    /// rejected: TikTok's 106001, eBay's 2151xx. Only small error answers are shown to it.
    fn rejection(&self, _status: StatusCode, _body: &[u8]) -> Option<String> {
        None
    }
    /// The doctor: whether the signature a client's own code put on `head` is right for its own
    /// timestamp and, if not, which known mistake reproduces it. `None`: not implemented for this
    /// marketplace yet.
    fn diagnose(&self, _head: &RequestHead, _body: &[u8], _now: Timestamp) -> Option<Diagnosis> {
        None
    }
}

/// A signing credential's end of life, as the marketplace stated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialExpiry {
    /// Unix seconds.
    pub at: u64,
    /// What expires: "signing key".
    pub what: &'static str,
    /// How to get a new one: "create one with `signproxy ebay create-key ...`".
    pub renew: String,
}

/// What the doctor found about a request someone else's code signed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnosis {
    pub valid: bool,
    /// One line for a person.
    pub verdict: String,
    /// The known mistake that reproduces the request's signature, when one does.
    pub mistake: Option<String>,
    /// What should have been signed, secrets masked.
    pub expected: String,
    /// What the client signed instead, reconstructed from the mistake, secrets masked.
    pub signed: Option<String>,
    /// Further findings (timestamp in milliseconds, stale, another app's key, ...).
    pub notes: Vec<String>,
}

impl Diagnosis {
    pub fn invalid(verdict: &str, expected: String, notes: Vec<String>) -> Diagnosis {
        Diagnosis {
            valid: false,
            verdict: verdict.to_owned(),
            mistake: None,
            expected,
            signed: None,
            notes,
        }
    }
}

/// A signed head with the account of how it was signed: what `sign --explain` prints.
#[derive(Debug, Clone)]
pub struct Explained {
    pub head: RequestHead,
    pub explanation: String,
}

/// Signs and explains one input (for `sign --explain`, diagnostics and tests; the proxy only
/// signs).
pub fn sign_explained(signer: &dyn Sign, input: SignInput<'_>) -> Result<Explained, SignError> {
    Ok(Explained {
        head: signer.sign(input)?,
        explanation: signer.explain(input)?,
    })
}

/// A marketplace's offline stand-in, for one profile's credentials: it verifies what arrives by
/// the marketplace's rules, with its own verifier (parse, recompute, compare; never the signer),
/// and answers in the marketplace's envelopes and codes. It serves the token endpoint too.
pub trait StandIn: Send + Sync + fmt::Debug {
    /// Whether the request names this profile's app (TikTok's `app_key`, eBay's signature key
    /// or client id): of several profiles serving a host, the one that claims a request answers.
    fn claims(&self, req: &SandboxRequest) -> bool;
    /// Whether the request is for this profile's token endpoint, which may live on a host the
    /// profile does not sign for.
    fn is_token_request(&self, req: &SandboxRequest) -> bool;
    /// The hosts of the token endpoint (for `check` and `sandbox serve`).
    fn token_hosts(&self) -> Vec<String>;
    /// The marketplace's answer to `req`.
    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer;
}

/// A token the marketplace granted. Times are absolute Unix seconds.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: Secret,
    pub expires_at: u64,
    /// Rotating refresh tokens (TikTok's): the new one replaces the old.
    pub refresh_token: Option<Secret>,
    pub refresh_expires_at: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("the token endpoint refused: {code} {message}{hint}")]
    Rejected {
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("the token endpoint's answer is not understood (HTTP {status}): {reason}")]
    Malformed { status: u16, reason: String },
    #[error("cannot build the token request: {0}")]
    Request(String),
}

/// A marketplace's OAuth, as pure protocol: the grant request out, the grant in, and whether an
/// API answer says the access token expired. The token manager does the I/O.
pub trait TokenEndpoint: Send + Sync + fmt::Debug {
    /// How `check` names it: "managed access tokens (refresh token)".
    fn describe(&self) -> &'static str;
    /// The refresh token the config starts from, if the grant uses one.
    fn initial_refresh_token(&self) -> Option<&Secret>;
    /// A fingerprint of the configured credential: stored tokens descend from it, and a new
    /// authorization in the config (a different fingerprint) starts afresh.
    fn seed(&self) -> String;
    /// A digest of the whole configured credential, secrets included (never shown): a reload
    /// keeps a profile's token state only while this is unchanged.
    fn config_digest(&self) -> String;
    /// The request for a new access token, with the current refresh token.
    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError>;
    /// The grant in the endpoint's answer.
    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError>;
    /// Whether an API answer means "this access token has expired".
    fn is_expired_answer(&self, status: StatusCode, body: &[u8]) -> bool;
    /// Whether a rotated refresh token keeps the expiry of the one it replaces (its lifetime is
    /// not renewed by refreshing), so the earlier of the stored and the granted expiry holds.
    /// Default: each grant states the new token's own expiry.
    fn refresh_expiry_carries_over(&self) -> bool {
        false
    }
    /// How long before the access token's expiry to refresh it (the marketplace's advice; half
    /// the token's lifetime when that is shorter).
    fn refresh_margin_secs(&self) -> u64 {
        300
    }
    /// A rotated refresh token in an answer that is otherwise no usable grant (no access token,
    /// a token already expired): the old one may be spent by now, so this one must be kept.
    /// Default: refresh tokens do not rotate.
    fn salvage_refresh_token(&self, _body: &[u8]) -> Option<Secret> {
        None
    }
    /// The request for a token of the application itself (OAuth client credentials, no
    /// seller's authorization), for marketplace commands that call the marketplace as the app
    /// (eBay's Key Management API). Default: the marketplace has no such grant.
    fn application_grant_request(
        &self,
        _now: Timestamp,
    ) -> Option<Result<Request<Bytes>, GrantError>> {
        None
    }
    /// The request that mints a restricted token for `resource` on the API host `authority`,
    /// authorized by the profile's `access_token` (see [`TokenNeed::Restricted`]). Default: the
    /// marketplace has no restricted tokens.
    fn restricted_request(
        &self,
        _authority: &str,
        _resource: &RestrictedResource,
        _access_token: &Secret,
    ) -> Result<Request<Bytes>, GrantError> {
        Err(GrantError::Request(
            "this marketplace mints no restricted tokens".to_owned(),
        ))
    }
    /// The restricted token in the mint's answer (`refresh_token` stays `None`).
    fn parse_restricted(
        &self,
        status: StatusCode,
        _body: &[u8],
        _now: Timestamp,
    ) -> Result<Grant, GrantError> {
        Err(GrantError::Malformed {
            status: status.as_u16(),
            reason: "this marketplace mints no restricted tokens".to_owned(),
        })
    }
}

/// The non-empty string at `path` (object keys) in a JSON answer: where a marketplace's token
/// answer puts its rotated refresh token, for [`TokenEndpoint::salvage_refresh_token`].
pub fn json_secret_at(body: &[u8], path: &[&str]) -> Option<Secret> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let found = path.iter().try_fold(&value, |v, key| v.get(key))?;
    found
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|s| Secret::new(s.to_owned()))
}

/// Where a profile's access token comes from. Never grows: a new marketplace brings a
/// [`TokenEndpoint`], not a variant.
#[derive(Debug, Clone)]
pub enum TokenSource {
    None,
    /// A token in the config, used as is.
    Static(Secret),
    /// signproxy obtains, refreshes and persists tokens through this endpoint.
    Managed(Arc<dyn TokenEndpoint>),
}

impl TokenSource {
    pub fn is_managed(&self) -> bool {
        matches!(self, TokenSource::Managed(_))
    }

    /// Whether an API answer means "this access token has expired" (managed tokens only: a
    /// static one cannot be renewed anyway).
    pub fn is_expired_answer(&self, status: StatusCode, body: &[u8]) -> bool {
        match self {
            TokenSource::Managed(endpoint) => endpoint.is_expired_answer(status, body),
            TokenSource::None | TokenSource::Static(_) => false,
        }
    }

    /// The same source: a reload keeps the token state of profiles for which this holds.
    pub fn same_as(&self, other: &TokenSource) -> bool {
        match (self, other) {
            (TokenSource::None, TokenSource::None) => true,
            (TokenSource::Static(a), TokenSource::Static(b)) => a == b,
            (TokenSource::Managed(a), TokenSource::Managed(b)) => {
                a.config_digest() == b.config_digest()
            }
            _ => false,
        }
    }
}

/// A hex SHA-256 prefix over `parts` joined by NUL: a seed that changes with any part. The
/// format is what `tokens.json` files already hold: changing it would orphan stored (rotated)
/// refresh tokens.
pub fn fingerprint(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update([0u8]);
        }
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_keep_the_stored_format() {
        // sha256("tiktok\0key\0rt")[..12], as earlier releases wrote it into tokens.json.
        use sha2::{Digest, Sha256};
        let expected = hex::encode(&Sha256::digest(b"tiktok\0key\0rt")[..12]);
        assert_eq!(fingerprint(&["tiktok", "key", "rt"]), expected);
    }

    #[test]
    fn every_marketplace_is_listed_once_by_its_table() {
        let ids: Vec<&str> = MARKETPLACES.iter().map(|m| m.id()).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(ids.len(), unique.len(), "{ids:?}");
        for id in ids {
            assert_eq!(by_id(id).map(|m| m.id()), Some(id));
            assert!(!by_id(id)
                .map(|m| m.default_hosts())
                .unwrap_or_default()
                .is_empty());
        }
        assert!(by_id("nope").is_none());
    }
}
