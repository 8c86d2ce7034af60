//! eBay's offline stand-in: checks the access token, then verifies the RFC 9421 signature and
//! RFC 9530 Content-Digest by eBay's rules with its own verifier (the signature base rebuilt
//! from what arrived, never by the signer), answers with eBay's `errors[]` and errorIds, and
//! serves `/identity/v1/oauth2/token` (client credentials, refresh token, authorization code).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::keys::{PrivateKey, Verified};
use super::{CREATED_MAX_AGE_SECS, CREATED_MAX_AHEAD_SECS};
use crate::marketplace::stand_in::{TokenCheck, TokenKind};
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::{constant_time_eq, Secret};

const DEFAULT_TOKEN_PATH: &str = "/identity/v1/oauth2/token";
/// eBay's Key Management API: `POST` makes a signing key.
const KEY_MANAGEMENT_PATH: &str = "/developer/key_management/v1/signing_key";
/// eBay keys last three years.
const KEY_LIFETIME_SECS: u64 = 94_608_000;
/// eBay's tokens look like `v^1.1#i^1#...`: the characters that need form-encoding included.
const ACCESS_PREFIX: &str = "v^1.1#i^1#sandbox#";
const REFRESH_PREFIX: &str = "v^1.1#i^1#sandboxrt#";
/// eBay's refresh tokens live about 18 months.
const REFRESH_TTL_SECS: u64 = 47_304_000;
const WITH_BODY: [&str; 5] = [
    "content-digest",
    "x-ebay-signature-key",
    "@method",
    "@path",
    "@authority",
];

/// The stand-in for one eBay profile: the key it verifies with and the JWE that names it (none
/// before `create-key`), and the app's OAuth client when the profile has one.
#[derive(Debug)]
pub struct EbayStandIn {
    pub signing: Option<(Arc<PrivateKey>, Secret)>,
    pub client: Option<OAuthClient>,
    /// Where the token endpoint lives: host and path of the profile's `token_url`.
    pub token_host: String,
    pub token_path: String,
}

/// The app credentials the token endpoint checks.
#[derive(Debug)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Secret,
}

impl EbayStandIn {
    /// `token_url` is the profile's (or eBay's default for its hosts).
    pub fn new(
        signing: Option<(Arc<PrivateKey>, Secret)>,
        client: Option<OAuthClient>,
        token_url: &str,
    ) -> Self {
        let uri = token_url.parse::<http::Uri>().ok();
        EbayStandIn {
            signing,
            client,
            token_host: uri
                .as_ref()
                .and_then(|u| u.host())
                .unwrap_or("api.ebay.com")
                .to_ascii_lowercase(),
            token_path: uri
                .as_ref()
                .map(|u| u.path().to_owned())
                .unwrap_or_else(|| DEFAULT_TOKEN_PATH.to_owned()),
        }
    }

    fn jwe(&self) -> Option<&str> {
        self.signing.as_ref().map(|(_, jwe)| jwe.expose())
    }

    /// The name tokens are minted under: the client id, or the key for a profile without one.
    fn app(&self) -> String {
        match &self.client {
            Some(c) => c.client_id.clone(),
            None => format!(
                "jwe:{}",
                hex::encode(&Sha256::digest(self.jwe().unwrap_or_default())[..8])
            ),
        }
    }
}

impl StandIn for EbayStandIn {
    fn claims(&self, req: &SandboxRequest) -> bool {
        if self.is_token_request(req) {
            return basic_credentials(req)
                .is_some_and(|(id, _)| self.client.as_ref().is_some_and(|c| c.client_id == id));
        }
        match (req.header("x-ebay-signature-key"), self.jwe()) {
            (Some(given), Some(jwe)) => {
                bool::from(constant_time_eq(given.as_bytes(), jwe.as_bytes()))
            }
            _ => false,
        }
    }

    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.path == self.token_path
    }

    fn token_hosts(&self) -> Vec<String> {
        vec![self.token_host.clone()]
    }

    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        if self.is_token_request(req) {
            return self.grant(req, cx);
        }
        let reply = if req.path == KEY_MANAGEMENT_PATH && req.method == Method::POST {
            self.create_signing_key(req, cx)
        } else {
            self.api(req, cx)
        };
        match reply {
            Ok(body) => SandboxAnswer::new(StatusCode::OK, body),
            Err(e) => SandboxAnswer::new(
                e.status,
                json!({"errors": [{
                    "errorId": e.error_id,
                    "domain": "ACCESS",
                    "category": "REQUEST",
                    "message": e.message,
                    "longMessage": e.long_message,
                }]}),
            ),
        }
    }
}

