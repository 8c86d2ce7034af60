//! Amazon SP-API "signing", pure: no signature since 2023-10-02, only the token in
//! `x-amz-access-token` (the LWA access token, or a Restricted Data Token for an operation that
//! returns personal data), stale SigV4 artefacts removed, and the restricted-operation table
//! that decides which token a request needs.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue, Method};

use crate::marketplace::{Diagnosis, RestrictedResource, Sign, SignInput, TokenNeed};
use crate::signing::{RequestHead, SignError};

/// Where SP-API takes its token (LWA access token or RDT).
pub const ACCESS_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-amz-access-token");
/// An STS session token for SigV4: useless since SigV4 is ignored, and a credential.
pub const SECURITY_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-amz-security-token");
/// The app's choice of data elements for this request's RDT (comma-separated; empty or `none`
/// for none). The proxy removes it before forwarding: it is not Amazon's.
pub const DATA_ELEMENTS_HEADER: HeaderName = HeaderName::from_static("x-signproxy-data-elements");
/// How Restricted Data Tokens start; LWA access tokens start `Atza|`.
pub const RDT_PREFIX: &str = "Atz.sprdt|";

/// One restricted operation: method, path pattern (`{x}` is one segment) and, where the API
/// takes them, the data elements asked for by default.
#[derive(Debug, Clone, Copy)]
pub struct RestrictedOp {
    pub name: &'static str,
    pub method: &'static str,
    pub pattern: &'static str,
    /// The default data elements (the spec's: buyer info and shipping address where they apply).
    pub data_elements: &'static [&'static str],
    /// Minted only when the profile opts in (getReportDocument: the path does not say whether
    /// the report type is restricted).
    pub opt_in: bool,
}

const fn op(
    name: &'static str,
    method: &'static str,
    pattern: &'static str,
    data_elements: &'static [&'static str],
) -> RestrictedOp {
    RestrictedOp {
        name,
        method,
        pattern,
        data_elements,
        opt_in: false,
    }
}

const BUYER_AND_ADDRESS: &[&str] = &["buyerInfo", "shippingAddress"];

