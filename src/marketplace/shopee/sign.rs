//! Shopee Open Platform v2 request signing: HMAC-SHA256, keyed with the partner key as text, over
//! partner_id + path + timestamp (+ access_token + shop_id/merchant_id for Shop and Merchant
//! APIs). Pure: time comes in through [`SignInput`].

use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use sha2::Sha256;

use crate::marketplace::{Diagnosis, Sign, SignInput, TokenNeed};
use crate::secret::Secret;
use crate::signing::{RequestHead, SignError};

/// Every v2 path starts with this; it is part of what is signed.
pub const API_PREFIX: &str = "/api/v2/";
/// Public APIs (partner-signed only) by path prefix...
const PUBLIC_PREFIXES: [&str; 2] = ["/api/v2/public/", "/api/v2/auth/"];
/// ...and by exact path.
const PUBLIC_PATHS: [&str; 2] = [
    "/api/v2/shop/auth_partner",
    "/api/v2/shop/cancel_auth_partner",
];

/// Which seller account a profile's token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// No account: the profile signs Public APIs only (or calls that bring their own id and token).
    None,
    Shop(u64),
    Merchant(u64),
}

/// What an API signs, by Shopee's three API types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    Public,
    Shop,
    Merchant,
}

impl ApiType {
    pub fn name(self) -> &'static str {
        match self {
            ApiType::Public => "Public",
            ApiType::Shop => "Shop",
            ApiType::Merchant => "Merchant",
        }
    }

    /// The query parameter that names the account for this type.
    pub fn id_param(self) -> Option<&'static str> {
        match self {
            ApiType::Public => None,
            ApiType::Shop => Some("shop_id"),
            ApiType::Merchant => Some("merchant_id"),
        }
    }
}

/// Whether `path` is a Public API (signed with partner_id, path and timestamp only).
pub fn is_public_path(path: &str) -> bool {
    PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) || PUBLIC_PATHS.contains(&path)
}

/// The spec's classification: Public by path; Merchant when the query names a merchant_id or the
/// profile is a merchant's; otherwise Shop.
pub fn classify(path: &str, query_has_merchant_id: bool, account: Account) -> ApiType {
    if is_public_path(path) {
        ApiType::Public
    } else if query_has_merchant_id || matches!(account, Account::Merchant(_)) {
        ApiType::Merchant
    } else {
        ApiType::Shop
    }
}

/// The base string: decimal partner_id, path, decimal timestamp, then (Shop/Merchant) the access
/// token and the decimal shop_id or merchant_id. Nothing else: no other parameter, no body.
pub fn base_string(
    partner_id: u64,
    path: &str,
    timestamp: u64,
    account: Option<(&str, u64)>,
) -> String {
    let mut base = format!("{partner_id}{path}{timestamp}");
    if let Some((access_token, id)) = account {
        base.push_str(access_token);
        base.push_str(&id.to_string());
    }
    base
}

/// Lowercase hex HMAC-SHA256 of `base`, keyed with the partner key's UTF-8 bytes as configured
/// (never hex-decoded: every official sample uses the text).
pub fn hmac_hex(partner_key: &str, base: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(base);
    hex::encode(mac.finalize().into_bytes())
}

/// One Shopee app (partner) and, optionally, the shop or merchant its token belongs to.
#[derive(Debug, Clone)]
pub struct ShopeeCredentials {
    pub partner_id: u64,
    pub partner_key: Secret,
    pub account: Account,
}

impl Sign for ShopeeCredentials {
    fn scheme(&self) -> String {
        format!(
            "Shopee Open Platform v2 HMAC-SHA256 (partner {})",
            self.partner_id
        )
    }

    fn token_need(&self, head: &RequestHead) -> TokenNeed {
        let path = head.path();
        let signable = matches!(head.method, Method::GET | Method::POST)
            && path.starts_with(API_PREFIX)
            && !is_public_path(path);
        if signable {
            TokenNeed::AccessToken
        } else {
            TokenNeed::None
        }
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        let prepared = prepare(self, input)?;
        Ok(prepared.head)
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        let prepared = prepare(self, input)?;
        Ok(prepared.explanation(input.body.len()))
    }