/// The operating system's randomness (through ring) for the `rsa` crate's key generation. Its
/// infallible fill cannot report a failure: it records one, and the key made is thrown away.
struct SystemRng {
    random: ring::rand::SystemRandom,
    failed: bool,
}

impl rsa::rand_core::RngCore for SystemRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.try_fill_bytes(dest).is_err() {
            self.failed = true;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        ring::rand::SecureRandom::fill(&self.random, dest).map_err(|_| {
            rsa::rand_core::Error::from(
                std::num::NonZeroU32::new(rsa::rand_core::Error::CUSTOM_START)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )
        })
    }
}

impl rsa::rand_core::CryptoRng for SystemRng {}

/// What a token this sandbox did not grant (not in its format) gets: the API calls take it, for
/// code that brings its own; the Key Management API does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    Accepted,
    Refused,
}

/// One of eBay's errors.
struct Refusal {
    status: StatusCode,
    error_id: u32,
    message: &'static str,
    long_message: String,
}

fn refuse(
    status: StatusCode,
    error_id: u32,
    message: &'static str,
    long_message: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        error_id,
        message,
        long_message: long_message.into(),
    }
}

/// Signature errors: eBay answers them with 403 (seen for 215120).
fn signature_error(error_id: u32, long_message: impl Into<String>) -> Refusal {
    let message = match error_id {
        215_001 => "Missing x-ebay-signature-key header",
        215_105 => "Content-Digest does not match the body",
        215_110 => "Missing Content-Digest header",
        215_111 => "Missing Signature header",
        215_112 => "Missing Signature-Input header",
        215_113 => "Invalid created in Signature-Input",
        215_114 => "Signature created time is out of range",
        215_116 => "Invalid x-ebay-signature-key header",
        _ => "Signature validation failed",
    };
    refuse(StatusCode::FORBIDDEN, error_id, message, long_message)
}

