//! Login with Amazon (LWA) as pure protocol: the refresh-token grant (seller-authorized calls)
//! or client credentials (grantless operations), the answer, the "access token expired"
//! answer, and the Tokens API's Restricted Data Token mint.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use serde::Deserialize;

use super::sign::ACCESS_TOKEN_HEADER;
use crate::clock::Timestamp;
use crate::marketplace::{fingerprint, Grant, GrantError, RestrictedResource, TokenEndpoint};
use crate::secret::Secret;

/// The LWA token endpoint, all regions.
pub const LWA_TOKEN_URL: &str = "https://api.amazon.com/auth/o2/token";
/// The Tokens API operation that mints RDTs, on the same regional host as the API call.
pub const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";

/// An SP-API profile's managed tokens.
#[derive(Debug)]
pub struct AmazonLwa {
    pub client_id: String,
    pub client_secret: Secret,
    /// Seller-authorized tokens by the refresh-token grant; without it, grantless tokens.
    pub refresh_token: Option<Secret>,
    pub scopes: Vec<String>,
    pub token_url: String,
}

impl TokenEndpoint for AmazonLwa {
    fn describe(&self) -> &'static str {
        match self.refresh_token {
            Some(_) => "managed LWA access tokens (refresh token) and Restricted Data Tokens",
            None => "managed grantless LWA access tokens (client credentials)",
        }
    }

    fn initial_refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    fn seed(&self) -> String {
        fingerprint(&[
            "lwa",
            &self.client_id,
            self.refresh_token
                .as_ref()
                .map(Secret::expose)
                .unwrap_or(""),
            &self.scopes.join(" "),
            &self.token_url,
        ])
    }

    fn config_digest(&self) -> String {
        fingerprint(&[&self.seed(), self.client_secret.expose()])
    }

    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        _now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError> {
        // Grantless profiles never use a refresh token, even one a reply might carry.
        let refresh = refresh.filter(|_| self.refresh_token.is_some());
        lwa_token_request(
            &self.token_url,
            &self.client_id,
            &self.client_secret,
            refresh,
            &self.scopes,
        )
    }

    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        let mut grant = parse_lwa_grant(status.as_u16(), body, now.secs())?;
        if self.refresh_token.is_none() {
            grant.refresh_token = None;
        }
        Ok(grant)
    }

    fn is_expired_answer(&self, status: StatusCode, body: &[u8]) -> bool {
        token_expired(status.as_u16(), body)
    }

    fn restricted_request(
        &self,
        authority: &str,
        resource: &RestrictedResource,
        access_token: &Secret,
    ) -> Result<Request<Bytes>, GrantError> {
        rdt_request(authority, resource, access_token)
    }

    fn parse_restricted(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        parse_rdt(status.as_u16(), body, now.secs())
    }
}

/// `POST /auth/o2/token`, every value form-encoded (`|` becomes `%7C`), the client credentials
/// in the body: the refresh grant with a refresh token, else client credentials for `scopes`.
pub fn lwa_token_request(
    url: &str,
    client_id: &str,
    client_secret: &Secret,
    refresh_token: Option<&Secret>,
    scopes: &[String],
) -> Result<Request<Bytes>, GrantError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match refresh_token {
        Some(rt) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", rt.expose());
        }
        None => {
            form.append_pair("grant_type", "client_credentials");
            form.append_pair("scope", &scopes.join(" "));
        }
    }
    form.append_pair("client_id", client_id);
    form.append_pair("client_secret", client_secret.expose());
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded;charset=UTF-8",
        )
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(form.finish()))
        .map_err(|_| GrantError::Request(format!("token_url `{url}` is not valid")))
}

