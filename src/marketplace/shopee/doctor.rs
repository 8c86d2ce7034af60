//! The Shopee doctor: given a request the user's own code signed, recompute the `sign` for its own
//! `timestamp`, token and id and, when it differs, find which of the spec's known mistakes
//! reproduces it.

use super::sign::{classify, hmac_hex, Account, ApiType, ShopeeCredentials};
use super::{LEGACY_SANDBOX_HOSTS, SANDBOX_HOSTS, TIMESTAMP_WINDOW_SECS};
use crate::clock::Timestamp;
use crate::marketplace::Diagnosis;
use crate::signing::RequestHead;

/// One way of getting the signature wrong: the base it signed, and with which key bytes.
struct Variant {
    mistake: String,
    base: String,
    key: Vec<u8>,
    /// How the digest was printed.
    print: Print,
}

#[derive(Clone, Copy)]
enum Print {
    Lower,
    Upper,
    /// `%032x`-style formatting that drops leading zeros (the doc's Java samples).
    NoLeadingZeros,
}

fn mask(base: &str, token: Option<&str>) -> String {
    match token.filter(|t| !t.is_empty()) {
        Some(t) => base.replace(t, "<access_token>"),
        None => base.to_owned(),
    }
}

pub fn diagnose(
    creds: &ShopeeCredentials,
    head: &RequestHead,
    body: &[u8],
    now: Timestamp,
) -> Diagnosis {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(head.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let path = head.path();
    let mut notes = Vec::new();
    let host = head
        .authority
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if LEGACY_SANDBOX_HOSTS.contains(&host.as_str()) {
        notes.push(format!(
            "`{host}` is an old sandbox host that answers error_sign to every signature: use {}",
            SANDBOX_HOSTS[0]
        ));
    }
    let Some(user_sign) = value("sign") else {
        return Diagnosis::invalid(
            "the request carries no `sign` query parameter",
            String::new(),
            notes,
        );
    };
    let partner_id = creds.partner_id.to_string();
    match value("partner_id") {
        None => notes.push("the request has no `partner_id` query parameter".to_owned()),
        Some(p) if p != partner_id => notes.push(format!(
            "`partner_id` is `{p}` but the profile's is {partner_id}: the request was signed for another app"
        )),
        Some(_) => {}
    }
    let timestamp = value("timestamp").unwrap_or_default();
    notes.extend(timestamp_notes(&timestamp, now));
    let token = value("access_token");
    let shop_id = value("shop_id");
    let merchant_id = value("merchant_id");
    let api = classify(path, merchant_id.is_some(), creds.account);
    // Signed with the request's own values: the doctor judges the signer, not the values.
    let prefix = format!("{partner_id}{path}{timestamp}");
    let id = match api {
        ApiType::Public => None,
        ApiType::Shop => shop_id.clone().or(match creds.account {
            Account::Shop(s) => Some(s.to_string()),
            _ => None,
        }),
        ApiType::Merchant => merchant_id.clone().or(match creds.account {
            Account::Merchant(m) => Some(m.to_string()),
            _ => None,
        }),
    };
    let expected_base = match api {
        ApiType::Public => prefix.clone(),
        _ => format!(
            "{prefix}{}{}",
            token.as_deref().unwrap_or(""),
            id.as_deref().unwrap_or("")
        ),
    };
    if api != ApiType::Public {
        if token.is_none() {
            notes.push(format!(
                "this is a {} API and the request has no `access_token` query parameter",
                api.name()
            ));
        }
        if id.is_none() {
            let name = api.id_param().unwrap_or_default();
            notes.push(format!(
                "this is a {} API and the request has no `{name}` query parameter",
                api.name()
            ));
        }
    }
    let key = creds.partner_key.expose();
    let expected = hmac_hex(key, expected_base.as_bytes());
    // The token endpoints' bodies carry a refresh token or an authorization code: a variant
    // that shows the body or the refresh token in a base shows them by name only.
    let body_secrets: Vec<(String, &str)> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .map(|b| {
            [("refresh_token", "<refresh_token>"), ("code", "<code>")]
                .into_iter()
                .filter_map(|(k, shown)| {
                    b[k].as_str()
                        .filter(|v| !v.is_empty())
                        .map(|v| (v.to_owned(), shown))
                })
                .collect()
        })
        .unwrap_or_default();
    let shown = |base: &str| {
        body_secrets
            .iter()
            .fold(mask(base, token.as_deref()), |text, (value, name)| {
                text.replace(value.as_str(), name)
            })
    };
    let ms = timestamp.len() >= 13 && timestamp.bytes().all(|b| b.is_ascii_digit());
    if user_sign == expected {
        if ms {
            return Diagnosis {
                valid: false,
                verdict: "the signature matches its timestamp, but the timestamp is in milliseconds: Shopee refuses it".to_owned(),
                mistake: Some("timestamp in milliseconds; Shopee wants Unix seconds".to_owned()),
                expected: shown(&expected_base),
                signed: Some(shown(&expected_base)),
                notes,
            };
        }
        return Diagnosis {
            valid: true,
            verdict: format!(
                "the signature is right for this {} API request and its timestamp",
                api.name()
            ),
            mistake: None,
            expected: shown(&expected_base),
            signed: None,
            notes,
        };
    }
    let ids = Ids {
        token: token.as_deref(),
        shop_id: shop_id.as_deref(),
        merchant_id: merchant_id.as_deref(),
        id: id.as_deref(),
    };
    for v in variants(creds, head, body, api, &prefix, &expected_base, &ids) {
        let digest = hmac_with(&v.key, v.base.as_bytes());
        let printed = match v.print {
            Print::Lower => digest,
            Print::Upper => digest.to_ascii_uppercase(),
            Print::NoLeadingZeros => digest.trim_start_matches('0').to_owned(),
        };
        if printed == user_sign {
            return Diagnosis {
                valid: false,
                verdict: format!("the signature is wrong: {}", v.mistake),
                mistake: Some(v.mistake),
                expected: shown(&expected_base),
                signed: Some(shown(&v.base)),
                notes,
            };
        }
    }
    Diagnosis::invalid(
        "the signature is wrong, and none of the usual mistakes reproduces it (another app's or environment's partner key? an old sandbox host?)",
        shown(&expected_base),
        notes,
    )
}

/// The values of the request that a base string may (wrongly) carry.
struct Ids<'a> {
    token: Option<&'a str>,
    shop_id: Option<&'a str>,
    merchant_id: Option<&'a str>,
    /// The id the right base uses.
    id: Option<&'a str>,
}