    fn rejection(&self, _status: StatusCode, body: &[u8]) -> Option<String> {
        let envelope = Envelope::parse(body)?;
        match envelope.error.as_str() {
            "error_sign" => Some("error_sign".to_owned()),
            "error_param" if envelope.message.to_ascii_lowercase().contains("timestamp") => {
                Some("error_param".to_owned())
            }
            _ => None,
        }
    }

    fn diagnose(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: crate::clock::Timestamp,
    ) -> Option<Diagnosis> {
        Some(super::doctor::diagnose(self, head, body, now))
    }
}

/// Shopee's response envelope, the part that says what went wrong (`error` is empty on success).
pub(super) struct Envelope {
    pub error: String,
    pub message: String,
}

impl Envelope {
    /// Absent and `null` fields read as empty: answers are not always consistent about them.
    pub(super) fn parse(body: &[u8]) -> Option<Envelope> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            error: Option<String>,
            #[serde(default)]
            message: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(body).ok()?;
        Some(Envelope {
            error: raw.error.unwrap_or_default(),
            message: raw.message.unwrap_or_default(),
        })
    }
}

/// A signed request and what went into it (for `explain`).
struct Prepared {
    head: RequestHead,
    api: ApiType,
    partner_id: u64,
    path: String,
    timestamp: u64,
    id: Option<u64>,
    has_token: bool,
}

impl Prepared {
    fn explanation(&self, body_len: usize) -> String {
        let masked = match (self.has_token, self.id) {
            (true, Some(id)) => format!("<access_token>{id}"),
            _ => String::new(),
        };
        let mut out = format!(
            "Shopee base string ({} API; partner key and access token masked):\n{}{}{}{masked}\n",
            self.api.name(),
            self.partner_id,
            self.path,
            self.timestamp
        );
        out.push_str(
            "sign: HMAC-SHA256 keyed with <partner_key> as UTF-8 text (not hex-decoded), lowercase hex\n",
        );
        out.push_str(&match body_len {
            0 => "not signed: the other query parameters; body: empty".to_owned(),
            n => format!(
                "not signed: the other query parameters and the body ({n} bytes, sent as is)"
            ),
        });
        out
    }
}