impl EbayStandIn {
    fn api(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, Refusal> {
        self.check_token(req, cx, Foreign::Accepted)?;
        self.check_signature(req, cx.now.secs())?;
        let mut body = sample(&req.path);
        if let Value::Object(fields) = &mut body {
            fields.insert(
                "sandbox".to_owned(),
                req.echo(&["authorization", "x-ebay-api-iaf-token"], &[]),
            );
        }
        Ok(body)
    }

    /// eBay's Key Management API, offline (`signproxy ebay create-key` under the sandbox): a
    /// key made now, for an access token this sandbox granted. It is verified later only if the
    /// config takes it up, as with eBay.
    fn create_signing_key(
        &self,
        req: &SandboxRequest,
        cx: &SandboxContext<'_>,
    ) -> Result<Value, Refusal> {
        // As eBay: only an application token of this app, which this sandbox granted.
        self.check_token(req, cx, Foreign::Refused)?;
        let asked: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let cipher = asked["signingKeyCipher"].as_str().unwrap_or_default();
        let unmade = |why: &str| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                35_001,
                "Internal error",
                format!("the sandbox could not make the key: {why}"),
            )
        };
        let random = ring::rand::SystemRandom::new();
        let der = match cipher {
            "ED25519" => ring::signature::Ed25519KeyPair::generate_pkcs8(&random)
                .map_err(|_| unmade("no randomness"))?
                .as_ref()
                .to_vec(),
            "RSA" => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let mut rng = SystemRng {
                    random: random.clone(),
                    failed: false,
                };
                let key =
                    rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| unmade(&e.to_string()))?;
                if rng.failed {
                    return Err(unmade("no randomness"));
                }
                key.to_pkcs8_der()
                    .map_err(|e| unmade(&e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
            _ => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    35_002,
                    "Invalid signingKeyCipher",
                    "signingKeyCipher must be ED25519 or RSA",
                ))
            }
        };
        let mut id = [0u8; 8];
        let mut jwe = [0u8; 24];
        ring::rand::SecureRandom::fill(&random, &mut id).map_err(|_| unmade("no randomness"))?;
        ring::rand::SecureRandom::fill(&random, &mut jwe).map_err(|_| unmade("no randomness"))?;
        let now = cx.now.secs();
        Ok(json!({
            "creationTime": now,
            "expirationTime": now + KEY_LIFETIME_SECS,
            "jwe": format!("sandbox-jwe.{}", hex::encode(jwe)),
            "privateKey": STANDARD.encode(der),
            "signingKeyCipher": cipher,
            "signingKeyId": format!("sandbox-{}", hex::encode(id)),
        }))
    }

    /// The token where eBay looks for it: Trading's header, Post-Order's `IAF`, else `Bearer`.
    fn check_token(
        &self,
        req: &SandboxRequest,
        cx: &SandboxContext<'_>,
        foreign: Foreign,
    ) -> Result<(), Refusal> {
        let presented = if req.path.starts_with("/ws/api.dll") {
            req.header("x-ebay-api-iaf-token")
        } else {
            let scheme = if req.path.starts_with("/post-order/") {
                "IAF "
            } else {
                "Bearer "
            };
            req.header("authorization")
                .and_then(|a| a.strip_prefix(scheme).map(str::to_owned))
        };
        let unauthorized = StatusCode::UNAUTHORIZED;
        let Some(token) = presented.filter(|t| !t.trim().is_empty()) else {
            return Err(refuse(
                unauthorized,
                1002,
                "Missing access token",
                "Access token is required (give the profile client_id + client_secret, or access_token)",
            ));
        };
        match cx.tokens.check(
            TokenKind::Access,
            ACCESS_PREFIX,
            &self.app(),
            &token,
            cx.now,
        ) {
            TokenCheck::Valid { .. } => Ok(()),
            TokenCheck::Foreign if foreign == Foreign::Accepted => Ok(()),
            TokenCheck::Foreign => Err(refuse(
                unauthorized,
                1001,
                "Invalid access token",
                "Invalid access token. The Key Management API takes an application token this \
                 sandbox granted to this app (client_id + client_secret in the profile)",
            )),
            TokenCheck::Expired { expires_at } => Err(refuse(
                unauthorized,
                1001,
                "Invalid access token",
                format!("Invalid access token. The token expired at {expires_at}: refresh it"),
            )),
            TokenCheck::Unknown => Err(refuse(
                unauthorized,
                1001,
                "Invalid access token",
                "Invalid access token. This sandbox did not grant it to this app",
            )),
        }
    }

    fn check_signature(&self, req: &SandboxRequest, now: u64) -> Result<(), Refusal> {
        let Some(jwe) = req.header("x-ebay-signature-key") else {
            return Err(signature_error(
                215_001,
                "Add the x-ebay-signature-key header: the profile's jwe",
            ));
        };
        let Some((key, own_jwe)) = &self.signing else {
            return Err(signature_error(
                215_116,
                "The x-ebay-signature-key is not the jwe of any eBay profile this sandbox knows",
            ));
        };
        if !bool::from(constant_time_eq(
            jwe.as_bytes(),
            own_jwe.expose().as_bytes(),
        )) {
            return Err(signature_error(
                215_116,
                "The x-ebay-signature-key is not the jwe of any eBay profile this sandbox knows",
            ));
        }
        let Some(input) = req.header("signature-input") else {
            return Err(signature_error(
                215_112,
                "Add Signature-Input: sig1=(...);created=UNIX_SECONDS",
            ));
        };
        let Some(signature) = req.header("signature") else {
            return Err(signature_error(215_111, "Add Signature: sig1=:BASE64:"));
        };
        let parsed = parse_signature_input(&input).map_err(|m| signature_error(215_120, m))?;
        let created = parsed
            .created
            .clone()
            .map_err(|m| signature_error(215_113, m))?;
        if created > now.saturating_add(CREATED_MAX_AHEAD_SECS)
            || created.saturating_add(CREATED_MAX_AGE_SECS) < now
        {
            return Err(signature_error(
                215_114,
                format!("created={created} is {} s from the server's time {now}: sign with the current time", now.abs_diff(created)),
            ));
        }
        let required: &[&str] = if req.body.is_empty() {
            &WITH_BODY[1..]
        } else {
            &WITH_BODY
        };
        if parsed.components != required {
            return Err(signature_error(
                215_120,
                format!(
                    "Signature-Input must cover exactly ({}) in this order; it covers ({})",
                    quoted(required),
                    quoted(&parsed.components)
                ),
            ));
        }
        let digest_header = req.header("content-digest");
        if !req.body.is_empty() {
            let Some(digest) = &digest_header else {
                return Err(signature_error(
                    215_110,
                    "A request with a body needs Content-Digest: sha-256=:BASE64:",
                ));
            };
            let expected = format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(&req.body)));
            if digest.trim() != expected {
                return Err(signature_error(
                    215_105,
                    format!(
                        "Content-Digest is not the SHA-256 of the {} body bytes that arrived",
                        req.body.len()
                    ),
                ));
            }
        }
        let Some(sig) = signature
            .strip_prefix(&format!("{}=:", parsed.label))
            .and_then(|s| s.strip_suffix(':'))
            .and_then(|b64| STANDARD.decode(b64).ok())
        else {
            return Err(signature_error(
                215_121,
                format!(
                    "Signature must be {}=:BASE64: with the label of Signature-Input",
                    parsed.label
                ),
            ));
        };
        let base = signature_base(req, &parsed, &jwe, digest_header.as_deref());
        match key.verify(base.as_bytes(), &sig) {
            Verified::Yes => Ok(()),
            Verified::Pss => Err(signature_error(
                215_122,
                "Signature validation failed: made with RSA-PSS; eBay takes RSASSA-PKCS1-v1_5 with SHA-256",
            )),
            Verified::No => Err(signature_error(
                215_120,
                "Signature validation failed (`signproxy doctor` names the mistake)",
            )),
        }
    }

    fn grant(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        let oauth_error = |status: StatusCode, error: &str, description: &str| {
            SandboxAnswer::new(
                status,
                json!({"error": error, "error_description": description}),
            )
        };
        if req.method != Method::POST {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            );
        }
        let client_ok = match (&self.client, basic_credentials(req)) {
            (Some(c), Some((id, secret))) => bool::from(
                constant_time_eq(id.as_bytes(), c.client_id.as_bytes())
                    & constant_time_eq(secret.as_bytes(), c.client_secret.expose().as_bytes()),
            ),
            _ => false,
        };
        if !client_ok {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        let form = req.form();
        let field = |key: &str| {
            form.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let app = self.app();
        let now = cx.now.secs();
        let expires_at = now.saturating_add(cx.token_ttl_secs);
        let access = cx
            .tokens
            .mint(TokenKind::Access, ACCESS_PREFIX, &app, expires_at);
        let body = match field("grant_type") {
            "client_credentials" => json!({
                "access_token": access,
                "expires_in": cx.token_ttl_secs,
                "token_type": "Application Access Token",
            }),
            "refresh_token" => {
                let presented = field("refresh_token");
                let known = match cx.tokens.check(
                    TokenKind::Refresh,
                    REFRESH_PREFIX,
                    &app,
                    presented,
                    cx.now,
                ) {
                    TokenCheck::Foreign => !presented.is_empty(),
                    TokenCheck::Valid { .. } => true,
                    TokenCheck::Expired { .. } | TokenCheck::Unknown => false,
                };
                if !known {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the provided authorization refresh token is invalid or was issued to another client",
                    );
                }
                // eBay's refresh tokens are long-lived and not rotated.
                json!({
                    "access_token": access,
                    "expires_in": cx.token_ttl_secs,
                    "token_type": "User Access Token",
                })
            }
            "authorization_code" => {
                let code = field("code");
                if code.is_empty() || !cx.tokens.spend(&app, &format!("code\0{code}")) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the provided authorization grant code is invalid or was issued to another client",
                    );
                }
                json!({
                    "access_token": access,
                    "expires_in": cx.token_ttl_secs,
                    "refresh_token": cx.tokens.mint(TokenKind::Refresh, REFRESH_PREFIX, &app, now.saturating_add(REFRESH_TTL_SECS)),
                    "refresh_token_expires_in": REFRESH_TTL_SECS,
                    "token_type": "User Access Token",
                })
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "grant type in request is not supported by the authorization server",
                )
            }
        };
        SandboxAnswer::new(StatusCode::OK, body)
    }
}