fn variants(
    creds: &ShopeeCredentials,
    head: &RequestHead,
    body: &[u8],
    api: ApiType,
    prefix: &str,
    expected_base: &str,
    ids: &Ids<'_>,
) -> Vec<Variant> {
    let text = creds.partner_key.expose();
    let key = text.as_bytes().to_vec();
    let v = |mistake: &str, base: String| Variant {
        mistake: mistake.to_owned(),
        base,
        key: key.clone(),
        print: Print::Lower,
    };
    let mut out = vec![
        Variant {
            print: Print::Upper,
            ..v("the hex is upper-case; Shopee wants lower-case", expected_base.to_owned())
        },
        Variant {
            print: Print::NoLeadingZeros,
            ..v(
                "the sign lost its leading zero(s) (formatted like `%032x`, as the doc's Java samples do): print all 64 hex digits",
                expected_base.to_owned(),
            )
        },
    ];
    // The key's bytes, other than its text.
    let hexless = text.strip_prefix("shpk").unwrap_or(text);
    if let Ok(decoded) = hex::decode(hexless) {
        out.push(Variant {
            key: decoded,
            ..v(
                "the partner key was hex-decoded; Shopee keys with its text, exactly as the console shows it",
                expected_base.to_owned(),
            )
        });
    }
    if let Some(stripped) = text.strip_prefix("shpk") {
        out.push(Variant {
            key: stripped.as_bytes().to_vec(),
            ..v(
                "the `shpk` prefix was stripped from the partner key; use the key verbatim",
                expected_base.to_owned(),
            )
        });
    } else {
        out.push(Variant {
            key: format!("shpk{text}").into_bytes(),
            ..v(
                "a `shpk` prefix was added to the partner key; use the key verbatim",
                expected_base.to_owned(),
            )
        });
    }
    let path = head.path();
    let rest = &expected_base[prefix.len()..];
    let (pid, ts) = {
        let without_path = prefix.split_once(path).unwrap_or((prefix, ""));
        (without_path.0.to_owned(), without_path.1.to_owned())
    };
    if let Some(short) = path.strip_prefix("/api/v2") {
        out.push(v(
            "the path was signed without `/api/v2`; sign the whole path",
            format!("{pid}{short}{ts}{rest}"),
        ));
    }
    out.push(v(
        "the path was signed with the host; sign the path alone",
        format!("{pid}https://{}{path}{ts}{rest}", head.authority),
    ));
    out.push(v(
        "the path was signed with the host; sign the path alone",
        format!("{pid}{}{path}{ts}{rest}", head.authority),
    ));
    if let Some(query) = head.query() {
        // The query as the client sent it, without the sign it computed afterwards.
        let unsigned: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("sign="))
            .collect();
        out.push(v(
            "the path was signed with its query; sign the path alone",
            format!("{pid}{path}?{}{ts}{rest}", unsigned.join("&")),
        ));
    }
    if !body.is_empty() {
        out.push(v(
            "the body was appended to the base string; Shopee signs no request parameters and no body",
            format!("{expected_base}{}", String::from_utf8_lossy(body)),
        ));
    }
    match api {
        ApiType::Public => {
            let refresh_token = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|b| b["refresh_token"].as_str().map(str::to_owned));
            let body_id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|b| b["shop_id"].as_u64().or(b["merchant_id"].as_u64()))
                .map(|id| id.to_string());
            let id = ids.shop_id.or(ids.merchant_id).or(body_id.as_deref());
            let public = "a Public API signs partner_id, path and timestamp only";
            if let (Some(t), Some(i)) = (ids.token, id) {
                out.push(v(
                    &format!(
                        "access_token and shop_id/merchant_id were added to the base; {public}"
                    ),
                    format!("{prefix}{t}{i}"),
                ));
            }
            if let Some(t) = ids.token {
                out.push(v(
                    &format!("access_token was added to the base; {public}"),
                    format!("{prefix}{t}"),
                ));
            }
            if let Some(i) = id {
                out.push(v(
                    &format!("shop_id/merchant_id was added to the base; {public}"),
                    format!("{prefix}{i}"),
                ));
            }
            if let Some(rt) = refresh_token {
                out.push(v(
                    &format!("the refresh token was added to the base; {public} (the token endpoints too)"),
                    format!("{prefix}{rt}"),
                ));
                if let Some(i) = id {
                    out.push(v(
                        &format!("the refresh token and id were added to the base; {public} (the token endpoints too)"),
                        format!("{prefix}{rt}{i}"),
                    ));
                }
            }
        }
        ApiType::Shop | ApiType::Merchant => {
            let kind = api.name();
            out.push(v(
                &format!("access_token and the id are missing from the base; a {kind} API signs partner_id, path, timestamp, access_token and its id"),
                prefix.to_owned(),
            ));
            if let Some(id) = ids.id {
                out.push(v(
                    &format!("access_token is missing from the base; a {kind} API signs it after the timestamp"),
                    format!("{prefix}{id}"),
                ));
            }
            if let Some(t) = ids.token {
                out.push(v(
                    &format!("the id is missing from the base; a {kind} API signs it after the access_token"),
                    format!("{prefix}{t}"),
                ));
                if let Some(id) = ids.id {
                    out.push(v(
                        "the id and access_token are in the wrong order; the base is partner_id, path, timestamp, access_token, id",
                        format!("{prefix}{id}{t}"),
                    ));
                }
            }
            if api == ApiType::Merchant {
                if let (Some(t), Some(s)) = (ids.token, ids.shop_id) {
                    out.push(v(
                        "shop_id was signed on a Merchant API; sign merchant_id",
                        format!("{prefix}{t}{s}"),
                    ));
                }
            }
        }
    }
    out
}

