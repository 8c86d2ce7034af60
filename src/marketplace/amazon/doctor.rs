//! The SP-API doctor: there is no signature to recompute, so it judges what decides whether
//! Amazon answers 403: which token is where (LWA token or RDT, `x-amz-access-token` or a bearer
//! header), a SigV4 signature that no longer matters, and the regional host against the
//! marketplace ids the request names.

use crate::marketplace::Diagnosis;
use crate::signing::RequestHead;

use super::sign::{is_sigv4, AmazonSigner, ACCESS_TOKEN_HEADER, RDT_PREFIX};

/// Which region serves each marketplace id (SP-API "Marketplace IDs").
const MARKETPLACE_REGIONS: &[(&str, &str)] = &[
    ("ATVPDKIKX0DER", "na"),
    ("A2EUQ1WTGCTBG2", "na"),
    ("A1AM78C64UM0Y8", "na"),
    ("A2Q3Y263D00KWC", "na"),
    ("A1RKKUPIHCS9HS", "eu"),
    ("A1F83G8C2ARO7P", "eu"),
    ("A13V1IB3VIYZZH", "eu"),
    ("AMEN7PMS2XZ1D", "eu"),
    ("A1805IZSGTT6HS", "eu"),
    ("A1PA6795UKMFR9", "eu"),
    ("APJ6JRA9NG5V4", "eu"),
    ("A2NODRKZP88ZB9", "eu"),
    ("AE08WJ6YKNBMC", "eu"),
    ("A1C3SOZRARQ6R3", "eu"),
    ("ARBP9OOSHTCHU", "eu"),
    ("A33AVAJ2PDY3EV", "eu"),
    ("A17E79C6D8DWNP", "eu"),
    ("A2VIGQ35RCS4UG", "eu"),
    ("A21TJRUUN4KGTP", "eu"),
    ("A19VAU5U5O7RUS", "fe"),
    ("A39IBJ37TRP1C6", "fe"),
    ("A1VC38T7YXB528", "fe"),
];

/// The region of a marketplace id, if known.
pub fn marketplace_region(id: &str) -> Option<&'static str> {
    MARKETPLACE_REGIONS
        .iter()
        .find(|(m, _)| *m == id)
        .map(|(_, r)| *r)
}

/// The region a host serves (`sellingpartnerapi-eu.amazon.com`: `eu`; sandbox hosts too).
pub fn host_region(authority: &str) -> Option<&'static str> {
    let host = authority.split(':').next().unwrap_or_default();
    ["na", "eu", "fe"]
        .into_iter()
        .find(|r| host.ends_with(&format!("sellingpartnerapi-{r}.amazon.com")))
}