#[derive(Deserialize)]
struct LwaGrant {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct LwaError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Parses LWA's grant; `expires_in` is a duration. A refresh token in the reply is kept (LWA's
/// do not rotate, but one that differs must replace the old).
pub fn parse_lwa_grant(status: u16, body: &[u8], now: u64) -> Result<Grant, GrantError> {
    if status == 200 {
        let grant: LwaGrant = serde_json::from_slice(body).map_err(|e| GrantError::Malformed {
            status,
            reason: format!("no access_token/expires_in ({e})"),
        })?;
        if grant.access_token.is_empty() {
            return Err(GrantError::Malformed {
                status,
                reason: "the access_token is empty".to_owned(),
            });
        }
        return Ok(Grant {
            access_token: Secret::new(grant.access_token),
            expires_at: now.saturating_add(grant.expires_in),
            refresh_token: grant
                .refresh_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            refresh_expires_at: None,
        });
    }
    match serde_json::from_slice::<LwaError>(body) {
        Ok(e) => {
            let hint = match e.error.as_str() {
                "invalid_grant" => " (the refresh token is revoked, unknown or for another app: the seller must authorize the app again; put the new refresh_token in the config)",
                "invalid_client" => " (check client_id and client_secret: LWA client secrets must be rotated every 180 days in Seller Central / the developer console)",
                "invalid_scope" => " (grantless scopes are sellingpartnerapi::notifications, sellingpartnerapi::client_credential:rotation, sellingpartnerapi::migration)",
                "unauthorized_client" => " (the app may not use this grant: check the app's registration)",
                _ => "",
            };
            Err(GrantError::Rejected {
                code: e.error,
                message: e.error_description,
                hint,
            })
        }
        Err(_) => Err(GrantError::Malformed {
            status,
            reason: "not an LWA error body".to_owned(),
        }),
    }
}

/// SP-API's error envelope: `{"errors":[{"code","message","details"}]}`.
#[derive(Deserialize)]
pub struct Errors {
    pub errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: String,
}

/// SP-API: 403 `Unauthorized` whose message or details say the access token has expired
/// (the same answer for an expired LWA token and an expired RDT).
pub fn token_expired(status: u16, body: &[u8]) -> bool {
    status == 403
        && serde_json::from_slice::<Errors>(body).is_ok_and(|e| {
            e.errors.iter().any(|i| {
                let text = format!("{} {}", i.message, i.details).to_ascii_lowercase();
                text.contains("access token you provided has expired")
            })
        })
}

/// `POST /tokens/2021-03-01/restrictedDataToken` on the API's own host, with the LWA token.
pub fn rdt_request(
    authority: &str,
    resource: &RestrictedResource,
    access_token: &Secret,
) -> Result<Request<Bytes>, GrantError> {
    let mut entry = serde_json::json!({"method": resource.method, "path": resource.path});
    // No dataElements at all for operations that take none: Amazon refuses an empty list on
    // some of them.
    if !resource.data_elements.is_empty() {
        entry["dataElements"] = serde_json::json!(resource.data_elements);
    }
    let body = serde_json::json!({ "restrictedResources": [entry] });
    let mut token = HeaderValue::from_str(access_token.expose()).map_err(|_| {
        GrantError::Request("the access token holds characters a header cannot carry".to_owned())
    })?;
    token.set_sensitive(true);
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://{authority}{RDT_PATH}"))
        .header(ACCESS_TOKEN_HEADER, token)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(body.to_string()))
        .map_err(|_| GrantError::Request(format!("`{authority}` is not a valid host")))
}

#[derive(Deserialize)]
struct RdtAnswer {
    #[serde(rename = "restrictedDataToken")]
    restricted_data_token: String,
    #[serde(rename = "expiresIn")]
    expires_in: u64,
}

