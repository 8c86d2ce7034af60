//! The eBay doctor: given a request the user's own code signed, rebuild the RFC 9421 signature
//! base eBay verifies (for the request's own `created`), check the `Signature` against the
//! profile's key and, when it fails, find which known mistake's base it does verify.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::keys::Verified;
use super::sign::{content_digest, signature_base, EbayCredentials, JWE_MASK};
use super::{CREATED_MAX_AGE_SECS, CREATED_MAX_AHEAD_SECS};
use crate::clock::Timestamp;
use crate::marketplace::Diagnosis;
use crate::signing::RequestHead;

pub fn diagnose(
    creds: &EbayCredentials,
    head: &RequestHead,
    body: &[u8],
    now: Timestamp,
) -> Diagnosis {
    let header = |name: &str| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut notes = Vec::new();
    let (Some(input), Some(signature)) = (header("signature-input"), header("signature")) else {
        return Diagnosis::invalid(
            "the request carries no Signature and Signature-Input headers",
            String::new(),
            notes,
        );
    };
    let Some(declared) = parse_signature_input(&input) else {
        return Diagnosis::invalid(
            "Signature-Input is not `sig1=(\"...\" ...);created=UNIX_SECONDS`",
            String::new(),
            notes,
        );
    };
    let Some(sig) = signature
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .and_then(|b64| STANDARD.decode(b64).ok())
    else {
        return Diagnosis::invalid("Signature is not `sig1=:BASE64:`", String::new(), notes);
    };
    let jwe = header("x-ebay-signature-key").unwrap_or_default();
    if jwe.is_empty() {
        notes.push("the request has no x-ebay-signature-key header".to_owned());
    } else if jwe != creds.jwe.expose() {
        notes.push(
            "x-ebay-signature-key is not the profile's jwe: the key of another app or keypair?"
                .to_owned(),
        );
    }
    notes.extend(created_notes(&declared.created, now));
    let Ok(created) = declared.created.parse::<u64>() else {
        return Diagnosis::invalid("`created` is not Unix seconds", String::new(), notes);
    };

    let path = match head.path() {
        "" => "/",
        path => path,
    };
    let authority = head.authority.to_ascii_lowercase();
    let expected_digest = (!body.is_empty()).then(|| content_digest(body));
    let sent_digest = header("content-digest");
    if let (Some(expected), Some(sent)) = (&expected_digest, &sent_digest) {
        if expected != sent {
            notes.push("Content-Digest does not match the body sent: it was computed over other bytes (re-serialized JSON?)".to_owned());
        }
    }
    let components = |digest: Option<&str>, path: &str, authority: &str| {
        let mut list: Vec<(&str, String)> = Vec::new();
        if let Some(d) = digest {
            list.push(("content-digest", d.to_owned()));
        }
        list.push(("x-ebay-signature-key", jwe.clone()));
        list.push(("@method", head.method.as_str().to_owned()));
        list.push(("@path", path.to_owned()));
        list.push(("@authority", authority.to_owned()));
        list
    };
    let params_of = |list: &[(&str, String)]| {
        let names: Vec<String> = list.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        format!("({});created={created}", names.join(" "))
    };
    let expected_list = components(expected_digest.as_deref(), path, &authority);
    let expected_params = params_of(&expected_list);
    let expected_base = signature_base(&expected_list, &expected_params);
    let masked = |base: &str| {
        if jwe.is_empty() {
            base.to_owned()
        } else {
            base.replace(&jwe, JWE_MASK)
        }
    };
    let verdict_of = |base: &str| creds.key.verify(base.as_bytes(), &sig);

    match verdict_of(&expected_base) {
        Verified::Yes if sent_digest == expected_digest && declared.params == expected_params => {
            return Diagnosis {
                valid: true,
                verdict: "the signature is right for this request and its `created`".to_owned(),
                mistake: None,
                expected: masked(&expected_base),
                signed: None,
                notes,
            };
        }
        Verified::Pss => {
            return wrong(
                "the signature is RSA-PSS; eBay verifies RSASSA-PKCS1-v1_5 with SHA-256",
                masked(&expected_base),
                masked(&expected_base),
                notes,
            )
        }
        _ => {}
    }

    // Each mistake as the base it produces; the first that verifies is the one made.
    let mut variants: Vec<(&str, String)> = Vec::new();
    if declared.params != expected_params {
        let own = signature_base(&expected_list, &declared.params);
        variants.push((
            "Signature-Input lists other components, another order or extra parameters: eBay wants exactly (\"content-digest\" when there is a body) \"x-ebay-signature-key\" \"@method\" \"@path\" \"@authority\" and only `created`",
            own,
        ));
        let reordered = reorder(&expected_list, &declared.components);
        if let Some(list) = reordered {
            variants.push((
                "the components are in another order than eBay's",
                signature_base(&list, &declared.params),
            ));
        }
    }
    if let Some(query) = head.query() {
        let with_query = format!("{path}?{query}");
        let list = components(expected_digest.as_deref(), &with_query, &authority);
        variants.push((
            "the query is in @path; it must be the path alone",
            signature_base(&list, &params_of(&list)),
        ));
    }
    if !authority.contains(':') {
        let with_port = format!("{authority}:443");
        let list = components(expected_digest.as_deref(), path, &with_port);
        variants.push((
            "the default port is in @authority; drop `:443`",
            signature_base(&list, &params_of(&list)),
        ));
    }
    if let (Some(sent), Some(expected)) = (&sent_digest, &expected_digest) {
        if sent != expected {
            let list = components(Some(sent), path, &authority);
            variants.push((
                "Content-Digest was computed over other bytes than the body sent (sign and send the same bytes)",
                signature_base(&list, &params_of(&list)),
            ));
        }
    }
    variants.push((
        "the signature base ends with a newline; it must not",
        format!("{expected_base}\n"),
    ));
    let without_params = expected_base
        .rsplit_once('\n')
        .map(|(lines, _)| lines.to_owned())
        .unwrap_or_default();
    variants.push((
        "the \"@signature-params\" line is missing from the signature base",
        without_params,
    ));

    for (mistake, base) in variants {
        if verdict_of(&base) != Verified::No {
            return wrong(mistake, masked(&expected_base), masked(&base), notes);
        }
    }
    Diagnosis::invalid(
        "the signature does not verify with the profile's key, and none of the usual mistakes reproduces it (another key?)",
        masked(&expected_base),
        notes,
    )
}

