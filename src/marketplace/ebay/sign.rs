//! eBay digital signatures: RFC 9421 HTTP Message Signatures with RFC 9530 Content-Digest, plus eBay access-token placement. Pure.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use super::keys::PrivateKey;
use crate::marketplace::{CredentialExpiry, Sign, SignInput, TokenNeed};
use crate::secret::Secret;
use crate::signing::{RequestHead, SignError};

/// eBay's OAuth endpoint. eBay says not to sign it, and it takes Basic auth, not a token.
pub const TOKEN_ENDPOINT_PATH: &str = "/identity/v1/oauth2/token";

/// The only label eBay's verifier looks for.
const LABEL: &str = "sig1";

const SIGNATURE: HeaderName = HeaderName::from_static("signature");
const SIGNATURE_INPUT: HeaderName = HeaderName::from_static("signature-input");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
const SIGNATURE_KEY: HeaderName = HeaderName::from_static("x-ebay-signature-key");
const ENFORCE_SIGNATURE: HeaderName = HeaderName::from_static("x-ebay-enforce-signature");
const IAF_TOKEN: HeaderName = HeaderName::from_static("x-ebay-api-iaf-token");

/// What the explanation shows instead of the JWE.
pub(super) const JWE_MASK: &str = "<jwe from profile>";
const TOKEN_MASK: &str = "<access token>";

/// The signing half of an eBay profile.
#[derive(Clone, Debug)]
pub struct EbayCredentials {
    pub key: Arc<PrivateKey>,
    /// Sent verbatim as `x-ebay-signature-key`.
    pub jwe: Secret,
    /// Adds `x-ebay-enforce-signature: true`, which makes eBay verify even calls that do not need
    /// a signature: useful to test a key, no longer required in production.
    pub enforce_signature: bool,
    /// `key_expires_at`: eBay's `expirationTime` for the key, when the config states it.
    pub expiry: Option<CredentialExpiry>,
}

/// A profile without a signing key yet, for `signproxy ebay create-key` to make one: eBay's
/// token endpoint works, every other request is refused with the way out.
#[derive(Debug)]
pub struct Keyless {
    /// `default` in `[ebay.default]`.
    pub name: String,
}

impl Sign for Keyless {
    fn scheme(&self) -> String {
        "eBay RFC 9421 (no signing key yet: `signproxy ebay create-key` makes one)".to_owned()
    }

    /// None: a request it refuses must not cost a token grant first.
    fn token_need(&self, _head: &RequestHead) -> TokenNeed {
        TokenNeed::None
    }

    fn can_sign(&self) -> bool {
        false
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        if is_token_endpoint(input.head.path()) {
            return Ok(input.head.clone());
        }
        Err(SignError::Failed(format!(
            "[ebay.{name}] has no signing key yet (private_key and jwe): run `signproxy ebay \
             create-key --profile {name}` and add the lines it prints to [ebay.{name}]",
            name = self.name
        )))
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        self.sign(input).map(|_| {
            format!(
                "{} {TOKEN_ENDPOINT_PATH} is eBay's OAuth token endpoint: it is not signed",
                input.head.method
            )
        })
    }
}

/// Not for the token endpoint, and not when the client brought its own credential.
fn token_need(head: &RequestHead) -> TokenNeed {
    let own_credential =
        head.headers.contains_key(AUTHORIZATION) || head.headers.contains_key(IAF_TOKEN);
    if is_token_endpoint(head.path()) || own_credential {
        TokenNeed::None
    } else {
        TokenNeed::AccessToken
    }
}