fn hmac_with(key: &[u8], base: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(base);
    hex::encode(mac.finalize().into_bytes())
}

fn timestamp_notes(text: &str, now: Timestamp) -> Vec<String> {
    if text.is_empty() {
        return vec!["the request has no `timestamp` query parameter".to_owned()];
    }
    let Ok(value) = text.parse::<u64>() else {
        return vec![format!(
            "`timestamp` is `{text}`: Shopee wants whole Unix seconds (an integer)"
        )];
    };
    if text.len() >= 13 {
        return vec![format!(
            "`timestamp` {value} looks like milliseconds: Shopee wants Unix seconds"
        )];
    }
    let now = now.secs();
    let mut notes = Vec::new();
    if value > now + TIMESTAMP_WINDOW_SECS {
        notes.push(format!(
            "`timestamp` is {} s in the future: check this machine's clock",
            value - now
        ));
    } else if now.saturating_sub(value) > TIMESTAMP_WINDOW_SECS {
        notes.push(format!(
            "`timestamp` is {} s old: Shopee accepts 5 minutes; sign each request (and each retry) afresh",
            now - value
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use http::{HeaderMap, Method};

    const KEY: &str = "shpk4c6e6a4d5a6c4b6e4e6f6a4d4a6b";
    const PARTNER: u64 = 2001887;
    const NOW: u64 = 1_700_000_000;
    const TOKEN: &str = "59777174636562737266615546704c6d";
    const SHOP: u64 = 14701711;

    fn creds(account: Account) -> ShopeeCredentials {
        ShopeeCredentials {
            partner_id: PARTNER,
            partner_key: Secret::new(KEY),
            account,
        }
    }

    /// The reference HMAC, with the hmac crate over a literal base.
    fn hmac(key: &[u8], base: &str) -> String {
        hmac_with(key, base.as_bytes())
    }

    fn head(method: Method, pq: &str) -> RequestHead {
        RequestHead {
            method,
            authority: "partner.shopeemobile.com".into(),
            path_and_query: pq.into(),
            headers: HeaderMap::new(),
        }
    }

    fn shop_request(sign: &str) -> RequestHead {
        head(
            Method::GET,
            &format!("/api/v2/shop/get_shop_info?partner_id={PARTNER}&timestamp={NOW}&access_token={TOKEN}&shop_id={SHOP}&sign={sign}"),
        )
    }

    fn check(c: &ShopeeCredentials, h: &RequestHead, body: &[u8]) -> Diagnosis {
        diagnose(c, h, body, Timestamp::from_secs(NOW))
    }

    fn mistake(c: &ShopeeCredentials, h: &RequestHead, body: &[u8]) -> String {
        let d = check(c, h, body);
        assert!(!d.valid, "{d:?}");
        d.mistake
            .clone()
            .unwrap_or_else(|| panic!("no mistake named: {d:?}"))
    }

    const SHOP_BASE: &str =
        "2001887/api/v2/shop/get_shop_info170000000059777174636562737266615546704c6d14701711";

    #[test]
    fn a_right_shop_sign_is_valid_and_the_token_masked() {
        let c = creds(Account::Shop(SHOP));
        let d = check(&c, &shop_request(&hmac(KEY.as_bytes(), SHOP_BASE)), b"");
        assert!(d.valid, "{d:?}");
        assert_eq!(
            d.expected,
            "2001887/api/v2/shop/get_shop_info1700000000<access_token>14701711"
        );
    }

    #[test]
    fn each_known_mistake_is_named() {
        let c = creds(Account::Shop(SHOP));
        let k = KEY.as_bytes();
        let shop = |sign: String| mistake(&c, &shop_request(&sign), b"");
        assert!(shop(hmac(k, SHOP_BASE).to_uppercase()).contains("upper-case"));
        let decoded = hex::decode(KEY.trim_start_matches("shpk")).unwrap();
        assert!(shop(hmac(&decoded, SHOP_BASE)).contains("hex-decoded"));
        assert!(shop(hmac(&k[4..], SHOP_BASE)).contains("`shpk` prefix was stripped"));
        assert!(shop(hmac(k, &SHOP_BASE.replace("/api/v2", ""))).contains("without `/api/v2`"));
        assert!(shop(hmac(k, &SHOP_BASE.replace(TOKEN, ""))).contains("access_token is missing"));
        assert!(shop(hmac(k, SHOP_BASE.trim_end_matches("14701711"))).contains("id is missing"));
        assert!(shop(hmac(k, "2001887/api/v2/shop/get_shop_info1700000000"))
            .contains("access_token and the id are missing"));
        let with_host = SHOP_BASE.replace("/api", "https://partner.shopeemobile.com/api");
        assert!(shop(hmac(k, &with_host)).contains("with the host"));

        // A 63-character sign: the digest's leading zero dropped. Find a timestamp whose
        // digest starts with 0, as 1 in 16 do.
        let (ts, digest) = (NOW..NOW + 200)
            .map(|ts| {
                let base = format!("{PARTNER}/api/v2/shop/get_shop_info{ts}{TOKEN}{SHOP}");
                (ts, hmac(k, &base))
            })
            .find(|(_, d)| d.starts_with('0'))
            .unwrap();
        let h = head(
            Method::GET,
            &format!("/api/v2/shop/get_shop_info?partner_id={PARTNER}&timestamp={ts}&access_token={TOKEN}&shop_id={SHOP}&sign={}", digest.trim_start_matches('0')),
        );
        assert!(mistake(&c, &h, b"").contains("leading zero"));

        // Public API with the token and shop_id in its base.
        let public = |sign: &str| {
            head(
                Method::GET,
                &format!("/api/v2/public/get_shops_by_partner?partner_id={PARTNER}&timestamp={NOW}&access_token={TOKEN}&shop_id={SHOP}&sign={sign}"),
            )
        };
        let public_base = format!("{PARTNER}/api/v2/public/get_shops_by_partner{NOW}");
        assert!(check(&c, &public(&hmac(k, &public_base)), b"").valid);
        let m = mistake(
            &c,
            &public(&hmac(k, &format!("{public_base}{TOKEN}{SHOP}"))),
            b"",
        );
        assert!(
            m.contains("Public API signs partner_id, path and timestamp only"),
            "{m}"
        );

        // The refresh call with the refresh token in its base.
        let refresh_base = format!("{PARTNER}/api/v2/auth/access_token/get{NOW}");
        let body = format!(r#"{{"refresh_token":"rt-9","partner_id":{PARTNER},"shop_id":{SHOP}}}"#);
        let h = head(
            Method::POST,
            &format!(
                "/api/v2/auth/access_token/get?partner_id={PARTNER}&timestamp={NOW}&sign={}",
                hmac(k, &format!("{refresh_base}rt-9{SHOP}"))
            ),
        );
        assert!(mistake(&c, &h, body.as_bytes()).contains("refresh token"));
        // ...and the refresh token itself is shown by name only.
        let d = check(&c, &h, body.as_bytes());
        let shown = format!("{} {:?}", d.expected, d.signed);
        assert!(
            !shown.contains("rt-9") && shown.contains("<refresh_token>"),
            "{shown}"
        );
        let h = head(
            Method::POST,
            &format!(
                "/api/v2/auth/access_token/get?partner_id={PARTNER}&timestamp={NOW}&sign={}",
                hmac(k, &format!("{refresh_base}{}", body))
            ),
        );
        assert!(mistake(&c, &h, body.as_bytes()).contains("body was appended"));
        let d = check(&c, &h, body.as_bytes());
        assert!(!format!("{:?}", d.signed).contains("rt-9"), "{d:?}");

        // A Merchant API signed with shop_id.
        let m = creds(Account::Merchant(1000000));
        let h = head(
            Method::GET,
            &format!("/api/v2/global_product/get_category?partner_id={PARTNER}&timestamp={NOW}&access_token={TOKEN}&merchant_id=1000000&shop_id={SHOP}&sign={}",
                hmac(k, &format!("{PARTNER}/api/v2/global_product/get_category{NOW}{TOKEN}{SHOP}"))),
        );
        assert!(mistake(&m, &h, b"").contains("shop_id was signed on a Merchant API"));
    }

    #[test]
    fn timestamps_in_milliseconds_stale_or_for_another_app_are_flagged() {
        let c = creds(Account::Shop(SHOP));
        let ms = NOW * 1000;
        let base = format!("{PARTNER}/api/v2/shop/get_shop_info{ms}{TOKEN}{SHOP}");
        let h = head(
            Method::GET,
            &format!("/api/v2/shop/get_shop_info?partner_id={PARTNER}&timestamp={ms}&access_token={TOKEN}&shop_id={SHOP}&sign={}", hmac(KEY.as_bytes(), &base)),
        );
        let d = check(&c, &h, b"");
        assert!(!d.valid && d.mistake.unwrap().contains("milliseconds"));
        let stale = head(
            Method::GET,
            &format!(
                "/api/v2/shop/get_shop_info?partner_id=1&timestamp={}&sign=00",
                NOW - 400
            ),
        );
        let d = check(&c, &stale, b"");
        assert!(d.notes.iter().any(|n| n.contains("400 s old")), "{d:?}");
        assert!(d.notes.iter().any(|n| n.contains("another app")), "{d:?}");
        assert!(
            d.notes.iter().any(|n| n.contains("no `access_token`")),
            "{d:?}"
        );
        let mut legacy = shop_request("00");
        legacy.authority = "partner.uat.shopeemobile.com".into();
        let d = check(&c, &legacy, b"");
        assert!(
            d.notes.iter().any(|n| n.contains("old sandbox host")),
            "{d:?}"
        );
        let d = check(&c, &head(Method::GET, "/api/v2/shop/get_shop_info"), b"");
        assert!(!d.valid && d.verdict.contains("no `sign`"));
    }
}