/// The marketplace ids in the query (`MarketplaceIds`, `marketplaceIds`, `marketplaceId`;
/// comma-separated lists included).
fn marketplace_ids(head: &RequestHead) -> Vec<String> {
    let query = head.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| {
            k.eq_ignore_ascii_case("marketplaceids") || k.eq_ignore_ascii_case("marketplaceid")
        })
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// What the doctor says about a request the app prepared itself.
pub fn diagnose(signer: &AmazonSigner, head: &RequestHead) -> Diagnosis {
    let restricted = signer.restricted_resource(head).ok().flatten();
    let expected = match &restricted {
        Some(r) => format!(
            "x-amz-access-token: a Restricted Data Token (Atz.sprdt|…) minted for {} {} with data elements [{}]; no signature",
            r.method,
            r.path,
            r.data_elements.join(",")
        ),
        None => "x-amz-access-token: the seller's LWA access token (Atza|…); no signature".to_owned(),
    };
    let mut notes = Vec::new();
    let mut verdict: Option<(&str, Option<String>)> = None;
    let token = head
        .headers
        .get(ACCESS_TOKEN_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let authorization = head.headers.get(http::header::AUTHORIZATION);
    if authorization.is_some_and(is_sigv4) {
        notes.push(
            "a SigV4 Authorization header (AWS4-HMAC-SHA256) is sent: SP-API has ignored it since 2023-10-02; the proxy removes it, and no SigV4 or IAM setup is needed".to_owned(),
        );
    }
    if head
        .headers
        .contains_key(super::sign::SECURITY_TOKEN_HEADER)
    {
        notes
            .push("x-amz-security-token (an STS session token for SigV4) is not needed".to_owned());
    }
    match token.as_deref() {
        None => {
            let bearer = authorization
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
            let mistake = bearer.then(|| {
                "the token is sent as Authorization: Bearer; SP-API reads it only from x-amz-access-token".to_owned()
            });
            verdict = Some((
                "no x-amz-access-token: SP-API answers 403 \"Access token is missing in the request header.\" (through signproxy, leave it out and the proxy adds it)",
                mistake,
            ));
        }
        Some(t) => {
            let is_rdt = t.starts_with(RDT_PREFIX);
            match (&restricted, is_rdt) {
                (Some(r), false) => {
                    verdict = Some((
                        "a plain LWA token on a restricted operation: SP-API answers 403 Unauthorized with empty details",
                        Some(format!(
                            "{} {} returns personal data and needs a Restricted Data Token (through signproxy, send no x-amz-access-token and the proxy mints one)",
                            r.method, r.path
                        )),
                    ));
                }
                (Some(_), true) => notes.push(
                    "the token is a Restricted Data Token: it works only if minted for this exact method and path (or its generic pattern) within the last hour".to_owned(),
                ),
                (None, true) => notes.push(
                    "a Restricted Data Token on an operation that needs none: it authorizes only the operations it was minted for; the LWA access token is what this call needs".to_owned(),
                ),
                (None, false) => {}
            }
        }
    }
    let host = host_region(&head.authority);
    if let Some(host) = host {
        let wrong: Vec<String> = marketplace_ids(head)
            .into_iter()
            .filter(|id| marketplace_region(id).is_some_and(|r| r != host))
            .collect();
        if let Some(id) = wrong.first() {
            let region = marketplace_region(id).unwrap_or_default();
            let message = format!(
                "marketplace {id} is served by sellingpartnerapi-{region}.amazon.com, not {}",
                head.authority
            );
            if verdict.is_none() {
                verdict = Some((
                    "the wrong regional host for the marketplace id",
                    Some(message),
                ));
            } else {
                notes.push(message);
            }
        }
    }
    match verdict {
        None => Diagnosis {
            valid: true,
            verdict: "the token is where SP-API reads it and of the kind this operation needs"
                .to_owned(),
            mistake: None,
            expected,
            signed: None,
            notes,
        },
        // The mistake goes in the verdict too: the one line every output shows.
        Some((text, mistake)) => {
            let verdict = match &mistake {
                Some(m) => format!("{text}: {m}"),
                None => text.to_owned(),
            };
            Diagnosis {
                mistake,
                ..Diagnosis::invalid(&verdict, expected, notes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use std::collections::BTreeMap;

    fn head(authority: &str, pq: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        RequestHead {
            method: Method::GET,
            authority: authority.to_owned(),
            path_and_query: pq.to_owned(),
            headers: map,
        }
    }

    fn signer() -> AmazonSigner {
        AmazonSigner {
            grantless: false,
            data_elements: BTreeMap::new(),
            restricted_reports: false,
        }
    }

    const NA: &str = "sellingpartnerapi-na.amazon.com";

    #[test]
    fn each_known_mistake_is_named() {
        let d = diagnose(
            &signer(),
            &head(
                NA,
                "/orders/v0/orders/1/address",
                &[("x-amz-access-token", "Atza|lwa")],
            ),
        );
        assert!(!d.valid);
        assert!(d.verdict.contains("plain LWA token"), "{d:?}");
        assert!(
            !format!("{d:?}").contains("Atza|lwa"),
            "the token is never shown"
        );

        let d = diagnose(
            &signer(),
            &head(
                NA,
                "/orders/v0/orders/1/address",
                &[("x-amz-access-token", "Atz.sprdt|r")],
            ),
        );
        assert!(d.valid, "{d:?}");

        let d = diagnose(
            &signer(),
            &head(
                NA,
                "/sellers/v1/marketplaceParticipations",
                &[("authorization", "Bearer Atza|x")],
            ),
        );
        assert!(!d.valid);
        assert!(d.mistake.unwrap().contains("Authorization: Bearer"));

        let d = diagnose(
            &signer(),
            &head(
                NA,
                "/catalog/2022-04-01/items?marketplaceIds=ATVPDKIKX0DER",
                &[
                    ("x-amz-access-token", "Atza|x"),
                    (
                        "authorization",
                        "AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature=00",
                    ),
                ],
            ),
        );
        assert!(d.valid, "{d:?}");
        assert!(d.notes.iter().any(|n| n.contains("SigV4")), "{d:?}");

        let d = diagnose(
            &signer(),
            &head(
                NA,
                "/catalog/2022-04-01/items?marketplaceIds=A1PA6795UKMFR9",
                &[("x-amz-access-token", "Atza|x")],
            ),
        );
        assert!(!d.valid);
        assert!(d
            .mistake
            .unwrap()
            .contains("sellingpartnerapi-eu.amazon.com"));
        assert_eq!(
            host_region("sandbox.sellingpartnerapi-fe.amazon.com"),
            Some("fe")
        );
    }
}