/// RFC 9530 `Content-Digest` of the body bytes exactly as they go upstream.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// The RFC 9421 signature base: one `"name": value` line per covered component, then the
/// `"@signature-params"` line, joined by LF with no trailing LF.
pub fn signature_base(components: &[(&str, String)], signature_params: &str) -> String {
    let mut base = String::new();
    for (name, value) in components {
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    base
}

/// `("a" "b");created=NOW`: `created` is eBay's only accepted parameter.
fn signature_params(components: &[(&str, String)], created: u64) -> String {
    let names: Vec<String> = components
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect();
    format!("({});created={created}", names.join(" "))
}

/// Where the access token went, for the explanation.
enum TokenPlacement {
    Injected(&'static str),
    ClientSent,
    NotConfigured,
}

impl Sign for EbayCredentials {
    fn scheme(&self) -> String {
        format!("eBay RFC 9421 ({})", self.key.algorithm())
    }

    fn token_need(&self, head: &RequestHead) -> TokenNeed {
        token_need(head)
    }

    fn credential_expiry(&self) -> Option<CredentialExpiry> {
        self.expiry.clone()
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        sign(input, self, false).map(|(head, _)| head)
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        sign(input, self, true).map(|(_, explanation)| explanation.unwrap_or_default())
    }

    fn diagnose(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: crate::clock::Timestamp,
    ) -> Option<crate::marketplace::Diagnosis> {
        Some(super::doctor::diagnose(self, head, body, now))
    }

    /// The 2151xx family: missing or wrong digest, signature, signature input, `created`, JWE.
    fn rejection(&self, _status: http::StatusCode, body: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            #[serde(rename = "errorId")]
            error_id: i64,
        }
        let errors: Errors = serde_json::from_slice(body).ok()?;
        errors
            .errors
            .iter()
            .find(|e| (215_000..=215_199).contains(&e.error_id))
            .map(|e| e.error_id.to_string())
    }
}

/// Signs an eBay API request: sets `Host`, `Content-Digest` (body only), `x-ebay-signature-key`,
/// `Signature-Input` and `Signature`, replacing any the client sent, and the access token when the
/// client sent none. `created` is `input.now`, read once by the caller. The explanation is built
/// only when `explain`.
fn sign(
    input: SignInput<'_>,
    creds: &EbayCredentials,
    explain: bool,
) -> Result<(RequestHead, Option<String>), SignError> {
    let SignInput {
        head,
        body,
        access_token,
        now,
    } = input;
    let mut head = head.clone();
    let now = now.secs();
    if is_token_endpoint(head.path()) {
        let explanation = format!(
            "{} {TOKEN_ENDPOINT_PATH} is eBay's OAuth token endpoint: it is not signed and gets \
             no access token (eBay: do not sign the token endpoint)",
            head.method
        );
        return Ok((head, explain.then_some(explanation)));
    }

    let authority = head.authority.to_ascii_lowercase();
    if authority.is_empty() {
        return Err(SignError::BadRequest(
            "the request has no host: eBay signatures cover @authority, so send an absolute URL \
             or a Host header"
                .to_owned(),
        ));
    }
    let host_value = HeaderValue::from_str(&authority).map_err(|_| {
        SignError::BadRequest(format!(
            "the host {authority:?} is not a valid Host header value"
        ))
    })?;
    let jwe = creds.jwe.expose();
    if jwe.is_empty() {
        return Err(SignError::Failed(
            "the eBay profile's jwe is empty: set it to the jwe value from eBay's Key Management \
             API"
            .to_owned(),
        ));
    }
    let jwe_value = sensitive(jwe).map_err(|_| {
        SignError::Failed(
            "the eBay profile's jwe contains characters not allowed in an HTTP header (a stray \
             newline?): set it to the jwe value from eBay's Key Management API, verbatim"
                .to_owned(),
        )
    })?;

    for name in [
        &SIGNATURE,
        &SIGNATURE_INPUT,
        &CONTENT_DIGEST,
        &SIGNATURE_KEY,
    ] {
        head.headers.remove(name);
    }
    let path = match head.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    };
    let token = place_token(&mut head.headers, &path, access_token)?;

    let digest = (!body.is_empty()).then(|| content_digest(body));
    let mut components: Vec<(&str, String)> = Vec::with_capacity(5);
    if let Some(digest) = &digest {
        components.push(("content-digest", digest.clone()));
    }
    components.push(("x-ebay-signature-key", jwe.to_owned()));
    components.push(("@method", head.method.as_str().to_owned()));
    components.push(("@path", path));
    components.push(("@authority", authority.clone()));
    // Built once and reused verbatim: recomputing it (another clock read) can change `created`
    // between the header and the base, which breaks the signature.
    let params = signature_params(&components, now);
    let base = signature_base(&components, &params);

    let signature = creds
        .key
        .sign(base.as_bytes())
        .map_err(|e| SignError::Failed(format!("eBay request signing failed: {e}")))?;

    head.headers.insert(HOST, host_value);
    if let Some(digest) = &digest {
        head.headers.insert(CONTENT_DIGEST, generated(digest)?);
    }
    head.headers.insert(SIGNATURE_KEY, jwe_value);
    if creds.enforce_signature {
        head.headers
            .insert(ENFORCE_SIGNATURE, HeaderValue::from_static("true"));
    }
    head.headers
        .insert(SIGNATURE_INPUT, generated(&format!("{LABEL}={params}"))?);
    head.headers.insert(
        SIGNATURE,
        generated(&format!("{LABEL}=:{}:", STANDARD.encode(signature)))?,
    );
    head.authority = authority;

    if !explain {
        return Ok((head, None));
    }
    let masked: Vec<(&str, String)> = components
        .into_iter()
        .map(|(name, value)| match name {
            "x-ebay-signature-key" => (name, JWE_MASK.to_owned()),
            _ => (name, value),
        })
        .collect();
    let mut explanation = signature_base(&masked, &params);
    explanation.push_str("\n\nalgorithm: ");
    explanation.push_str(creds.key.algorithm());
    explanation.push_str("\naccess token: ");
    match token {
        TokenPlacement::Injected(how) => explanation.push_str(how),
        TokenPlacement::ClientSent => {
            explanation.push_str("not added, the request already carries one")
        }
        TokenPlacement::NotConfigured => {
            explanation.push_str("not added, the profile has no access token")
        }
    }
    if creds.enforce_signature {
        explanation.push_str("\nx-ebay-enforce-signature: true");
    }
    Ok((head, Some(explanation)))
}