/// The RDT and its lifetime (`expiresIn`, a duration); Amazon's `errors[]` as the refusal.
pub fn parse_rdt(status: u16, body: &[u8], now: u64) -> Result<Grant, GrantError> {
    if status == 200 {
        let rdt: RdtAnswer = serde_json::from_slice(body).map_err(|e| GrantError::Malformed {
            status,
            reason: format!("no restrictedDataToken/expiresIn ({e})"),
        })?;
        if rdt.restricted_data_token.is_empty() {
            return Err(GrantError::Malformed {
                status,
                reason: "the restrictedDataToken is empty".to_owned(),
            });
        }
        return Ok(Grant {
            access_token: Secret::new(rdt.restricted_data_token),
            expires_at: now.saturating_add(rdt.expires_in),
            refresh_token: None,
            refresh_expires_at: None,
        });
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let first = &e.errors[0];
            let hint = match first.code.as_str() {
                "InvalidInput" => " (ask only for data elements the app's roles grant: set data_elements for the operation in the profile, or the x-signproxy-data-elements header on the request)",
                "Unauthorized" => " (the app lacks the role for this data, or the seller authorized it before the role was added: the seller must authorize again)",
                _ => "",
            };
            let message = match first.details.is_empty() {
                true => format!("(HTTP {status}) {}", first.message),
                false => format!("(HTTP {status}) {}: {}", first.message, first.details),
            };
            Err(GrantError::Rejected {
                code: first.code.clone(),
                message,
                hint,
            })
        }
        _ => Err(GrantError::Malformed {
            status,
            reason: "not an SP-API errors[] body".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_grant_form_encodes_every_value_with_client_credentials_in_the_body() {
        let rt = Secret::new("Atzr|IwEBIA+x/y=");
        let req = lwa_token_request(
            LWA_TOKEN_URL,
            "amzn1.application-oa2-client.abc",
            &Secret::new("s3|cr=t"),
            Some(&rt),
            &[],
        )
        .unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), LWA_TOKEN_URL);
        assert_eq!(
            req.headers()["content-type"],
            "application/x-www-form-urlencoded;charset=UTF-8"
        );
        assert!(!req.headers().contains_key("authorization"));
        let body = std::str::from_utf8(req.body()).unwrap();
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=Atzr%7CIwEBIA%2Bx%2Fy%3D&client_id=amzn1.application-oa2-client.abc&client_secret=s3%7Ccr%3Dt"
        );
    }

    #[test]
    fn grantless_tokens_use_client_credentials_with_the_scopes() {
        let lwa = AmazonLwa {
            client_id: "cid".into(),
            client_secret: Secret::new("sec"),
            refresh_token: None,
            scopes: vec!["sellingpartnerapi::notifications".into()],
            token_url: LWA_TOKEN_URL.into(),
        };
        // A refresh token the manager might hold is never used by a grantless profile.
        let req = lwa
            .grant_request(Some(&Secret::new("Atzr|x")), Timestamp::from_secs(0))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(req.body()).unwrap(),
            "grant_type=client_credentials&scope=sellingpartnerapi%3A%3Anotifications&client_id=cid&client_secret=sec"
        );
        let g = lwa
            .parse_grant(
                StatusCode::OK,
                br#"{"access_token":"Atc|x","token_type":"bearer","expires_in":3600,"refresh_token":"Atzr|y"}"#,
                Timestamp::from_secs(10),
            )
            .unwrap();
        assert!(g.refresh_token.is_none());
    }

    #[test]
    fn grants_parse_with_expires_in_as_a_duration_and_errors_with_hints() {
        let g = parse_lwa_grant(
            200,
            br#"{"access_token":"Atza|IwEB","refresh_token":"Atzr|IwEB","token_type":"bearer","expires_in":3600}"#,
            1000,
        )
        .unwrap();
        assert_eq!(g.access_token.expose(), "Atza|IwEB");
        assert_eq!(g.expires_at, 4600);
        assert_eq!(g.refresh_token.unwrap().expose(), "Atzr|IwEB");
        let e = parse_lwa_grant(
            400,
            br#"{"error_description":"The request has an invalid grant parameter : refresh_token","error":"invalid_grant"}"#,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid_grant") && e.contains("authorize the app again"),
            "{e}"
        );
        let e = parse_lwa_grant(
            401,
            br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("180 days"), "{e}");
        assert!(matches!(
            parse_lwa_grant(200, br#"{"access_token":"","expires_in":3600}"#, 0),
            Err(GrantError::Malformed { .. })
        ));
        assert!(matches!(
            parse_lwa_grant(502, b"<html>", 0),
            Err(GrantError::Malformed { status: 502, .. })
        ));
    }

    #[test]
    fn expired_answers_are_recognised_and_nothing_else() {
        let expired = br#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":"The access token you provided has expired."}]}"#;
        assert!(token_expired(403, expired));
        assert!(!token_expired(401, expired));
        let revoked = br#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":"The access token you provided is revoked, malformed or invalid."}]}"#;
        assert!(!token_expired(403, revoked));
        let rdt_missing = br#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":""}]}"#;
        assert!(!token_expired(403, rdt_missing));
        assert!(!token_expired(403, b"not json"));
    }

    #[test]
    fn the_rdt_mint_names_one_resource_and_parses_the_token() {
        let resource = RestrictedResource {
            method: "GET".into(),
            path: "/orders/v0/orders".into(),
            data_elements: vec!["buyerInfo".into(), "shippingAddress".into()],
        };
        let req = rdt_request(
            "sellingpartnerapi-eu.amazon.com",
            &resource,
            &Secret::new("Atza|lwa"),
        )
        .unwrap();
        assert_eq!(
            req.uri(),
            "https://sellingpartnerapi-eu.amazon.com/tokens/2021-03-01/restrictedDataToken"
        );
        assert_eq!(req.headers()["x-amz-access-token"], "Atza|lwa");
        assert!(req.headers()["x-amz-access-token"].is_sensitive());
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo","shippingAddress"]}]})
        );
        let bare = RestrictedResource {
            data_elements: vec![],
            ..resource
        };
        let req = rdt_request("h", &bare, &Secret::new("t")).unwrap();
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert!(body["restrictedResources"][0].get("dataElements").is_none());

        let g = parse_rdt(
            200,
            br#"{"restrictedDataToken":"Atz.sprdt|AYAB","expiresIn":3600}"#,
            50,
        )
        .unwrap();
        assert_eq!(g.access_token.expose(), "Atz.sprdt|AYAB");
        assert_eq!(g.expires_at, 3650);
        let e = parse_rdt(
            400,
            br#"{"errors":[{"code":"InvalidInput","message":"Application does not have access to one or more requested data elements: [buyerTaxInformation]","details":""}]}"#,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("InvalidInput")
                && e.contains("buyerTaxInformation")
                && e.contains("HTTP 400"),
            "{e}"
        );
        assert!(matches!(
            parse_rdt(200, br#"{"expiresIn":3600}"#, 0),
            Err(GrantError::Malformed { .. })
        ));
    }
}
