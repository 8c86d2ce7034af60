//! Amazon SP-API's offline stand-in: LWA's token endpoint (refresh-token and client-credentials
//! grants), the Tokens API's RDT mint, and a few operations answered in Amazon's `errors[]`
//! envelope. A restricted operation refuses a plain LWA token with Amazon's 403 and accepts
//! only an RDT minted for its method and path. Its own checks: never the signer's code.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::oauth::{AmazonLwa, RDT_PATH};
use super::sign::{restricted_operation, ACCESS_TOKEN_HEADER, RDT_PREFIX};
use crate::marketplace::stand_in::{TokenCheck, TokenKind};
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::{constant_time_eq, Secret};

const ACCESS_PREFIX: &str = "Atza|sandbox.";
const RDT_SANDBOX_PREFIX: &str = "Atz.sprdt|sandbox.";
const KNOWN_DATA_ELEMENTS: [&str; 3] = ["buyerInfo", "shippingAddress", "buyerTaxInformation"];

/// The stand-in for one SP-API profile: the LWA app it verifies for.
#[derive(Debug)]
pub struct AmazonStandIn {
    client_id: String,
    client_secret: Secret,
    refresh_token: Option<Secret>,
    token_host: String,
    token_path: String,
}

impl AmazonStandIn {
    pub fn new(lwa: &AmazonLwa) -> Self {
        let uri = lwa.token_url.parse::<http::Uri>().ok();
        AmazonStandIn {
            client_id: lwa.client_id.clone(),
            client_secret: lwa.client_secret.clone(),
            refresh_token: lwa.refresh_token.clone(),
            token_host: uri
                .as_ref()
                .and_then(|u| u.host())
                .unwrap_or("api.amazon.com")
                .to_ascii_lowercase(),
            token_path: uri
                .as_ref()
                .map(|u| u.path().to_owned())
                .unwrap_or_else(|| "/auth/o2/token".to_owned()),
        }
    }

    /// What an RDT is bound to: the app, and the one method + path it was minted for.
    fn rdt_app(&self, method: &str, path: &str) -> String {
        format!("{}\0{method} {path}", self.client_id)
    }