/// The operations that need an RDT (Tokens API use-case guide). Orders v2026-01-01 needs none.
pub const RESTRICTED_OPERATIONS: &[RestrictedOp] = &[
    op("getOrders", "GET", "/orders/v0/orders", BUYER_AND_ADDRESS),
    op(
        "getOrder",
        "GET",
        "/orders/v0/orders/{orderId}",
        BUYER_AND_ADDRESS,
    ),
    op(
        "getOrderBuyerInfo",
        "GET",
        "/orders/v0/orders/{orderId}/buyerInfo",
        &[],
    ),
    op(
        "getOrderAddress",
        "GET",
        "/orders/v0/orders/{orderId}/address",
        &[],
    ),
    op(
        "getOrderItems",
        "GET",
        "/orders/v0/orders/{orderId}/orderItems",
        &["buyerInfo"],
    ),
    op(
        "getOrderItemsBuyerInfo",
        "GET",
        "/orders/v0/orders/{orderId}/orderItems/buyerInfo",
        &[],
    ),
    op(
        "getOrderRegulatedInfo",
        "GET",
        "/orders/v0/orders/{orderId}/regulatedInfo",
        &[],
    ),
    RestrictedOp {
        name: "getReportDocument",
        method: "GET",
        pattern: "/reports/2021-06-30/documents/{reportDocumentId}",
        data_elements: &[],
        opt_in: true,
    },
    op("getShipment", "GET", "/mfn/v0/shipments/{shipmentId}", &[]),
    op(
        "cancelShipment",
        "DELETE",
        "/mfn/v0/shipments/{shipmentId}",
        &[],
    ),
    op(
        "cancelShipmentOld",
        "PUT",
        "/mfn/v0/shipments/{shipmentId}/cancel",
        &[],
    ),
    op("createShipment", "POST", "/mfn/v0/shipments", &[]),
    op(
        "getOrders (direct fulfillment v1)",
        "GET",
        "/vendor/directFulfillment/orders/v1/purchaseOrders",
        &[],
    ),
    op(
        "getOrder (direct fulfillment v1)",
        "GET",
        "/vendor/directFulfillment/orders/v1/purchaseOrders/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getOrders (direct fulfillment 2021-12-28)",
        "GET",
        "/vendor/directFulfillment/orders/2021-12-28/purchaseOrders",
        &[],
    ),
    op(
        "getOrder (direct fulfillment 2021-12-28)",
        "GET",
        "/vendor/directFulfillment/orders/2021-12-28/purchaseOrders/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getShippingLabels (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/shippingLabels",
        &[],
    ),
    op(
        "getShippingLabel (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/shippingLabels/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getPackingSlips (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/packingSlips",
        &[],
    ),
    op(
        "getPackingSlip (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/packingSlips/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getCustomerInvoices (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/customerInvoices",
        &[],
    ),
    op(
        "getCustomerInvoice (v1)",
        "GET",
        "/vendor/directFulfillment/shipping/v1/customerInvoices/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getShippingLabels (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/shippingLabels",
        &[],
    ),
    op(
        "getShippingLabel (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/shippingLabels/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "createShippingLabels (2021-12-28)",
        "POST",
        "/vendor/directFulfillment/shipping/2021-12-28/shippingLabels/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getPackingSlips (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/packingSlips",
        &[],
    ),
    op(
        "getPackingSlip (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/packingSlips/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "getCustomerInvoices (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/customerInvoices",
        &[],
    ),
    op(
        "getCustomerInvoice (2021-12-28)",
        "GET",
        "/vendor/directFulfillment/shipping/2021-12-28/customerInvoices/{purchaseOrderNumber}",
        &[],
    ),
    op(
        "createScheduledPackageBulk",
        "POST",
        "/easyShip/2022-03-23/packages/bulk",
        &[],
    ),
    op(
        "getShipmentDetails",
        "GET",
        "/fba/outbound/brazil/v0/shipments/{shipmentId}",
        &[],
    ),
    op(
        "getShipment (shipping v1)",
        "GET",
        "/shipping/v1/shipments/{shipmentId}",
        &[],
    ),
];

/// Whether `path` fits `pattern`: same segments, `{x}` standing for any one non-empty segment.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The restricted operation `method` + `path` is, if any.
pub fn restricted_operation(method: &Method, path: &str) -> Option<&'static RestrictedOp> {
    RESTRICTED_OPERATIONS
        .iter()
        .find(|op| op.method == method.as_str() && path_matches(op.pattern, path))
}

/// An SP-API profile's request handling: which token a request gets, and the head it goes with.
#[derive(Debug, Clone)]
pub struct AmazonSigner {
    /// Grantless profiles (client credentials) have no seller: no RDT can be minted for them.
    pub grantless: bool,
    /// Data elements per operation name, where the profile replaces the defaults.
    pub data_elements: BTreeMap<String, Vec<String>>,
    /// Mint RDTs for getReportDocument (the profile reads restricted reports).
    pub restricted_reports: bool,
}

impl AmazonSigner {
    /// The RDT a request needs, if it is a restricted operation: the specific path (always
    /// accepted, unlike a generic one), the data elements from the request's header, else the
    /// profile's, else the operation's defaults.
    pub fn restricted_resource(
        &self,
        head: &RequestHead,
    ) -> Result<Option<RestrictedResource>, SignError> {
        if self.grantless {
            return Ok(None);
        }
        let path = head.path();
        let Some(op) = restricted_operation(&head.method, path) else {
            return Ok(None);
        };
        if op.opt_in && !self.restricted_reports {
            return Ok(None);
        }
        let mut elements: Vec<String> = match head.headers.get(DATA_ELEMENTS_HEADER) {
            Some(value) => parse_data_elements(value)?,
            None => match self.data_elements.get(op.name) {
                Some(configured) => configured.clone(),
                None => op.data_elements.iter().map(|e| (*e).to_owned()).collect(),
            },
        };
        elements.sort();
        elements.dedup();
        Ok(Some(RestrictedResource {
            method: op.method.to_owned(),
            path: path.to_owned(),
            data_elements: elements,
        }))
    }
}