fn is_token_endpoint(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == TOKEN_ENDPOINT_PATH
}

fn starts_with_ignore_case(path: &str, prefix: &str) -> bool {
    path.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Puts the token where the eBay API family expects it, unless the client brought its own.
fn place_token(
    headers: &mut HeaderMap,
    path: &str,
    access_token: Option<&Secret>,
) -> Result<TokenPlacement, SignError> {
    let Some(token) = access_token else {
        return Ok(TokenPlacement::NotConfigured);
    };
    if headers.contains_key(AUTHORIZATION) || headers.contains_key(IAF_TOKEN) {
        return Ok(TokenPlacement::ClientSent);
    }
    if token.is_empty() {
        return Err(SignError::Failed(
            "the eBay access token is empty: check access_token in the eBay profile".to_owned(),
        ));
    }
    let token = token.expose();
    let (name, value, how) = if starts_with_ignore_case(path, "/ws/api.dll") {
        (
            IAF_TOKEN,
            sensitive(token),
            "X-EBAY-API-IAF-TOKEN: <access token> (Trading API)",
        )
    } else if starts_with_ignore_case(path, "/post-order/") {
        (
            AUTHORIZATION,
            sensitive(&format!("IAF {token}")),
            "Authorization: IAF <access token> (Post-Order API)",
        )
    } else {
        (
            AUTHORIZATION,
            sensitive(&format!("Bearer {token}")),
            "Authorization: Bearer <access token>",
        )
    };
    let value = value.map_err(|_| {
        SignError::Failed(format!(
            "the eBay access token contains characters not allowed in an HTTP header, so \
             {TOKEN_MASK} cannot be sent: check access_token in the eBay profile"
        ))
    })?;
    headers.insert(name, value);
    Ok(TokenPlacement::Injected(how))
}

/// A header value that hyper and `Debug` treat as secret.
fn sensitive(value: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(value)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A header value built here from ASCII parts, so failure would be a bug in this module.
fn generated(value: &str) -> Result<HeaderValue, SignError> {
    HeaderValue::from_str(value).map_err(|_| {
        SignError::Failed(format!(
            "internal error: generated eBay header value {value:?} is not a valid header value"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::marketplace::ebay::keys::load_private_key;
    use crate::signing::https_authority;
    use http::Method;
    use ring::signature::{
        UnparsedPublicKey, VerificationAlgorithm, ED25519, RSA_PKCS1_2048_8192_SHA256,
        RSA_PSS_2048_8192_SHA256,
    };

    /// RFC 9421 B.1.4 `test-key-ed25519`, also the key behind eBay's verification service.
    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
    const ED25519_SPKI: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";
    const RSA_PKCS8_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs8.pem");
    const RSA_PUB_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/ebay/rsa2048-pub-pkcs1.der");

    const JWE: &str = "eyJ6aXAiOiJERUYiLCJlbmMiOiJBMjU2R0NNIiwidGFnIjoiSXh2dVRMb0FLS0hlS0Zoa3BxQ05CUSIsImFsZyI6IkEyNTZHQ01LVyIsIml2IjoiaFd3YjNoczk2QzEyOTNucCJ9.2o02pR9SoTF4g_5qRXZm6tF4H52TarilIAKxoVUqjd8.3qaF0KJN-rFHHm_P.AMUAe9PPduew09mANIZ-O_68CCuv6EIx096rm9WyLZnYz5N1WFDQ3jP0RBkbaOtQZHImMSPXIHVaB96RWshLuJsUgCKmTAwkPVCZv3zhLxZVxMXtPUuJ-ppVmPIv0NzznWCOU5Kvb9Xux7ZtnlvLXgwOFEix-BaWNomUAazbsrUCbrp514GIea3butbyxXLNi6R9TJUNh8V2uan-optT1MMyS7eMQnVGL5rYBULk.9K5ucUqAu0DqkkhgubsHHw";
    const BODY: &[u8] = br#"{"hello": "world"}"#;
    const NOW: u64 = 1658440308;
    const TOKEN: &str = "v^1.1#i^1#p^3#r^1#f^0#t^H4sIAAAAAAAA-secret-token";

    fn creds() -> EbayCredentials {
        EbayCredentials {
            key: Arc::new(load_private_key(ED25519_PEM).unwrap()),
            jwe: Secret::new(JWE),
            enforce_signature: false,
            expiry: None,
        }
    }

    fn rsa_creds() -> EbayCredentials {
        EbayCredentials {
            key: Arc::new(load_private_key(RSA_PKCS8_PEM).unwrap()),
            ..creds()
        }
    }

    fn ed25519_public_key() -> Vec<u8> {
        let spki = STANDARD.decode(ED25519_SPKI).unwrap();
        spki[spki.len() - 32..].to_vec()
    }

    type Signed = crate::marketplace::Explained;

    /// Signs through the [`Sign`] trait (what the proxy and `sign` call), as of `now` seconds.
    fn sign(
        head: RequestHead,
        body: &[u8],
        creds: &EbayCredentials,
        access_token: Option<&Secret>,
        now: u64,
    ) -> Result<Signed, SignError> {
        let input = SignInput {
            head: &head,
            body,
            access_token,
            now: Timestamp::from_secs(now),
        };
        crate::marketplace::sign_explained(creds, input)
    }

    fn head(method: Method, authority: &str, path_and_query: &str) -> RequestHead {
        RequestHead {
            method,
            authority: authority.to_owned(),
            path_and_query: path_and_query.to_owned(),
            headers: HeaderMap::new(),
        }
    }

    fn header<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
        head.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn values(head: &RequestHead, name: &str) -> Vec<String> {
        head.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// A verifier written from the spec, independent of `signature_base`: it rebuilds the base
    /// from the headers actually sent and checks the signature with ring.
    fn rebuild_base(head: &RequestHead) -> (String, Vec<u8>) {
        let input = header(head, "signature-input").expect("signature-input sent");
        let params = input.strip_prefix("sig1=").expect("label sig1");
        let list = params
            .strip_prefix('(')
            .and_then(|p| p.split_once(')'))
            .expect("component list")
            .0;
        let mut lines = Vec::new();
        for quoted in list.split(' ') {
            let name = quoted.trim_matches('"');
            let value = match name {
                "@method" => head.method.as_str().to_owned(),
                "@path" => {
                    let path = head.path_and_query.split('?').next().unwrap();
                    if path.is_empty() { "/" } else { path }.to_owned()
                }
                "@authority" => header(head, "host").expect("host sent").to_owned(),
                other => header(head, other).expect("covered header sent").to_owned(),
            };
            lines.push(format!("\"{name}\": {value}"));
        }
        lines.push(format!("\"@signature-params\": {params}"));
        let signature = header(head, "signature").expect("signature sent");
        let b64 = signature
            .strip_prefix("sig1=:")
            .and_then(|s| s.strip_suffix(':'))
            .expect("sig1=:…: form");
        (lines.join("\n"), STANDARD.decode(b64).unwrap())
    }

    fn verifies(
        head: &RequestHead,
        alg: &'static dyn VerificationAlgorithm,
        public: &[u8],
    ) -> bool {
        let (base, signature) = rebuild_base(head);
        UnparsedPublicKey::new(alg, public)
            .verify(base.as_bytes(), &signature)
            .is_ok()
    }

    fn base_of(signed: &Signed) -> &str {
        signed.explanation.split("\n\n").next().unwrap()
    }

    #[test]
    fn content_digest_rfc9530_vector() {
        assert_eq!(
            content_digest(BODY),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
    }

    #[test]
    fn signature_base_rfc9421_b26() {
        let components = [
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT".to_owned()),
            ("@method", "POST".to_owned()),
            ("@path", "/foo".to_owned()),
            ("@authority", "example.com".to_owned()),
            ("content-type", "application/json".to_owned()),
            ("content-length", "18".to_owned()),
        ];
        let params = r#"("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
        let base = signature_base(&components, params);
        assert_eq!(
            base,
            r#""date": Tue, 20 Apr 2021 02:07:55 GMT
"@method": POST
"@path": /foo
"@authority": example.com
"content-type": application/json
"content-length": 18
"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#
        );
        let key = load_private_key(ED25519_PEM).unwrap();
        assert_eq!(
            STANDARD.encode(key.sign(base.as_bytes()).unwrap()),
            "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
        );
    }

    #[test]
    fn ebay_verification_service_vector() {
        let signed = sign(
            head(Method::POST, "localhost:8080", "/verifysignature"),
            BODY,
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        let h = &signed.head;
        assert_eq!(
            header(h, "content-digest"),
            Some("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")
        );
        assert_eq!(header(h, "x-ebay-signature-key"), Some(JWE));
        assert_eq!(
            header(h, "signature-input"),
            Some(
                r#"sig1=("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#
            )
        );
        assert_eq!(
            header(h, "signature"),
            Some("sig1=:ZMUpAejnqrt6POSx02ltx3cT9YODV2r+Cem/BKOagDSfztKOtCsjP/MxZqmY+FVJ3/8E4BL76T9Fjty8oJnsAw==:")
        );
        assert_eq!(header(h, "host"), Some("localhost:8080"));
        assert_eq!(header(h, "x-ebay-enforce-signature"), None);
        assert_eq!(header(h, "authorization"), None);
        assert!(verifies(h, &ED25519, &ed25519_public_key()));
    }

    #[test]
    fn rsa_key_signs_pkcs1v15_sha256_never_pss() {
        let signed = sign(
            head(
                Method::POST,
                "apiz.ebay.com",
                "/sell/finances/v1/transaction?limit=1",
            ),
            BODY,
            &rsa_creds(),
            None,
            NOW,
        )
        .unwrap();
        assert!(verifies(
            &signed.head,
            &RSA_PKCS1_2048_8192_SHA256,
            RSA_PUB_PKCS1
        ));
        assert!(!verifies(
            &signed.head,
            &RSA_PSS_2048_8192_SHA256,
            RSA_PUB_PKCS1
        ));
        assert!(signed.explanation.contains("algorithm: rsa-v1_5-sha256"));
    }

    #[test]
    fn get_without_body_verifies_and_covers_no_digest() {
        let signed = sign(
            head(Method::GET, "apiz.ebay.com", "/sell/finances/v1/payout"),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        let h = &signed.head;
        assert_eq!(header(h, "content-digest"), None);
        assert_eq!(
            header(h, "signature-input"),
            Some(
                r#"sig1=("x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#
            )
        );
        assert!(!base_of(&signed).contains("content-digest"));
        assert!(verifies(h, &ED25519, &ed25519_public_key()));
    }

    #[test]
    fn empty_post_drops_a_client_content_digest() {
        let mut req = head(
            Method::POST,
            "api.ebay.com",
            "/post-order/v2/cancellation/1/approve",
        );
        req.headers.insert(
            "content-digest",
            HeaderValue::from_static("sha-256=:bogus=:"),
        );
        let signed = sign(req, b"", &creds(), None, NOW).unwrap();
        assert_eq!(header(&signed.head, "content-digest"), None);
        assert!(!header(&signed.head, "signature-input")
            .unwrap()
            .contains("content-digest"));
        assert!(verifies(&signed.head, &ED25519, &ed25519_public_key()));
    }

    #[test]
    fn query_is_not_in_path() {
        let signed = sign(
            head(Method::GET, "api.ebay.com", "/foo?x=1&y=%2F"),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        assert!(
            base_of(&signed).contains("\n\"@path\": /foo\n"),
            "{}",
            signed.explanation
        );
        assert!(!signed.explanation.contains("x=1"));
        assert_eq!(signed.head.path_and_query, "/foo?x=1&y=%2F");
        assert!(verifies(&signed.head, &ED25519, &ed25519_public_key()));
    }

    #[test]
    fn path_is_raw_not_decoded() {
        let signed = sign(
            head(
                Method::GET,
                "api.ebay.com",
                "/sell/inventory/v1/inventory_item/SKU%2F1",
            ),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        let expected = "\"@path\": /sell/inventory/v1/inventory_item/SKU%2F1\n";
        assert!(
            base_of(&signed).contains(expected),
            "{}",
            signed.explanation
        );
    }

    #[test]
    fn empty_path_is_slash() {
        for path_and_query in ["", "?x=1"] {
            let signed = sign(
                head(Method::GET, "api.ebay.com", path_and_query),
                b"",
                &creds(),
                None,
                NOW,
            )
            .unwrap();
            assert!(
                base_of(&signed).contains("\n\"@path\": /\n"),
                "{path_and_query:?}: {}",
                signed.explanation
            );
            assert!(verifies(&signed.head, &ED25519, &ed25519_public_key()));
        }
    }

    #[test]
    fn authority_drops_default_port_and_is_lower_cased() {
        assert_eq!(https_authority("APIZ.eBay.com", 443), "apiz.ebay.com");
        let signed = sign(
            head(Method::GET, &https_authority("APIZ.eBay.com", 443), "/x"),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        assert!(base_of(&signed).contains("\"@authority\": apiz.ebay.com\n"));
        assert_eq!(header(&signed.head, "host"), Some("apiz.ebay.com"));

        // sign() trusts the caller for the port but still lower-cases.
        let mut req = head(Method::GET, "API.Sandbox.eBay.com:8443", "/x");
        req.headers
            .insert(HOST, HeaderValue::from_static("wrong.example"));
        let signed = sign(req, b"", &creds(), None, NOW).unwrap();
        assert!(base_of(&signed).contains("\"@authority\": api.sandbox.ebay.com:8443\n"));
        assert_eq!(values(&signed.head, "host"), ["api.sandbox.ebay.com:8443"]);
        assert_eq!(signed.head.authority, "api.sandbox.ebay.com:8443");
        assert!(verifies(&signed.head, &ED25519, &ed25519_public_key()));
    }

    #[test]
    fn base_has_no_trailing_newline() {
        let base = signature_base(&[("@method", "GET".to_owned())], r#"("@method");created=1"#);
        assert_eq!(
            base,
            "\"@method\": GET\n\"@signature-params\": (\"@method\");created=1"
        );

        let signed = sign(
            head(Method::POST, "localhost:8080", "/verifysignature"),
            BODY,
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        let (base, signature) = rebuild_base(&signed.head);
        let public = ed25519_public_key();
        let key = UnparsedPublicKey::new(&ED25519, &public);
        assert!(key.verify(base.as_bytes(), &signature).is_ok());
        assert!(key
            .verify(format!("{base}\n").as_bytes(), &signature)
            .is_err());
    }

    #[test]
    fn created_is_the_same_in_header_and_base() {
        let signed = sign(
            head(Method::POST, "apiz.ebay.com", "/sell/finances/v1/x"),
            BODY,
            &creds(),
            None,
            1_700_000_123,
        )
        .unwrap();
        let input = header(&signed.head, "signature-input").unwrap();
        assert!(input.ends_with(";created=1700000123"), "{input}");
        let params_line = base_of(&signed).lines().last().unwrap();
        assert_eq!(
            params_line.strip_prefix("\"@signature-params\": "),
            input.strip_prefix("sig1=")
        );
        assert!(!input.contains("alg") && !input.contains("keyid") && !input.contains("expires"));
    }

    #[test]
    fn client_signature_headers_are_replaced() {
        let mut req = head(Method::POST, "apiz.ebay.com", "/sell/finances/v1/x");
        for (name, value) in [
            ("signature", "sig1=:Zm9v:"),
            ("signature", "sig2=:YmFy:"),
            ("signature-input", "sig1=(\"@method\");created=1"),
            ("content-digest", "sha-256=:AAAA:"),
            ("x-ebay-signature-key", "client-jwe"),
        ] {
            req.headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        req.headers
            .insert("content-type", HeaderValue::from_static("application/json"));
        req.headers
            .insert("x-custom", HeaderValue::from_static("Kept As Is"));
        let signed = sign(req, BODY, &creds(), None, NOW).unwrap();
        let h = &signed.head;
        assert_eq!(values(h, "signature").len(), 1);
        assert_eq!(values(h, "signature-input").len(), 1);
        assert_eq!(values(h, "content-digest"), [content_digest(BODY)]);
        assert_eq!(values(h, "x-ebay-signature-key"), [JWE]);
        assert!(!header(h, "signature").unwrap().contains("Zm9v"));
        assert_eq!(header(h, "content-type"), Some("application/json"));
        assert_eq!(header(h, "x-custom"), Some("Kept As Is"));
        assert!(verifies(h, &ED25519, &ed25519_public_key()));
    }

    fn signed_with_token(path: &str, client: &[(&'static str, &'static str)]) -> Signed {
        let mut req = head(Method::POST, "api.ebay.com", path);
        for (name, value) in client {
            req.headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        sign(req, BODY, &creds(), Some(&Secret::new(TOKEN)), NOW).unwrap()
    }

    #[test]
    fn token_for_trading_api_goes_in_iaf_header() {
        let signed = signed_with_token("/ws/api.dll", &[]);
        assert_eq!(header(&signed.head, "x-ebay-api-iaf-token"), Some(TOKEN));
        assert_eq!(header(&signed.head, "authorization"), None);
    }

    #[test]
    fn token_for_post_order_is_iaf_authorization() {
        let signed = signed_with_token("/post-order/v2/return/5000123/issue_refund", &[]);
        assert_eq!(
            header(&signed.head, "authorization"),
            Some(format!("IAF {TOKEN}").as_str())
        );
        assert_eq!(header(&signed.head, "x-ebay-api-iaf-token"), None);
    }

    #[test]
    fn token_for_rest_is_bearer() {
        for path in [
            "/sell/finances/v1/seller_funds_summary",
            "/sell/fulfillment/v1/order/1/issue_refund",
            "/buy/browse/v1/item_summary/search?q=x",
            "/developer/key_management/v1/signing_key",
        ] {
            let signed = signed_with_token(path, &[]);
            assert_eq!(
                header(&signed.head, "authorization"),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{path}"
            );
            assert_eq!(header(&signed.head, "x-ebay-api-iaf-token"), None);
        }
    }

    #[test]
    fn client_token_is_kept() {
        let signed = signed_with_token("/sell/finances/v1/x", &[("authorization", "Bearer mine")]);
        assert_eq!(values(&signed.head, "authorization"), ["Bearer mine"]);
        assert!(signed.explanation.contains("already carries one"));

        let signed = signed_with_token("/ws/api.dll", &[("x-ebay-api-iaf-token", "mine")]);
        assert_eq!(values(&signed.head, "x-ebay-api-iaf-token"), ["mine"]);
        assert_eq!(header(&signed.head, "authorization"), None);

        let signed = signed_with_token("/post-order/v2/x", &[("x-ebay-api-iaf-token", "mine")]);
        assert_eq!(header(&signed.head, "authorization"), None);
    }

    #[test]
    fn no_token_configured_adds_none() {
        let signed = sign(
            head(Method::GET, "api.ebay.com", "/sell/x"),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(header(&signed.head, "authorization"), None);
        assert_eq!(header(&signed.head, "x-ebay-api-iaf-token"), None);
    }

    #[test]
    fn token_endpoint_is_left_alone() {
        for path in [
            "/identity/v1/oauth2/token",
            "/identity/v1/oauth2/token/",
            "/identity/v1/oauth2/token?x=1",
        ] {
            let mut req = head(Method::POST, "api.ebay.com", path);
            req.headers.insert(
                "authorization",
                HeaderValue::from_static("Basic Y2lkOmNzZWNyZXQ="),
            );
            req.headers
                .insert("signature", HeaderValue::from_static("sig1=:client:"));
            let before = req.headers.clone();
            let body = b"grant_type=client_credentials";
            let signed = sign(req, body, &creds(), Some(&Secret::new(TOKEN)), NOW).unwrap();
            assert_eq!(signed.head.headers, before, "{path}");
            assert_eq!(signed.head.path_and_query, path);
            assert!(
                signed.explanation.contains("token endpoint"),
                "{}",
                signed.explanation
            );
            assert!(signed.explanation.contains("not signed"));
        }
        // A neighbour of the token endpoint is an ordinary call.
        let signed = sign(
            head(Method::POST, "api.ebay.com", "/identity/v1/oauth2/tokens"),
            b"",
            &creds(),
            None,
            NOW,
        )
        .unwrap();
        assert!(header(&signed.head, "signature").is_some());
    }

    #[test]
    fn enforce_signature_is_opt_in() {
        let req = || head(Method::GET, "api.ebay.com", "/ws/api.dll");
        let off = sign(req(), b"", &creds(), None, NOW).unwrap();
        assert_eq!(header(&off.head, "x-ebay-enforce-signature"), None);
        let on_creds = EbayCredentials {
            enforce_signature: true,
            expiry: None,
            ..creds()
        };
        let on = sign(req(), b"", &on_creds, None, NOW).unwrap();
        assert_eq!(header(&on.head, "x-ebay-enforce-signature"), Some("true"));
        // Not a covered component: the signature is the same either way.
        assert_eq!(
            header(&on.head, "signature"),
            header(&off.head, "signature")
        );
    }

    #[test]
    fn explanation_masks_secrets_and_names_the_algorithm() {
        let signed = sign(
            head(Method::POST, "localhost:8080", "/verifysignature"),
            BODY,
            &creds(),
            Some(&Secret::new(TOKEN)),
            NOW,
        )
        .unwrap();
        let e = &signed.explanation;
        assert!(!e.contains(JWE) && !e.contains(&JWE[..40]), "{e}");
        assert!(!e.contains(TOKEN) && !e.contains("secret-token"), "{e}");
        assert!(!e.contains("MC4CAQAw"), "{e}");
        assert!(e.starts_with(
            "\"content-digest\": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n\
             \"x-ebay-signature-key\": <jwe from profile>\n\
             \"@method\": POST\n\
             \"@path\": /verifysignature\n\
             \"@authority\": localhost:8080\n\
             \"@signature-params\": (\"content-digest\" \"x-ebay-signature-key\" \"@method\" \"@path\" \"@authority\");created=1658440308\n\n"
        ), "{e}");
        assert!(e.contains("algorithm: ed25519"), "{e}");
        assert!(e.contains("Authorization: Bearer <access token>"), "{e}");
    }

    #[test]
    fn debug_output_leaks_no_secrets() {
        let creds = creds();
        let debug = format!("{creds:?}");
        assert!(!debug.contains(&JWE[..20]), "{debug}");
        assert!(!debug.contains("MC4CAQAw"), "{debug}");
        assert!(debug.contains("PrivateKey(ed25519)"), "{debug}");

        let rsa = format!("{:#?}", rsa_creds());
        assert!(!rsa.contains(&JWE[..20]), "{rsa}");
        assert!(
            rsa.contains("PrivateKey(rsa-v1_5-sha256, 2048 bits)"),
            "{rsa}"
        );

        // Headers carrying secrets are marked sensitive, so a logged head hides them too.
        let signed = signed_with_token("/sell/x", &[]);
        let head_debug = format!("{:?}", signed.head);
        assert!(!head_debug.contains(&JWE[..20]), "{head_debug}");
        assert!(!head_debug.contains("secret-token"), "{head_debug}");
        let iaf = signed_with_token("/ws/api.dll", &[]);
        assert!(!format!("{:?}", iaf.head).contains("secret-token"));
    }

    /// `check` prints this name; nothing else in the request path reads it, so only this pins it.
    #[test]
    fn scheme_names_the_key_algorithm() {
        assert_eq!(creds().scheme(), "eBay RFC 9421 (ed25519)");
        assert_eq!(rsa_creds().scheme(), "eBay RFC 9421 (rsa-v1_5-sha256)");
    }

    /// The proxy fetches (and may refresh) a managed token only on `AccessToken`. Each reason
    /// for `None` must suffice on its own: either credential header, or the token endpoint
    /// (which takes Basic auth, so a bare request to it still needs no token).
    #[test]
    fn token_need_each_reason_alone_suffices() {
        let need = |path: &str, client: &[(&'static str, &'static str)]| {
            let mut req = head(Method::POST, "api.ebay.com", path);
            for (name, value) in client {
                req.headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            creds().token_need(&req)
        };
        assert_eq!(need("/sell/x", &[]), TokenNeed::AccessToken);
        assert_eq!(need("/ws/api.dll", &[]), TokenNeed::AccessToken);
        assert_eq!(
            need("/sell/x", &[("authorization", "Bearer mine")]),
            TokenNeed::None
        );
        assert_eq!(
            need("/ws/api.dll", &[("x-ebay-api-iaf-token", "mine")]),
            TokenNeed::None
        );
        for path in [
            "/identity/v1/oauth2/token",
            "/identity/v1/oauth2/token/",
            "/identity/v1/oauth2/token?grant_type=x",
        ] {
            assert_eq!(need(path, &[]), TokenNeed::None, "{path}");
        }
        assert_eq!(
            need("/identity/v1/oauth2/tokens", &[]),
            TokenNeed::AccessToken
        );
        // Unrelated headers are not a credential.
        assert_eq!(
            need("/sell/x", &[("x-ebay-c-marketplace-id", "EBAY_US")]),
            TokenNeed::AccessToken
        );
    }

    #[test]
    fn bad_host_is_the_clients_error() {
        for authority in ["", "api.ebay.com\r\nx: y"] {
            let err =
                sign(head(Method::GET, authority, "/x"), b"", &creds(), None, NOW).unwrap_err();
            assert!(
                matches!(err, SignError::BadRequest(_)),
                "{authority:?}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_credentials_fail_signing_without_echoing_them() {
        for jwe in ["", "eyJ6aXAi\nsecretpart"] {
            let bad = EbayCredentials {
                jwe: Secret::new(jwe),
                ..creds()
            };
            let err = sign(
                head(Method::GET, "api.ebay.com", "/x"),
                b"",
                &bad,
                None,
                NOW,
            )
            .unwrap_err();
            assert!(matches!(err, SignError::Failed(_)), "{err:?}");
            assert!(err.to_string().contains("jwe"), "{err}");
            assert!(!err.to_string().contains("secretpart"), "{err}");
        }
        for token in ["", "tok\nsecretpart"] {
            let err = sign(
                head(Method::GET, "api.ebay.com", "/x"),
                b"",
                &creds(),
                Some(&Secret::new(token)),
                NOW,
            )
            .unwrap_err();
            assert!(matches!(err, SignError::Failed(_)), "{err:?}");
            assert!(err.to_string().contains("access token"), "{err}");
            assert!(!err.to_string().contains("secretpart"), "{err}");
        }
    }

    #[test]
    fn signature_rejections_are_recognised_and_nothing_else() {
        let c = creds();
        let status = http::StatusCode::FORBIDDEN;
        let answer = |id: i64| {
            format!(
                r#"{{"errors":[{{"errorId":{id},"domain":"ACCESS","category":"REQUEST","message":"m"}}]}}"#
            )
        };
        assert_eq!(
            c.rejection(status, answer(215120).as_bytes()),
            Some("215120".to_owned())
        );
        assert_eq!(
            c.rejection(status, answer(215000).as_bytes()),
            Some("215000".to_owned())
        );
        assert_eq!(c.rejection(status, answer(1001).as_bytes()), None);
        assert_eq!(c.rejection(status, answer(215200).as_bytes()), None);
        assert_eq!(c.rejection(status, b"not json"), None);
    }
}