    fn grant(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        let form = req.form();
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let lwa_error = |status: StatusCode, error: &str, description: &str| {
            SandboxAnswer::new(
                status,
                json!({"error": error, "error_description": description}),
            )
        };
        let same = |given: Option<&str>, expected: &str| {
            given.is_some_and(|g| bool::from(constant_time_eq(g.as_bytes(), expected.as_bytes())))
        };
        if req.method != Method::POST {
            return lwa_error(StatusCode::BAD_REQUEST, "invalid_request", "use POST");
        }
        if field("client_id") != Some(self.client_id.as_str())
            || !same(field("client_secret"), self.client_secret.expose())
        {
            return lwa_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        match field("grant_type") {
            Some("refresh_token") => {
                let known = self
                    .refresh_token
                    .as_ref()
                    .is_some_and(|rt| same(field("refresh_token"), rt.expose()));
                if !known {
                    return lwa_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "The request has an invalid grant parameter : refresh_token",
                    );
                }
            }
            Some("client_credentials") => {
                if !field("scope").is_some_and(|s| s.starts_with("sellingpartnerapi::")) {
                    return lwa_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        "The scope is not valid for this grant",
                    );
                }
            }
            _ => {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "Use refresh_token or client_credentials",
                )
            }
        }
        let ttl = cx.token_ttl_secs;
        let token = cx.tokens.mint(
            TokenKind::Access,
            ACCESS_PREFIX,
            &self.client_id,
            cx.now.secs().saturating_add(ttl),
        );
        SandboxAnswer::new(
            StatusCode::OK,
            json!({"access_token": token, "token_type": "bearer", "expires_in": ttl}),
        )
    }

    fn api(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, SandboxAnswer> {
        let Some(token) = req.header(ACCESS_TOKEN_HEADER.as_str()) else {
            return Err(unauthorized(
                "Access token is missing in the request header.",
            ));
        };
        let restricted = restricted_operation(&req.method, &req.path);
        let is_rdt = token.starts_with(RDT_PREFIX);
        if is_rdt {
            let check = |path: &str| {
                cx.tokens.check(
                    TokenKind::Access,
                    RDT_SANDBOX_PREFIX,
                    &self.rdt_app(req.method.as_str(), path),
                    &token,
                    cx.now,
                )
            };
            // Minted for the specific path, or for the operation's generic pattern.
            let specific = check(&req.path);
            let found = match (specific, restricted) {
                (TokenCheck::Unknown, Some(op)) => check(op.pattern),
                (found, _) => found,
            };
            match found {
                TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
                TokenCheck::Expired { .. } => {
                    return Err(unauthorized("The access token you provided has expired."))
                }
                // An RDT for another method or path: Amazon's empty details.
                TokenCheck::Unknown => return Err(unauthorized("")),
            }
        } else {
            match cx.tokens.check(
                TokenKind::Access,
                ACCESS_PREFIX,
                &self.client_id,
                &token,
                cx.now,
            ) {
                TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
                TokenCheck::Expired { .. } => {
                    return Err(unauthorized("The access token you provided has expired."))
                }
                TokenCheck::Unknown => {
                    return Err(unauthorized(
                        "The access token you provided is revoked, malformed or invalid.",
                    ))
                }
            }
            if restricted.is_some_and(|op| !op.opt_in) {
                return Err(unauthorized(""));
            }
        }
        if req.method == Method::POST && req.path == RDT_PATH {
            if is_rdt || self.refresh_token.is_none() {
                return Err(unauthorized(
                    "Restricted Data Tokens are minted with a seller's LWA access token",
                ));
            }
            return self.mint_rdt(req, cx);
        }
        let echo = req.echo(
            &[
                "x-amz-access-token",
                "authorization",
                "x-amz-security-token",
            ],
            &[],
        );
        Ok(match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/sellers/v1/marketplaceParticipations") => json!({"payload": [{
                "marketplace": {"id": "ATVPDKIKX0DER", "countryCode": "US", "name": "Amazon.com", "defaultCurrencyCode": "USD", "defaultLanguageCode": "en_US", "domainName": "www.amazon.com"},
                "participation": {"isParticipating": true, "hasSuspendedListings": false},
            }], "sandbox": echo}),
            ("GET", "/orders/v0/orders") => json!({"payload": {"Orders": [{
                "AmazonOrderId": "902-1845936-5435065", "OrderStatus": "Unshipped",
                "BuyerInfo": {"BuyerEmail": "sandbox-buyer@marketplace.example"},
                "ShippingAddress": {"Name": "Sandbox Buyer", "City": "Seattle", "CountryCode": "US"},
            }]}, "sandbox": echo}),
            ("GET", p) if p.starts_with("/orders/v0/orders/") && p.ends_with("/address") => {
                json!({"payload": {"AmazonOrderId": p.split('/').nth(4).unwrap_or_default(),
                    "ShippingAddress": {"Name": "Sandbox Buyer", "City": "Seattle", "CountryCode": "US"}},
                    "sandbox": echo})
            }
            _ => json!({"payload": {}, "sandbox": echo}),
        })
    }

    fn mint_rdt(
        &self,
        req: &SandboxRequest,
        cx: &SandboxContext<'_>,
    ) -> Result<Value, SandboxAnswer> {
        let invalid = |message: String| {
            SandboxAnswer::new(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"code": "InvalidInput", "message": message, "details": ""}]}),
            )
        };
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|_| invalid("The request body is not JSON.".to_owned()))?;
        let resources = body["restrictedResources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // The stand-in binds each RDT to one resource; the proxy asks for one at a time.
        let [resource] = resources.as_slice() else {
            return Err(invalid(
                "The sandbox mints an RDT for exactly one restrictedResource.".to_owned(),
            ));
        };
        let method = resource["method"].as_str().unwrap_or_default();
        let path = resource["path"].as_str().unwrap_or_default();
        if !path.starts_with('/') || path.contains('?') {
            return Err(invalid(format!(
                "Invalid path `{path}`: a path without host or query string"
            )));
        }
        let Ok(parsed) = method.parse::<Method>() else {
            return Err(invalid(format!("Invalid method `{method}`")));
        };
        let Some(op) = restricted_operation(&parsed, path) else {
            return Err(invalid(format!(
                "{method} {path} is not a restricted operation"
            )));
        };
        if op.opt_in && path.contains('{') {
            return Err(invalid(
                "getReportDocument takes only a specific path".to_owned(),
            ));
        }
        let elements = resource["dataElements"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let unknown: Vec<&str> = elements
            .iter()
            .filter_map(Value::as_str)
            .filter(|e| !KNOWN_DATA_ELEMENTS.contains(e))
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(format!(
                "Application does not have access to one or more requested data elements: [{}]",
                unknown.join(", ")
            )));
        }
        let ttl = 3600;
        let token = cx.tokens.mint(
            TokenKind::Access,
            RDT_SANDBOX_PREFIX,
            &self.rdt_app(method, path),
            cx.now.secs().saturating_add(ttl),
        );
        Ok(json!({"restrictedDataToken": token, "expiresIn": ttl}))
    }
}

fn unauthorized(details: &str) -> SandboxAnswer {
    SandboxAnswer::new(
        StatusCode::FORBIDDEN,
        json!({"errors": [{
            "code": "Unauthorized",
            "message": "Access to requested resource is denied.",
            "details": details,
        }]}),
    )
}