/// The data-elements header: comma-separated names, `none` or empty for none.
fn parse_data_elements(value: &HeaderValue) -> Result<Vec<String>, SignError> {
    let text = value
        .to_str()
        .map_err(|_| SignError::BadRequest(format!("{DATA_ELEMENTS_HEADER} is not ASCII text")))?;
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.eq_ignore_ascii_case("none") {
            continue;
        }
        if !item.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SignError::BadRequest(format!(
                "{DATA_ELEMENTS_HEADER}: `{item}` is not a data element name (buyerInfo, shippingAddress, buyerTaxInformation)"
            )));
        }
        out.push(item.to_owned());
    }
    Ok(out)
}

/// Whether `authorization` is a SigV4 signature (which SP-API ignores since 2023-10-02).
pub fn is_sigv4(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .get(..16)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"AWS4-HMAC-SHA256"))
}

/// What `sign` strips: stale SigV4 artefacts and the proxy's own header.
fn stripped(head: &RequestHead) -> Vec<&'static str> {
    let mut out = Vec::new();
    if head
        .headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(is_sigv4)
    {
        out.push("authorization (SigV4, ignored by SP-API since 2023-10-02)");
    }
    if head.headers.contains_key(SECURITY_TOKEN_HEADER) {
        out.push("x-amz-security-token (SigV4 session token)");
    }
    if head.headers.contains_key(DATA_ELEMENTS_HEADER) {
        out.push("x-signproxy-data-elements (the proxy's own)");
    }
    out
}

impl Sign for AmazonSigner {
    fn scheme(&self) -> String {
        if self.grantless {
            "Amazon SP-API: no signature, grantless LWA token in x-amz-access-token".to_owned()
        } else {
            "Amazon SP-API: no signature, LWA token or Restricted Data Token in x-amz-access-token"
                .to_owned()
        }
    }