fn wrong(mistake: &str, expected: String, signed: String, notes: Vec<String>) -> Diagnosis {
    Diagnosis {
        valid: false,
        verdict: format!("the signature is wrong: {mistake}"),
        mistake: Some(mistake.to_owned()),
        expected,
        signed: Some(signed),
        notes,
    }
}

/// `sig1=("a" "b");created=N` → the component names, `created`, and the params after `sig1=`.
struct DeclaredInput {
    components: Vec<String>,
    created: String,
    params: String,
}

fn parse_signature_input(value: &str) -> Option<DeclaredInput> {
    let params = value.trim().strip_prefix("sig1=")?;
    let inner = params.strip_prefix('(')?;
    let (list, rest) = inner.split_once(')')?;
    let components = list
        .split_whitespace()
        .map(|c| c.trim_matches('"').to_owned())
        .collect();
    let created = rest
        .split(';')
        .find_map(|p| p.strip_prefix("created="))?
        .to_owned();
    Some(DeclaredInput {
        components,
        created,
        params: params.to_owned(),
    })
}

/// The expected components in the order the request declared them, when it names the same set.
fn reorder<'a>(
    expected: &[(&'a str, String)],
    declared: &[String],
) -> Option<Vec<(&'a str, String)>> {
    if declared.len() != expected.len() {
        return None;
    }
    declared
        .iter()
        .map(|name| expected.iter().find(|(n, _)| n == name).cloned())
        .collect()
}

fn created_notes(created: &str, now: Timestamp) -> Vec<String> {
    let Ok(value) = created.parse::<u64>() else {
        return vec![format!(
            "`created` is `{created}`: eBay wants whole Unix seconds"
        )];
    };
    if created.len() >= 13 {
        return vec![format!(
            "`created` {value} looks like milliseconds: eBay wants Unix seconds"
        )];
    }
    let now = now.secs();
    if value > now + CREATED_MAX_AHEAD_SECS {
        vec![format!(
            "`created` is {} s in the future: check this machine's clock",
            value - now
        )]
    } else if now.saturating_sub(value) > CREATED_MAX_AGE_SECS {
        vec![format!(
            "`created` is {} s old: eBay accepts only a few seconds; sign each request afresh",
            now - value
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::ebay::keys::load_private_key;
    use crate::secret::Secret;
    use ed25519_dalek::Signer as _;
    use http::{HeaderMap, Method};
    use std::sync::Arc;

    /// RFC 9421 B.1.4 `test-key-ed25519`.
    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
    const RSA_PKCS8_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs8.pem");
    const JWE: &str = "eyJ.test.jwe";
    const CREATED: u64 = 1_658_440_308;
    const BODY: &[u8] = br#"{"hello": "world"}"#;

    fn creds(pem: &str) -> EbayCredentials {
        EbayCredentials {
            key: Arc::new(load_private_key(pem).unwrap()),
            jwe: Secret::new(JWE),
            enforce_signature: false,
            expiry: None,
        }
    }

    /// The RFC 9421 test key, used directly (ed25519-dalek), not through the signer.
    fn ed25519_sign(base: &str) -> String {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(ED25519_PEM).unwrap();
        STANDARD.encode(key.sign(base.as_bytes()).to_bytes())
    }

    fn digest(body: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
    }

    const PARAMS: &str = r#"("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#;

    /// eBay's base for POST /sell/x on apiz.ebay.com, written out by hand.
    fn base(path: &str, authority: &str, digest_value: &str, params: &str) -> String {
        format!(
            "\"content-digest\": {digest_value}\n\"x-ebay-signature-key\": {JWE}\n\"@method\": POST\n\"@path\": {path}\n\"@authority\": {authority}\n\"@signature-params\": {params}"
        )
    }

    fn request(input: &str, signature: &str, digest_value: &str) -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert("signature-input", format!("sig1={input}").parse().unwrap());
        headers.insert("signature", format!("sig1=:{signature}:").parse().unwrap());
        headers.insert("content-digest", digest_value.parse().unwrap());
        headers.insert("x-ebay-signature-key", JWE.parse().unwrap());
        RequestHead {
            method: Method::POST,
            authority: "apiz.ebay.com".into(),
            path_and_query: "/sell/x?limit=5".into(),
            headers,
        }
    }

    fn check(head: &RequestHead, body: &[u8], pem: &str) -> Diagnosis {
        diagnose(&creds(pem), head, body, Timestamp::from_secs(CREATED + 2))
    }

    fn mistake(base: &str, input: &str, sent_digest: &str, body: &[u8]) -> String {
        let head = request(input, &ed25519_sign(base), sent_digest);
        let d = check(&head, body, ED25519_PEM);
        assert!(!d.valid, "{d:?}");
        d.mistake
            .clone()
            .unwrap_or_else(|| panic!("no mistake named: {d:?}"))
    }

    #[test]
    fn a_right_signature_verifies_and_each_known_mistake_is_named() {
        let d_ok = digest(BODY);
        let right = base("/sell/x", "apiz.ebay.com", &d_ok, PARAMS);
        let d = check(
            &request(PARAMS, &ed25519_sign(&right), &d_ok),
            BODY,
            ED25519_PEM,
        );
        assert!(d.valid, "{d:?}");
        assert!(
            !d.expected.contains(JWE) && d.expected.contains(JWE_MASK),
            "{}",
            d.expected
        );

        let with_query = base("/sell/x?limit=5", "apiz.ebay.com", &d_ok, PARAMS);
        assert!(mistake(&with_query, PARAMS, &d_ok, BODY).contains("query is in @path"));
        let with_port = base("/sell/x", "apiz.ebay.com:443", &d_ok, PARAMS);
        assert!(mistake(&with_port, PARAMS, &d_ok, BODY).contains("port"));
        assert!(mistake(&format!("{right}\n"), PARAMS, &d_ok, BODY).contains("newline"));
        let no_params = right.rsplit_once('\n').unwrap().0.to_owned();
        assert!(mistake(&no_params, PARAMS, &d_ok, BODY).contains("@signature-params"));

        // Signed over compact JSON, sent spaced: the digest header is of other bytes.
        let compact_digest = digest(br#"{"hello":"world"}"#);
        let other_bytes = base("/sell/x", "apiz.ebay.com", &compact_digest, PARAMS);
        assert!(mistake(&other_bytes, PARAMS, &compact_digest, BODY).contains("other bytes"));

        // Another order, declared as such in Signature-Input.
        let reordered_params = r#"("@method" "@path" "@authority" "content-digest" "x-ebay-signature-key");created=1658440308"#;
        let reordered = format!(
            "\"@method\": POST\n\"@path\": /sell/x\n\"@authority\": apiz.ebay.com\n\"content-digest\": {d_ok}\n\"x-ebay-signature-key\": {JWE}\n\"@signature-params\": {reordered_params}"
        );
        assert!(mistake(&reordered, reordered_params, &d_ok, BODY).contains("another order"));
    }

    #[test]
    fn extra_signature_parameters_are_named() {
        let d_ok = digest(BODY);
        let with_alg = format!("{PARAMS};alg=\"ed25519\"");
        let signed = base("/sell/x", "apiz.ebay.com", &d_ok, &with_alg);
        assert!(mistake(&signed, &with_alg, &d_ok, BODY).contains("extra parameters"));
    }

    #[test]
    fn rsa_pss_is_named_and_created_is_judged() {
        use rsa::pkcs8::DecodePrivateKey;
        use sha2::{Digest, Sha256};
        let d_ok = digest(BODY);
        let right = base("/sell/x", "apiz.ebay.com", &d_ok, PARAMS);
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PKCS8_PEM).unwrap();
        let pss = key
            .sign_with_rng(
                &mut rsa::rand_core::OsRng,
                rsa::pss::Pss::new::<Sha256>(),
                &Sha256::digest(right.as_bytes()),
            )
            .unwrap();
        let head = request(PARAMS, &STANDARD.encode(pss), &d_ok);
        let d = check(&head, BODY, RSA_PKCS8_PEM);
        assert!(
            d.mistake.as_deref().is_some_and(|m| m.contains("RSA-PSS")),
            "{d:?}"
        );

        let ms = PARAMS.replace("1658440308", "1658440308000");
        let d = check(&request(&ms, "AAAA", &d_ok), BODY, ED25519_PEM);
        assert!(d.notes.iter().any(|n| n.contains("milliseconds")), "{d:?}");
        let head = request(PARAMS, &ed25519_sign(&right), &d_ok);
        let later = diagnose(
            &creds(ED25519_PEM),
            &head,
            BODY,
            Timestamp::from_secs(CREATED + 3600),
        );
        assert!(later.notes.iter().any(|n| n.contains("s old")), "{later:?}");
    }
}