/// `%XX` decoded, `+` as a space, as the server reads a query value.
fn decode(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// A client's id parameter: a decimal integer, as Shopee's ids are.
fn parse_id(key: &str, value: &str) -> Result<u64, SignError> {
    match value.parse::<u64>() {
        Ok(id) if id.to_string() == value => Ok(id),
        _ => Err(SignError::BadRequest(format!(
            "query parameter `{key}` is `{value}`: Shopee ids are decimal integers (no sign, no leading zeros, no spaces)"
        ))),
    }
}

/// Sets the one value a key may carry, refusing a second: which copy Shopee would read is
/// undocumented, and the signature covers one.
fn once(slot: &mut Option<String>, key: &str, value: String) -> Result<(), SignError> {
    if slot.is_some() {
        return Err(SignError::BadRequest(format!(
            "query parameter `{key}` appears more than once; Shopee signs one value: send it once"
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn prepare(creds: &ShopeeCredentials, input: SignInput<'_>) -> Result<Prepared, SignError> {
    let SignInput {
        head: original,
        access_token: injected,
        now,
        ..
    } = input;
    if !matches!(original.method, Method::GET | Method::POST) {
        return Err(SignError::BadRequest(format!(
            "Shopee Open Platform APIs take GET or POST only; this request is {}",
            original.method
        )));
    }
    let path = original.path();
    if !path.starts_with(API_PREFIX) {
        return Err(SignError::BadRequest(format!(
            "the path `{path}` is not a Shopee Open Platform v2 API: v2 paths start with {API_PREFIX} (e.g. /api/v2/shop/get_shop_info)"
        )));
    }
    let raw_query = original.query().unwrap_or("");
    let pairs: Vec<(&str, String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (pair, decode(k), decode(v))
        })
        .collect();
    let mut client_shop = None;
    let mut client_merchant = None;
    let mut client_token = None;
    for (_, key, value) in &pairs {
        match key.as_str() {
            "shop_id" => once(&mut client_shop, key, value.clone())?,
            "merchant_id" => once(&mut client_merchant, key, value.clone())?,
            "access_token" => once(&mut client_token, key, value.clone())?,
            _ => {}
        }
    }
    let api = classify(path, client_merchant.is_some(), creds.account);
    // The proxy owns partner_id, timestamp, sign and the access token (re-added below for Shop
    // and Merchant calls; a Public API takes none, so a client's goes nowhere);
    // shop_id/merchant_id stay where the client put them.
    let owned = |key: &str| matches!(key, "partner_id" | "timestamp" | "sign" | "access_token");
    let mut path_and_query = String::with_capacity(original.path_and_query.len() + 200);
    path_and_query.push_str(path);
    path_and_query.push('?');
    for (pair, key, _) in &pairs {
        if !owned(key) {
            path_and_query.push_str(pair);
            path_and_query.push('&');
        }
    }
    let timestamp = now.secs();
    path_and_query.push_str(&format!(
        "partner_id={}&timestamp={timestamp}",
        creds.partner_id
    ));

    let mut id = None;
    let mut token_text: Option<String> = None;
    if let Some(id_param) = api.id_param() {
        let (client_id, profile_id) = match api {
            ApiType::Merchant => (
                &client_merchant,
                match creds.account {
                    Account::Merchant(m) => Some(m),
                    _ => None,
                },
            ),
            _ => (
                &client_shop,
                match creds.account {
                    Account::Shop(s) => Some(s),
                    _ => None,
                },
            ),
        };
        let client_id = client_id
            .as_deref()
            .map(|v| parse_id(id_param, v))
            .transpose()?;
        let chosen = match (client_id, profile_id) {
            (Some(c), _) => c,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(SignError::BadRequest(format!(
                    "this is a Shopee {} API and the request names no {id_param}: add `{id_param}=...` to the query, or set {id_param} in the [shopee.NAME] profile",
                    api.name()
                )))
            }
        };
        if let Some(token) = injected {
            // The profile's token belongs to the profile's account only: signing it with another
            // id gets an answer for the wrong shop, or an invalid-token error that would spend
            // the profile's refresh token for nothing.
            let belongs = profile_id == Some(chosen);
            if !belongs {
                let owner = match creds.account {
                    Account::Shop(s) => format!("shop_id {s}"),
                    Account::Merchant(m) => format!("merchant_id {m}"),
                    Account::None => "no account".to_owned(),
                };
                return Err(SignError::BadRequest(format!(
                    "the request is for {id_param} {chosen} but this profile's access token belongs to {owner}: give that account its own [shopee.NAME] profile and choose it with the header `x-signproxy-profile: NAME`"
                )));
            }
            token_text = Some(token.expose().to_owned());
        } else if let Some(own) = client_token.take() {
            token_text = Some(own);
        }
        let Some(token) = token_text.as_deref() else {
            return Err(SignError::BadRequest(format!(
                "this is a Shopee {} API and needs an access_token: give the profile refresh_token (managed) or access_token, or add `access_token=...` to the query",
                api.name()
            )));
        };
        path_and_query.push_str("&access_token=");
        path_and_query.extend(form_urlencoded::byte_serialize(token.as_bytes()));
        if client_id.is_none() {
            path_and_query.push_str(&format!("&{id_param}={chosen}"));
        }
        id = Some(chosen);
    }
    let base = base_string(
        creds.partner_id,
        path,
        timestamp,
        token_text.as_deref().zip(id),
    );
    let sign = hmac_hex(creds.partner_key.expose(), base.as_bytes());
    path_and_query.push_str("&sign=");
    path_and_query.push_str(&sign);
    Ok(Prepared {
        head: RequestHead {
            method: original.method.clone(),
            authority: original.authority.clone(),
            path_and_query,
            headers: original.headers.clone(),
        },
        api,
        partner_id: creds.partner_id,
        path: path.to_owned(),
        timestamp,
        id,
        has_token: token_text.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use http::HeaderMap;

    const PARTNER: u64 = 2001887;
    const TS: u64 = 1655714431;
    const KEY: &str = "shpk4c6e6a4d5a6c4b6e4e6f6a4d4a6b4c6e6f4e6a4d4b6c";
    const SHOP_TOKEN: &str = "59777174636562737266615546704c6d";
    const SHOP: u64 = 14701711;
    const MERCHANT_TOKEN: &str = "09777174636962737266615546704c6d";
    const MERCHANT: u64 = 1000000;

    fn creds(account: Account) -> ShopeeCredentials {
        ShopeeCredentials {
            partner_id: PARTNER,
            partner_key: Secret::new(KEY),
            account,
        }
    }

    fn head(method: Method, pq: &str) -> RequestHead {
        RequestHead {
            method,
            authority: "partner.shopeemobile.com".into(),
            path_and_query: pq.into(),
            headers: HeaderMap::new(),
        }
    }

    fn sign_with(
        c: &ShopeeCredentials,
        h: &RequestHead,
        body: &[u8],
        token: Option<&str>,
        now: u64,
    ) -> Result<RequestHead, SignError> {
        let token = token.map(Secret::new);
        c.sign(SignInput {
            head: h,
            body,
            access_token: token.as_ref(),
            now: Timestamp::from_secs(now),
        })
    }

    fn param(h: &RequestHead, key: &str) -> Vec<String> {
        form_urlencoded::parse(h.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    fn sign_of(h: &RequestHead) -> String {
        param(h, "sign").pop().unwrap()
    }

    /// The reference: HMAC-SHA256 with the hmac crate over a literal base string.
    fn reference(key: &[u8], base: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(base.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    const DOC_SHOP: &str =
        "2001887/api/v2/shop/get_shop_info165571443159777174636562737266615546704c6d14701711";
    const DOC_MERCHANT: &str =
        "2001887/api/v2/global_product/get_category165571443109777174636962737266615546704c6d1000000";
    const DOC_PUBLIC: &str = "2001887/api/v2/public/get_shops_by_partner1655714431";

    #[test]
    fn the_docs_base_string_shapes_are_reproduced_exactly() {
        assert_eq!(
            base_string(
                PARTNER,
                "/api/v2/shop/get_shop_info",
                TS,
                Some((SHOP_TOKEN, SHOP))
            ),
            DOC_SHOP
        );
        assert_eq!(
            base_string(
                PARTNER,
                "/api/v2/global_product/get_category",
                TS,
                Some((MERCHANT_TOKEN, MERCHANT))
            ),
            DOC_MERCHANT
        );
        assert_eq!(
            base_string(PARTNER, "/api/v2/public/get_shops_by_partner", TS, None),
            DOC_PUBLIC
        );
    }

    #[test]
    fn shop_call_signs_the_doc_shop_base() {
        let h = sign_with(
            &creds(Account::Shop(SHOP)),
            &head(Method::GET, "/api/v2/shop/get_shop_info"),
            b"",
            Some(SHOP_TOKEN),
            TS,
        )
        .unwrap();
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), DOC_SHOP));
        assert_eq!(
            h.path_and_query,
            format!(
                "/api/v2/shop/get_shop_info?partner_id={PARTNER}&timestamp={TS}&access_token={SHOP_TOKEN}&shop_id={SHOP}&sign={}",
                reference(KEY.as_bytes(), DOC_SHOP)
            )
        );
    }

    #[test]
    fn merchant_call_signs_the_doc_merchant_base() {
        // A merchant profile...
        let h = sign_with(
            &creds(Account::Merchant(MERCHANT)),
            &head(Method::GET, "/api/v2/global_product/get_category"),
            b"",
            Some(MERCHANT_TOKEN),
            TS,
        )
        .unwrap();
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), DOC_MERCHANT));
        assert_eq!(param(&h, "merchant_id"), vec![MERCHANT.to_string()]);
        assert!(param(&h, "shop_id").is_empty());
        // ...or a merchant_id in the query, with the client's own token (the profile has none).
        let h = sign_with(
            &creds(Account::None),
            &head(
                Method::GET,
                &format!("/api/v2/global_product/get_category?merchant_id={MERCHANT}&access_token={MERCHANT_TOKEN}"),
            ),
            b"",
            None,
            TS,
        )
        .unwrap();
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), DOC_MERCHANT));
        assert_eq!(param(&h, "merchant_id"), vec![MERCHANT.to_string()]);
        assert_eq!(param(&h, "access_token"), vec![MERCHANT_TOKEN.to_owned()]);
    }

    #[test]
    fn public_call_signs_the_doc_public_base_without_token_or_id() {
        let h = sign_with(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::GET,
                "/api/v2/public/get_shops_by_partner?page_size=10",
            ),
            b"",
            None,
            TS,
        )
        .unwrap();
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), DOC_PUBLIC));
        assert!(param(&h, "access_token").is_empty() && param(&h, "shop_id").is_empty());
        assert!(h.path_and_query.starts_with(
            "/api/v2/public/get_shops_by_partner?page_size=10&partner_id=2001887&timestamp=1655714431&sign="
        ));
        for path in [
            "/api/v2/auth/token/get",
            "/api/v2/auth/access_token/get",
            "/api/v2/shop/auth_partner",
            "/api/v2/shop/cancel_auth_partner",
        ] {
            assert!(is_public_path(path), "{path}");
        }
        assert!(!is_public_path("/api/v2/shop/get_shop_info"));
        assert!(!is_public_path("/api/v2/shop/auth_partner_x"));
        // A Public API takes no token: a client's goes nowhere.
        let h = sign_with(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::GET,
                "/api/v2/public/get_shops_by_partner?access_token=CLIENT_AT&page_size=10",
            ),
            b"",
            None,
            TS,
        )
        .unwrap();
        assert!(param(&h, "access_token").is_empty(), "{}", h.path_and_query);
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), DOC_PUBLIC));
    }

    /// Each mistake of the spec's list gives another sign than the proxy's.
    #[test]
    fn each_rule_is_load_bearing() {
        let right = sign_of(
            &sign_with(
                &creds(Account::Shop(SHOP)),
                &head(Method::GET, "/api/v2/shop/get_shop_info"),
                b"",
                Some(SHOP_TOKEN),
                TS,
            )
            .unwrap(),
        );
        assert_eq!(right, reference(KEY.as_bytes(), DOC_SHOP));
        let decoded_key = hex::decode(KEY.trim_start_matches("shpk")).unwrap();
        let mistakes = [
            ("hex-decoded key", reference(&decoded_key, DOC_SHOP)),
            (
                "shpk stripped",
                reference(KEY.trim_start_matches("shpk").as_bytes(), DOC_SHOP),
            ),
            (
                "ms timestamp",
                reference(
                    KEY.as_bytes(),
                    &DOC_SHOP.replace("1655714431", "1655714431000"),
                ),
            ),
            (
                "uppercase",
                reference(KEY.as_bytes(), DOC_SHOP).to_uppercase(),
            ),
            (
                "path without /api/v2",
                reference(KEY.as_bytes(), &DOC_SHOP.replace("/api/v2", "")),
            ),
            (
                "host in path",
                reference(
                    KEY.as_bytes(),
                    &DOC_SHOP.replace("/api", "https://partner.shopeemobile.com/api"),
                ),
            ),
            (
                "no access token",
                reference(KEY.as_bytes(), &DOC_SHOP.replace(SHOP_TOKEN, "")),
            ),
            (
                "no shop id",
                reference(KEY.as_bytes(), DOC_SHOP.trim_end_matches("14701711")),
            ),
            (
                "body appended",
                reference(KEY.as_bytes(), &format!("{DOC_SHOP}{{}}")),
            ),
        ];
        for (what, sign) in mistakes {
            assert_ne!(right, sign, "{what}");
        }
        // Public: a token or shop_id in the base is wrong.
        let public = sign_of(
            &sign_with(
                &creds(Account::Shop(SHOP)),
                &head(Method::GET, "/api/v2/public/get_shops_by_partner"),
                b"",
                None,
                TS,
            )
            .unwrap(),
        );
        assert_eq!(public, reference(KEY.as_bytes(), DOC_PUBLIC));
        for wrong in [
            format!("{DOC_PUBLIC}{SHOP_TOKEN}{SHOP}"),
            format!("{DOC_PUBLIC}{SHOP}"),
            format!("{DOC_PUBLIC}{SHOP_TOKEN}"),
        ] {
            assert_ne!(public, reference(KEY.as_bytes(), &wrong), "{wrong}");
        }
    }

    #[test]
    fn client_copies_are_replaced_and_the_rest_goes_byte_for_byte() {
        let h = sign_with(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::POST,
                "/api/v2/product/get_item_list?offset=0&partner_id=1&timestamp=1655714431000&sign=ABC&access_token=client&item_status=NORMAL&q=a+b%2Fc",
            ),
            br#"{"a": 1}"#,
            Some(SHOP_TOKEN),
            TS,
        )
        .unwrap();
        assert_eq!(param(&h, "partner_id"), vec![PARTNER.to_string()]);
        assert_eq!(param(&h, "timestamp"), vec![TS.to_string()]);
        assert_eq!(param(&h, "access_token"), vec![SHOP_TOKEN.to_owned()]);
        assert_eq!(param(&h, "sign").len(), 1);
        assert!(
            h.path_and_query.starts_with(
                "/api/v2/product/get_item_list?offset=0&item_status=NORMAL&q=a+b%2Fc&partner_id="
            ),
            "{}",
            h.path_and_query
        );
        // The body and other params are not signed.
        let base = base_string(
            PARTNER,
            "/api/v2/product/get_item_list",
            TS,
            Some((SHOP_TOKEN, SHOP)),
        );
        assert_eq!(sign_of(&h), reference(KEY.as_bytes(), &base));
    }

    #[test]
    fn the_clients_token_is_signed_only_when_the_profile_holds_none() {
        let h = sign_with(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::GET,
                "/api/v2/shop/get_shop_info?access_token=client-own",
            ),
            b"",
            None,
            TS,
        )
        .unwrap();
        assert_eq!(param(&h, "access_token"), vec!["client-own".to_owned()]);
        assert_eq!(
            sign_of(&h),
            reference(
                KEY.as_bytes(),
                &base_string(
                    PARTNER,
                    "/api/v2/shop/get_shop_info",
                    TS,
                    Some(("client-own", SHOP))
                )
            )
        );
    }

    #[test]
    fn a_clients_shop_id_is_kept_and_signed() {
        let h = sign_with(
            &creds(Account::None),
            &head(
                Method::GET,
                "/api/v2/shop/get_shop_info?shop_id=42&access_token=t",
            ),
            b"",
            None,
            TS,
        )
        .unwrap();
        assert_eq!(param(&h, "shop_id"), vec!["42".to_owned()]);
        assert!(h
            .path_and_query
            .starts_with("/api/v2/shop/get_shop_info?shop_id=42&partner_id="));
        assert_eq!(
            sign_of(&h),
            reference(
                KEY.as_bytes(),
                &format!("{PARTNER}/api/v2/shop/get_shop_info{TS}t42")
            )
        );
    }

    fn refusal(c: &ShopeeCredentials, h: &RequestHead, token: Option<&str>) -> String {
        match sign_with(c, h, b"", token, TS) {
            Err(SignError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn what_cannot_be_signed_is_refused_saying_what_to_add() {
        let m = refusal(
            &creds(Account::None),
            &head(Method::GET, "/api/v2/shop/get_shop_info?access_token=t"),
            None,
        );
        assert!(m.contains("shop_id"), "{m}");
        let m = refusal(
            &creds(Account::Shop(SHOP)),
            &head(Method::GET, "/api/v2/shop/get_shop_info"),
            None,
        );
        assert!(m.contains("access_token"), "{m}");
        let m = refusal(
            &creds(Account::Shop(SHOP)),
            &head(Method::GET, "/api/v2/shop/get_shop_info?shop_id=999"),
            Some(SHOP_TOKEN),
        );
        assert!(
            m.contains("x-signproxy-profile") && m.contains("999"),
            "{m}"
        );
        let m = refusal(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::GET,
                "/api/v2/global_product/get_category?merchant_id=5",
            ),
            Some(SHOP_TOKEN),
        );
        assert!(m.contains("x-signproxy-profile"), "{m}");
        let m = refusal(
            &creds(Account::Shop(SHOP)),
            &head(Method::PUT, "/api/v2/shop/get_shop_info"),
            Some(SHOP_TOKEN),
        );
        assert!(m.contains("GET or POST"), "{m}");
        let m = refusal(
            &creds(Account::Shop(SHOP)),
            &head(Method::GET, "/shop/get_shop_info"),
            Some(SHOP_TOKEN),
        );
        assert!(m.contains("/api/v2/"), "{m}");
        let m = refusal(
            &creds(Account::None),
            &head(
                Method::GET,
                "/api/v2/shop/get_shop_info?shop_id=01&access_token=t",
            ),
            None,
        );
        assert!(m.contains("decimal"), "{m}");
        let m = refusal(
            &creds(Account::None),
            &head(
                Method::GET,
                "/api/v2/shop/get_shop_info?shop_id=1&shop_id=2&access_token=t",
            ),
            None,
        );
        assert!(m.contains("more than once"), "{m}");
        // The profile's own id, given by the client, is fine.
        assert!(sign_with(
            &creds(Account::Shop(SHOP)),
            &head(
                Method::GET,
                &format!("/api/v2/shop/get_shop_info?shop_id={SHOP}")
            ),
            b"",
            Some(SHOP_TOKEN),
            TS
        )
        .is_ok());
    }

    #[test]
    fn only_shop_and_merchant_calls_want_a_token() {
        let c = creds(Account::Shop(SHOP));
        let need = |m: Method, p: &str| c.token_need(&head(m, p));
        assert_eq!(
            need(Method::GET, "/api/v2/shop/get_shop_info"),
            TokenNeed::AccessToken
        );
        assert_eq!(
            need(Method::POST, "/api/v2/product/add_item"),
            TokenNeed::AccessToken
        );
        assert_eq!(
            need(Method::GET, "/api/v2/public/get_shops_by_partner"),
            TokenNeed::None
        );
        assert_eq!(
            need(Method::POST, "/api/v2/auth/token/get"),
            TokenNeed::None
        );
        assert_eq!(
            need(Method::DELETE, "/api/v2/shop/get_shop_info"),
            TokenNeed::None
        );
    }

    #[test]
    fn each_second_gives_a_fresh_sign_in_seconds() {
        let c = creds(Account::Shop(SHOP));
        let h = head(Method::GET, "/api/v2/shop/get_shop_info");
        let a = sign_with(&c, &h, b"", Some(SHOP_TOKEN), TS).unwrap();
        let b = sign_with(&c, &h, b"", Some(SHOP_TOKEN), TS + 1).unwrap();
        assert_ne!(sign_of(&a), sign_of(&b));
        assert_eq!(param(&b, "timestamp"), vec![(TS + 1).to_string()]);
        let s = sign_of(&a);
        assert_eq!(s.len(), 64);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_explanations() {
        let c = creds(Account::Shop(SHOP));
        assert!(!format!("{c:?}").contains(KEY));
        let token = Secret::new(SHOP_TOKEN);
        let h = head(Method::POST, "/api/v2/shop/get_shop_info");
        let input = SignInput {
            head: &h,
            body: b"{}",
            access_token: Some(&token),
            now: Timestamp::from_secs(TS),
        };
        let e = c.explain(input).unwrap();
        assert!(!e.contains(KEY) && !e.contains(SHOP_TOKEN), "{e}");
        assert!(
            e.contains("2001887/api/v2/shop/get_shop_info1655714431<access_token>14701711"),
            "{e}"
        );
        assert!(e.contains("Shop API"), "{e}");
    }

    #[test]
    fn sign_and_timestamp_rejections_are_recognised_and_nothing_else() {
        let c = creds(Account::Shop(SHOP));
        let s = StatusCode::FORBIDDEN;
        assert_eq!(
            c.rejection(
                s,
                br#"{"request_id":"r","error":"error_sign","message":"Wrong sign."}"#
            ),
            Some("error_sign".to_owned())
        );
        assert_eq!(
            c.rejection(
                s,
                br#"{"error":"error_param","message":"Invalid timestamp"}"#
            ),
            Some("error_param".to_owned())
        );
        assert_eq!(
            c.rejection(
                s,
                br#"{"error":"error_param","message":"item_id is required"}"#
            ),
            None
        );
        assert_eq!(
            c.rejection(
                s,
                br#"{"error":"invalid_acceess_token","message":"Invalid access token"}"#
            ),
            None
        );
        assert_eq!(c.rejection(s, b"<html>"), None);
        assert_eq!(
            c.rejection(s, br#"{"error":null,"message":null,"response":{}}"#),
            None
        );
        assert_eq!(
            c.rejection(s, br#"{"error":"error_sign","message":null}"#),
            Some("error_sign".to_owned())
        );
    }
}