    fn token_need(&self, head: &RequestHead) -> TokenNeed {
        // The app's own token (an RDT it minted, say) is left alone.
        if head.headers.contains_key(ACCESS_TOKEN_HEADER) {
            return TokenNeed::None;
        }
        match self.restricted_resource(head) {
            Ok(Some(resource)) => TokenNeed::Restricted(resource),
            Ok(None) => TokenNeed::AccessToken,
            // A bad data-elements header: `sign` refuses the request with the reason, so no
            // token is fetched for it.
            Err(_) => TokenNeed::None,
        }
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        // Checked here too so that a malformed header is a 400 whatever token was fetched.
        if input.head.headers.contains_key(DATA_ELEMENTS_HEADER) {
            self.restricted_resource(input.head)?;
        }
        let mut head = input.head.clone();
        if head
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(is_sigv4)
        {
            head.headers.remove(http::header::AUTHORIZATION);
        }
        head.headers.remove(SECURITY_TOKEN_HEADER);
        head.headers.remove(DATA_ELEMENTS_HEADER);
        if let Some(token) = input.access_token {
            let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                SignError::Failed(
                    "the access token holds characters a header cannot carry".to_owned(),
                )
            })?;
            value.set_sensitive(true);
            head.headers.insert(ACCESS_TOKEN_HEADER, value);
        }
        Ok(head)
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        let mut lines =
            vec!["no signature: SP-API has not needed SigV4 since 2023-10-02".to_owned()];
        let token = match (input.access_token, self.token_need(input.head)) {
            (None, _) if input.head.headers.contains_key(ACCESS_TOKEN_HEADER) => {
                "x-amz-access-token: the app's own, left as sent".to_owned()
            }
            (None, _) => "x-amz-access-token: none".to_owned(),
            (Some(_), TokenNeed::Restricted(r)) => format!(
                "x-amz-access-token: ***** (Restricted Data Token for {} {}, data elements [{}])",
                r.method,
                r.path,
                r.data_elements.join(",")
            ),
            (Some(_), _) => "x-amz-access-token: ***** (LWA access token)".to_owned(),
        };
        lines.push(token);
        for s in stripped(input.head) {
            lines.push(format!("removed: {s}"));
        }
        Ok(lines.join("\n"))
    }

    fn diagnose(
        &self,
        head: &RequestHead,
        _body: &[u8],
        _now: crate::clock::Timestamp,
    ) -> Option<Diagnosis> {
        Some(super::doctor::diagnose(self, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use http::HeaderMap;

    fn head(method: Method, path_and_query: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        RequestHead {
            method,
            authority: "sellingpartnerapi-na.amazon.com".to_owned(),
            path_and_query: path_and_query.to_owned(),
            headers: map,
        }
    }

    fn seller() -> AmazonSigner {
        AmazonSigner {
            grantless: false,
            data_elements: BTreeMap::new(),
            restricted_reports: false,
        }
    }

    #[test]
    fn restricted_operations_match_by_method_and_segments() {
        let name = |m: Method, p: &str| restricted_operation(&m, p).map(|o| o.name);
        assert_eq!(name(Method::GET, "/orders/v0/orders"), Some("getOrders"));
        assert_eq!(
            name(Method::GET, "/orders/v0/orders/123-1234567-1234567"),
            Some("getOrder")
        );
        assert_eq!(
            name(Method::GET, "/orders/v0/orders/123-1234567-1234567/address"),
            Some("getOrderAddress")
        );
        assert_eq!(
            name(Method::GET, "/orders/v0/orders/1/orderItems/buyerInfo"),
            Some("getOrderItemsBuyerInfo")
        );
        assert_eq!(
            name(Method::DELETE, "/mfn/v0/shipments/s1"),
            Some("cancelShipment")
        );
        assert_eq!(
            name(Method::POST, "/mfn/v0/shipments"),
            Some("createShipment")
        );
        // Not restricted: other methods, other versions, extra or empty segments.
        assert_eq!(name(Method::POST, "/orders/v0/orders"), None);
        assert_eq!(name(Method::GET, "/orders/2026-01-01/orders"), None);
        assert_eq!(name(Method::GET, "/orders/v0/orders/"), None);
        assert_eq!(name(Method::GET, "/orders/v0/orders/1/address/x"), None);
        assert_eq!(name(Method::GET, "/orders/v0/orders//address"), None);
        assert_eq!(name(Method::GET, "/catalog/2022-04-01/items"), None);
        assert!(path_matches("/a/{x}", "/a/b"));
        assert!(!path_matches("/a/{x}", "/a"));
    }

    #[test]
    fn the_resource_is_the_specific_path_without_query_and_default_elements() {
        let need = seller().token_need(&head(
            Method::GET,
            "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2024-01-01",
            &[],
        ));
        assert_eq!(
            need,
            TokenNeed::Restricted(RestrictedResource {
                method: "GET".into(),
                path: "/orders/v0/orders".into(),
                data_elements: vec!["buyerInfo".into(), "shippingAddress".into()],
            })
        );
        let TokenNeed::Restricted(r) =
            seller().token_need(&head(Method::GET, "/orders/v0/orders/1-2-3/address", &[]))
        else {
            panic!("restricted")
        };
        assert_eq!(r.path, "/orders/v0/orders/1-2-3/address");
        assert!(r.data_elements.is_empty());
        assert_eq!(
            seller().token_need(&head(
                Method::GET,
                "/sellers/v1/marketplaceParticipations",
                &[]
            )),
            TokenNeed::AccessToken
        );
    }

    #[test]
    fn the_header_then_the_profile_then_the_defaults_choose_data_elements() {
        let mut signer = seller();
        signer
            .data_elements
            .insert("getOrders".into(), vec!["buyerInfo".into()]);
        let elements = |s: &AmazonSigner, headers: &[(&str, &str)]| match s.token_need(&head(
            Method::GET,
            "/orders/v0/orders",
            headers,
        )) {
            TokenNeed::Restricted(r) => r.data_elements,
            other => panic!("{other:?}"),
        };
        assert_eq!(elements(&signer, &[]), vec!["buyerInfo"]);
        assert_eq!(
            elements(
                &signer,
                &[(
                    "x-signproxy-data-elements",
                    "shippingAddress, buyerInfo,buyerInfo"
                )]
            ),
            vec!["buyerInfo", "shippingAddress"]
        );
        assert!(elements(&signer, &[("x-signproxy-data-elements", "none")]).is_empty());
        assert!(elements(&signer, &[("x-signproxy-data-elements", "")]).is_empty());
        let bad = head(
            Method::GET,
            "/orders/v0/orders",
            &[("x-signproxy-data-elements", "buyer info")],
        );
        let input = SignInput {
            head: &bad,
            body: b"",
            access_token: None,
            now: crate::clock::Timestamp::from_secs(0),
        };
        assert!(matches!(signer.sign(input), Err(SignError::BadRequest(_))));
    }

    #[test]
    fn an_apps_own_token_grantless_profiles_and_report_documents_need_no_rdt() {
        assert_eq!(
            seller().token_need(&head(
                Method::GET,
                "/orders/v0/orders",
                &[("x-amz-access-token", "Atz.sprdt|mine")]
            )),
            TokenNeed::None
        );
        let grantless = AmazonSigner {
            grantless: true,
            ..seller()
        };
        assert_eq!(
            grantless.token_need(&head(Method::GET, "/orders/v0/orders", &[])),
            TokenNeed::AccessToken
        );
        let report = head(
            Method::GET,
            "/reports/2021-06-30/documents/amzn1.doc.1",
            &[],
        );
        assert_eq!(seller().token_need(&report), TokenNeed::AccessToken);
        let opted = AmazonSigner {
            restricted_reports: true,
            ..seller()
        };
        assert!(matches!(
            opted.token_need(&report),
            TokenNeed::Restricted(_)
        ));
    }

    #[test]
    fn signing_sets_the_token_strips_sigv4_and_keeps_everything_else() {
        let h = head(
            Method::GET,
            "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER",
            &[
                ("authorization", "AWS4-HMAC-SHA256 Credential=AKIA/20240101/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=abc"),
                ("x-amz-security-token", "FwoGZXIvYXdzEJr"),
                ("x-amz-date", "20240101T000000Z"),
                ("user-agent", "my-app/1.0 (Language=Python)"),
                ("x-signproxy-data-elements", "buyerInfo"),
            ],
        );
        let token = Secret::new("Atz.sprdt|secret-rdt");
        let input = SignInput {
            head: &h,
            body: b"",
            access_token: Some(&token),
            now: crate::clock::Timestamp::from_secs(0),
        };
        let signed = seller().sign(input).unwrap();
        assert_eq!(signed.headers["x-amz-access-token"], "Atz.sprdt|secret-rdt");
        assert!(signed.headers["x-amz-access-token"].is_sensitive());
        assert!(!signed.headers.contains_key("authorization"));
        assert!(!signed.headers.contains_key("x-amz-security-token"));
        assert!(!signed.headers.contains_key("x-signproxy-data-elements"));
        assert_eq!(signed.headers["x-amz-date"], "20240101T000000Z");
        assert_eq!(signed.headers["user-agent"], "my-app/1.0 (Language=Python)");
        assert_eq!(signed.path_and_query, h.path_and_query);
        let explained = seller().explain(input).unwrap();
        assert!(!explained.contains("secret-rdt"), "{explained}");
        assert!(explained.contains("Restricted Data Token for GET /orders/v0/orders"));
        assert!(explained.contains("SigV4"));
        // A bearer Authorization is not SigV4: it stays (the doctor points it out).
        let bearer = head(Method::GET, "/x", &[("authorization", "Bearer Atza|x")]);
        let input = SignInput {
            head: &bearer,
            ..input
        };
        assert!(seller()
            .sign(input)
            .unwrap()
            .headers
            .contains_key("authorization"));
    }
}