impl StandIn for AmazonStandIn {
    fn claims(&self, req: &SandboxRequest) -> bool {
        if self.is_token_request(req) {
            return req
                .form()
                .iter()
                .any(|(k, v)| k == "client_id" && *v == self.client_id);
        }
        false
    }

    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.host == self.token_host && req.path == self.token_path
    }

    fn token_hosts(&self) -> Vec<String> {
        vec![self.token_host.clone()]
    }

    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        if self.is_token_request(req) {
            return self.grant(req, cx);
        }
        match self.api(req, cx) {
            Ok(body) => SandboxAnswer::new(StatusCode::OK, body),
            Err(answer) => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::stand_in::TokenBook;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};

    const NOW: u64 = 1_700_000_000;

    fn stand_in() -> AmazonStandIn {
        AmazonStandIn::new(&AmazonLwa {
            client_id: "amzn1.application-oa2-client.demo".into(),
            client_secret: Secret::new("demo-secret"),
            refresh_token: Some(Secret::new("Atzr|demo")),
            scopes: vec![],
            token_url: super::super::oauth::LWA_TOKEN_URL.into(),
        })
    }

    fn request(
        method: Method,
        host: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> SandboxRequest {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert("x-amz-access-token", HeaderValue::from_str(t).unwrap());
        }
        SandboxRequest {
            method,
            host: host.into(),
            authority: host.into(),
            path: path.into(),
            query: None,
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    fn answer(req: &SandboxRequest, book: &TokenBook) -> (u16, Value) {
        let a = stand_in().answer(req, &SandboxContext::at(NOW, book));
        (a.status.as_u16(), a.body)
    }

    const API: &str = "sellingpartnerapi-na.amazon.com";

    #[test]
    fn lwa_then_rdt_then_the_restricted_operation() {
        let book = TokenBook::new();
        let grant = request(
            Method::POST,
            "api.amazon.com",
            "/auth/o2/token",
            None,
            "grant_type=refresh_token&refresh_token=Atzr%7Cdemo&client_id=amzn1.application-oa2-client.demo&client_secret=demo-secret",
        );
        assert!(stand_in().claims(&grant));
        let (status, body) = answer(&grant, &book);
        assert_eq!(status, 200, "{body}");
        let lwa = body["access_token"].as_str().unwrap().to_owned();
        assert!(lwa.starts_with("Atza|"));

        let path = "/orders/v0/orders/902-1/address";
        let (status, body) = answer(&request(Method::GET, API, path, Some(&lwa), ""), &book);
        assert_eq!(status, 403, "a plain LWA token on a restricted path");
        assert_eq!(body["errors"][0]["code"], "Unauthorized");
        assert_eq!(body["errors"][0]["details"], "");

        let mint = format!(r#"{{"restrictedResources":[{{"method":"GET","path":"{path}"}}]}}"#);
        let (status, body) = answer(
            &request(Method::POST, API, RDT_PATH, Some(&lwa), &mint),
            &book,
        );
        assert_eq!(status, 200, "{body}");
        let rdt = body["restrictedDataToken"].as_str().unwrap().to_owned();
        let (status, body) = answer(&request(Method::GET, API, path, Some(&rdt), ""), &book);
        assert_eq!(status, 200, "{body}");
        assert!(!body.to_string().contains(&rdt));
        // The RDT is for that path only.
        let (status, _) = answer(
            &request(
                Method::GET,
                API,
                "/orders/v0/orders/902-2/address",
                Some(&rdt),
                "",
            ),
            &book,
        );
        assert_eq!(status, 403);
        let (status, _) = answer(
            &request(
                Method::GET,
                API,
                "/sellers/v1/marketplaceParticipations",
                Some(&lwa),
                "",
            ),
            &book,
        );
        assert_eq!(status, 200);
    }

    #[test]
    fn refusals_use_amazons_answers() {
        let book = TokenBook::new();
        let (status, body) = answer(
            &request(
                Method::GET,
                API,
                "/sellers/v1/marketplaceParticipations",
                None,
                "",
            ),
            &book,
        );
        assert_eq!(status, 403);
        assert_eq!(
            body["errors"][0]["details"],
            "Access token is missing in the request header."
        );
        let bad_secret = request(Method::POST, "api.amazon.com", "/auth/o2/token", None,
            "grant_type=refresh_token&refresh_token=Atzr%7Cdemo&client_id=amzn1.application-oa2-client.demo&client_secret=nope");
        assert_eq!(answer(&bad_secret, &book).1["error"], "invalid_client");
        let expired = book.mint(
            TokenKind::Access,
            ACCESS_PREFIX,
            "amzn1.application-oa2-client.demo",
            NOW - 1,
        );
        let (status, body) = answer(
            &request(
                Method::GET,
                API,
                "/sellers/v1/marketplaceParticipations",
                Some(&expired),
                "",
            ),
            &book,
        );
        assert_eq!(status, 403);
        assert_eq!(
            body["errors"][0]["details"],
            "The access token you provided has expired."
        );
        let lwa = book.mint(
            TokenKind::Access,
            ACCESS_PREFIX,
            "amzn1.application-oa2-client.demo",
            NOW + 60,
        );
        let mint = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo","ssn"]}]}"#;
        let (status, body) = answer(
            &request(Method::POST, API, RDT_PATH, Some(&lwa), mint),
            &book,
        );
        assert_eq!(status, 400);
        assert_eq!(body["errors"][0]["code"], "InvalidInput");
    }
}