/// `Authorization: Basic base64(id:secret)`, decoded.
fn basic_credentials(req: &SandboxRequest) -> Option<(String, String)> {
    let header = req.header("authorization")?;
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Signature-Input as eBay reads it: one label, its components, and `created`.
#[derive(Debug)]
struct SignatureInput {
    label: String,
    components: Vec<String>,
    /// `created`, or why it is unusable.
    created: Result<u64, String>,
    /// The text after `label=`, verbatim: the `@signature-params` value.
    params: String,
}

fn parse_signature_input(text: &str) -> Result<SignatureInput, String> {
    let text = text.trim();
    let (label, params) = text
        .split_once('=')
        .ok_or("Signature-Input must be sig1=(...);created=...")?;
    let inner = params
        .strip_prefix('(')
        .and_then(|p| p.split_once(')'))
        .ok_or("Signature-Input's components must be a parenthesised list")?;
    let (list, rest) = inner;
    let components = list
        .split_whitespace()
        .map(|c| {
            c.strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .map(str::to_owned)
                .ok_or_else(|| format!("component {c} is not a quoted name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut created = Err("Signature-Input has no created parameter".to_owned());
    for param in rest.split(';').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("created", value)) => {
                created = value
                    .parse::<u64>()
                    .map_err(|_| format!("created={value} is not Unix seconds"));
            }
            _ => {
                return Err(format!(
                    "unexpected Signature-Input parameter `{param}`: eBay takes created only"
                ))
            }
        }
    }
    Ok(SignatureInput {
        label: label.trim().to_owned(),
        components,
        created,
        params: params.to_owned(),
    })
}

/// RFC 9421 §2.5 from the request as it arrived: one `"name": value` line per covered
/// component, then `"@signature-params"`, joined by LF without a trailing one.
fn signature_base(
    req: &SandboxRequest,
    input: &SignatureInput,
    jwe: &str,
    digest: Option<&str>,
) -> String {
    let authority = req.authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(":443").unwrap_or(&authority);
    let path = if req.path.is_empty() { "/" } else { &req.path };
    let mut lines: Vec<String> = input
        .components
        .iter()
        .map(|c| {
            let value = match c.as_str() {
                "content-digest" => digest.unwrap_or_default().trim(),
                "x-ebay-signature-key" => jwe,
                "@method" => req.method.as_str(),
                "@path" => path,
                "@authority" => authority,
                _ => "",
            };
            format!("\"{c}\": {value}")
        })
        .collect();
    lines.push(format!("\"@signature-params\": {}", input.params));
    lines.join("\n")
}

fn quoted(components: &[impl AsRef<str>]) -> String {
    components
        .iter()
        .map(|c| format!("\"{}\"", c.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A plausible answer for a few common endpoints; `{}` for the rest.
fn sample(path: &str) -> Value {
    let money = |value: &str| json!({"value": value, "currency": "GBP"});
    match path {
        "/sell/finances/v1/seller_funds_summary" => json!({
            "totalFunds": money("1250.00"),
            "processingFunds": money("150.00"),
            "availableFunds": money("1000.00"),
            "fundsOnHold": money("100.00"),
        }),
        "/sell/fulfillment/v1/order" => json!({
            "href": "https://api.ebay.com/sell/fulfillment/v1/order?limit=50&offset=0",
            "total": 1,
            "limit": 50,
            "offset": 0,
            "orders": [{
                "orderId": "12-34567-89012",
                "orderFulfillmentStatus": "NOT_STARTED",
                "orderPaymentStatus": "PAID",
                "pricingSummary": {"total": money("19.99")},
                "lineItems": [{"lineItemId": "10000000000001", "title": "Sandbox T-shirt", "quantity": 1}]
            }]
        }),
        _ => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::marketplace::ebay::keys::load_private_key;
    use crate::marketplace::stand_in::TokenBook;
    use bytes::Bytes;
    use http::HeaderMap;

    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
    /// eBay's verification-service vector (ebay.md): its JWE, body, created and signature.
    const VECTOR_JWE: &str = "eyJ6aXAiOiJERUYiLCJlbmMiOiJBMjU2R0NNIiwidGFnIjoiSXh2dVRMb0FLS0hlS0Zoa3BxQ05CUSIsImFsZyI6IkEyNTZHQ01LVyIsIml2IjoiaFd3YjNoczk2QzEyOTNucCJ9.2o02pR9SoTF4g_5qRXZm6tF4H52TarilIAKxoVUqjd8.3qaF0KJN-rFHHm_P.AMUAe9PPduew09mANIZ-O_68CCuv6EIx096rm9WyLZnYz5N1WFDQ3jP0RBkbaOtQZHImMSPXIHVaB96RWshLuJsUgCKmTAwkPVCZv3zhLxZVxMXtPUuJ-ppVmPIv0NzznWCOU5Kvb9Xux7ZtnlvLXgwOFEix-BaWNomUAazbsrUCbrp514GIea3butbyxXLNi6R9TJUNh8V2uan-optT1MMyS7eMQnVGL5rYBULk.9K5ucUqAu0DqkkhgubsHHw";
    const VECTOR_CREATED: u64 = 1_658_440_308;
    const VECTOR_INPUT: &str = r#"sig1=("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#;
    const VECTOR_SIGNATURE: &str = "sig1=:ZMUpAejnqrt6POSx02ltx3cT9YODV2r+Cem/BKOagDSfztKOtCsjP/MxZqmY+FVJ3/8E4BL76T9Fjty8oJnsAw==:";
    const VECTOR_DIGEST: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";

    fn stand_in() -> EbayStandIn {
        EbayStandIn::new(
            Some((
                Arc::new(load_private_key(ED25519_PEM).unwrap()),
                Secret::new(VECTOR_JWE),
            )),
            Some(OAuthClient {
                client_id: "App-PRD-1".into(),
                client_secret: Secret::new("cert-secret"),
            }),
            "https://api.ebay.com/identity/v1/oauth2/token",
        )
    }

    fn vector_request() -> SandboxRequest {
        let mut headers = HeaderMap::new();
        headers.insert("x-ebay-signature-key", VECTOR_JWE.parse().unwrap());
        headers.insert("content-digest", VECTOR_DIGEST.parse().unwrap());
        headers.insert("signature-input", VECTOR_INPUT.parse().unwrap());
        headers.insert("signature", VECTOR_SIGNATURE.parse().unwrap());
        headers.insert("authorization", "Bearer static-token".parse().unwrap());
        SandboxRequest {
            method: Method::POST,
            host: "localhost".into(),
            authority: "localhost:8080".into(),
            path: "/verifysignature".into(),
            query: None,
            headers,
            body: Bytes::from_static(br#"{"hello": "world"}"#),
        }
    }

    fn answer(req: &SandboxRequest, book: &TokenBook, now: u64) -> (u16, Value) {
        let a = stand_in().answer(req, &SandboxContext::at(now, book));
        (a.status.as_u16(), a.body)
    }

    fn error_id(req: &SandboxRequest, now: u64) -> u64 {
        let (_, body) = answer(req, &TokenBook::new(), now);
        body["errors"][0]["errorId"].as_u64().unwrap_or(0)
    }

    #[test]
    fn ebays_own_vector_verifies() {
        let (status, body) = answer(&vector_request(), &TokenBook::new(), VECTOR_CREATED + 1);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sandbox"]["verified"], true);
        assert!(!body.to_string().contains("static-token"));
    }

    #[test]
    fn each_rule_has_its_error_id() {
        let now = VECTOR_CREATED + 1;
        let with = |f: &dyn Fn(&mut SandboxRequest)| {
            let mut req = vector_request();
            f(&mut req);
            error_id(&req, now)
        };
        assert_eq!(
            with(&|r| {
                r.headers.remove("x-ebay-signature-key");
            }),
            215_001
        );
        assert_eq!(
            with(&|r| {
                r.headers
                    .insert("x-ebay-signature-key", "other".parse().unwrap());
            }),
            215_116
        );
        assert_eq!(
            with(&|r| {
                r.headers.remove("signature-input");
            }),
            215_112
        );
        assert_eq!(
            with(&|r| {
                r.headers.remove("signature");
            }),
            215_111
        );
        assert_eq!(
            with(&|r| {
                r.headers.remove("content-digest");
            }),
            215_110
        );
        assert_eq!(
            with(&|r| r.body = Bytes::from_static(br#"{"hello":"world"}"#)),
            215_105
        );
        // The query is not part of @path; the port is part of @authority.
        assert_eq!(with(&|r| r.query = Some("a=b".into())), 0);
        assert_eq!(with(&|r| r.path = "/verifysignature?a=b".into()), 215_120);
        assert_eq!(with(&|r| r.authority = "localhost".into()), 215_120);
        assert_eq!(with(&|r| r.method = Method::PUT), 215_120);
        let reordered = VECTOR_INPUT.replace(r#""@method" "@path""#, r#""@path" "@method""#);
        assert_eq!(
            with(&|r| {
                r.headers
                    .insert("signature-input", reordered.parse().unwrap());
            }),
            215_120
        );
        let extra = format!("{VECTOR_INPUT};alg=\"ed25519\"");
        assert_eq!(
            with(&|r| {
                r.headers.insert("signature-input", extra.parse().unwrap());
            }),
            215_120
        );
        assert_eq!(error_id(&vector_request(), VECTOR_CREATED + 301), 215_114);
        assert_eq!(error_id(&vector_request(), VECTOR_CREATED - 31), 215_114);
        assert_eq!(
            with(&|r| {
                r.headers.remove("authorization");
            }),
            1002
        );
    }

    /// An RSA key verifies too (PKCS#1 v1.5), with the port kept out of a default-port authority.
    #[test]
    fn rsa_signatures_verify_and_a_foreign_key_does_not() {
        use crate::marketplace::ebay::sign::EbayCredentials;
        use crate::marketplace::{Sign, SignInput};
        use crate::signing::RequestHead;
        let rsa = Arc::new(
            load_private_key(include_str!(
                "../../../tests/fixtures/ebay/rsa2048-pkcs8.pem"
            ))
            .unwrap(),
        );
        let signer = EbayCredentials {
            key: Arc::clone(&rsa),
            jwe: Secret::new("rsa-jwe"),
            enforce_signature: false,
            expiry: None,
        };
        let head = RequestHead {
            method: Method::GET,
            authority: "apiz.ebay.com".into(),
            path_and_query: "/sell/finances/v1/seller_funds_summary?x=1".into(),
            headers: HeaderMap::new(),
        };
        let token = Secret::new("t");
        let signed = signer
            .sign(SignInput {
                head: &head,
                body: b"",
                access_token: Some(&token),
                now: Timestamp::from_secs(VECTOR_CREATED),
            })
            .unwrap();
        let req = SandboxRequest {
            method: Method::GET,
            host: "apiz.ebay.com".into(),
            authority: "apiz.ebay.com:443".into(),
            path: "/sell/finances/v1/seller_funds_summary".into(),
            query: Some("x=1".into()),
            headers: signed.headers,
            body: Bytes::new(),
        };
        let stand_in = |key: Arc<PrivateKey>| {
            EbayStandIn::new(
                Some((key, Secret::new("rsa-jwe"))),
                None,
                DEFAULT_TOKEN_PATH,
            )
        };
        let book = TokenBook::new();
        let cx = SandboxContext {
            now: Timestamp::from_secs(VECTOR_CREATED),
            token_ttl_secs: 60,
            tokens: &book,
            request_id: "r",
        };
        let answer = stand_in(rsa).answer(&req, &cx);
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["sandbox"]["body_bytes"], 0);
        let ed25519 = Arc::new(load_private_key(ED25519_PEM).unwrap());
        let answer = stand_in(ed25519).answer(&req, &cx);
        assert_eq!(
            answer.body["errors"][0]["errorId"], 215_120,
            "{}",
            answer.body
        );
    }

    #[test]
    fn tokens_from_the_token_endpoint_work_until_they_expire() {
        let book = TokenBook::new();
        let now = VECTOR_CREATED;
        let token_request = |auth: &str, form: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", auth.parse().unwrap());
            SandboxRequest {
                method: Method::POST,
                host: "api.ebay.com".into(),
                authority: "api.ebay.com".into(),
                path: DEFAULT_TOKEN_PATH.into(),
                query: None,
                headers,
                body: Bytes::from(form.to_owned()),
            }
        };
        let basic = format!("Basic {}", STANDARD.encode("App-PRD-1:cert-secret"));
        let (status, grant) = answer(
            &token_request(&basic, "grant_type=client_credentials&scope=x"),
            &book,
            now,
        );
        assert_eq!(status, 200, "{grant}");
        assert_eq!(grant["expires_in"], 7200);
        let token = grant["access_token"].as_str().unwrap().to_owned();
        assert!(token.contains('#') && token.contains('^'));

        let wrong = format!("Basic {}", STANDARD.encode("App-PRD-1:nope"));
        assert_eq!(
            answer(
                &token_request(&wrong, "grant_type=client_credentials"),
                &book,
                now
            )
            .1["error"],
            "invalid_client"
        );
        let refresh = "grant_type=refresh_token&refresh_token=v%5E1.1%23config";
        assert_eq!(answer(&token_request(&basic, refresh), &book, now).0, 200);
        assert_eq!(
            answer(&token_request(&basic, refresh), &book, now).0,
            200,
            "not rotated"
        );
        let forged = "grant_type=refresh_token&refresh_token=v%5E1.1%23i%5E1%23sandboxrt%2399.1.00";
        assert_eq!(
            answer(&token_request(&basic, forged), &book, now).1["error"],
            "invalid_grant"
        );

        let mut req = vector_request();
        req.headers
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(answer(&req, &book, now + 1).0, 200);
        let (status, body) = answer(&req, &book, now + 7200);
        assert_eq!(
            (status, body["errors"][0]["errorId"].as_u64()),
            (401, Some(1001)),
            "{body}"
        );
    }

    /// The Key Management stand-in makes a key that loads, for an application token it granted
    /// to this app, and refuses any other token.
    #[test]
    fn signing_keys_are_made_only_for_a_token_this_sandbox_granted() {
        let book = TokenBook::new();
        let now = VECTOR_CREATED;
        let mut headers = HeaderMap::new();
        let basic = format!("Basic {}", STANDARD.encode("App-PRD-1:cert-secret"));
        headers.insert("authorization", basic.parse().unwrap());
        let grant_request = SandboxRequest {
            method: Method::POST,
            host: "api.ebay.com".into(),
            authority: "api.ebay.com".into(),
            path: DEFAULT_TOKEN_PATH.into(),
            query: None,
            headers,
            body: Bytes::from_static(b"grant_type=client_credentials"),
        };
        let (status, grant) = answer(&grant_request, &book, now);
        assert_eq!(status, 200, "{grant}");
        let key_request = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            SandboxRequest {
                method: Method::POST,
                host: "apiz.ebay.com".into(),
                authority: "apiz.ebay.com".into(),
                path: KEY_MANAGEMENT_PATH.into(),
                query: None,
                headers,
                body: Bytes::from_static(br#"{"signingKeyCipher":"ED25519"}"#),
            }
        };
        let (status, made) = answer(
            &key_request(grant["access_token"].as_str().unwrap()),
            &book,
            now,
        );
        assert_eq!(status, 200, "{made}");
        let private = made["privateKey"].as_str().unwrap();
        assert_eq!(load_private_key(private).unwrap().algorithm(), "ed25519");
        assert_eq!(made["expirationTime"], now + KEY_LIFETIME_SECS);
        assert!(made["jwe"].as_str().unwrap().starts_with("sandbox-jwe."));

        for foreign in ["v^1.1#i^1#someone-elses-token", "plain-static-token"] {
            let (status, refused) = answer(&key_request(foreign), &book, now);
            assert_eq!(
                (status, refused["errors"][0]["errorId"].as_u64()),
                (401, Some(1001)),
                "{refused}"
            );
        }
    }
}
