//! Every error the proxy itself produces, and the one place they become HTTP responses
//! (JSON body `{"error":{"code","message"}}` plus an `x-signproxy-error` header).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::{full_body, ProxyBody};
use crate::ca::CaError;
use crate::egress::EgressDenied;
use crate::route::RouteError;
use crate::signing::SignError;
use crate::token::TokenError;

pub const ERROR_HEADER: &str = "x-signproxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("request body is {actual} bytes; the limit is {limit} ([proxy] max_body_bytes)")]
    BodyTooLarge { actual: u64, limit: u64 },
    #[error("request body is larger than the limit of {limit} bytes ([proxy] max_body_bytes): raise the limit or send less")]
    BodyOverLimit { limit: u64 },
    #[error("cannot sign this request: {0}")]
    SignBadRequest(String),
    #[error("signing failed: {0}")]
    SigningFailed(String),
    #[error("cannot reach upstream {authority}: {reason}")]
    UpstreamConnect { authority: String, reason: String },
    #[error("upstream {authority} did not answer within {timeout_ms} ms ([upstream] request_timeout_ms)")]
    UpstreamTimeout { authority: String, timeout_ms: u128 },
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("HTTPS interception failed: {0}")]
    Interception(#[source] CaError),
    #[error("{0}")]
    TokenUnavailable(#[source] TokenError),
    #[error("signproxy is serving its limit of {limit} connections ([proxy] max_connections): retry shortly, reuse connections, or raise the limit")]
    TooManyConnections { limit: usize },
    #[error("{0}")]
    ProxyAuthRequired(String),
    #[error("{method} is not signed for {profile}: marketplace APIs take GET, POST, PUT, PATCH and DELETE (HEAD and OPTIONS are forwarded without a token)")]
    MethodNotAllowed { method: String, profile: String },
    #[error("the request body did not arrive within {timeout_ms} ms ([proxy] body_read_timeout_ms): send it faster, or raise the limit")]
    BodyTimeout { timeout_ms: u128 },
    #[error("signproxy is buffering its limit of {limit} bytes of request bodies ([proxy] max_buffered_bytes): retry shortly; nothing of this request was sent upstream")]
    Busy { limit: u64 },
    #[error("the request head is {size} bytes; the limit is {limit} ([proxy] max_header_bytes): send fewer or smaller headers")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    DestinationNotAllowed(#[from] EgressDenied),
}

impl From<SignError> for ProxyError {
    fn from(e: SignError) -> Self {
        match e {
            SignError::BadRequest(m) => ProxyError::SignBadRequest(m),
            SignError::Failed(m) => ProxyError::SigningFailed(m),
        }
    }
}

impl ProxyError {
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::SignBadRequest(_)
            | ProxyError::Route(RouteError::MalformedHost { .. }) => "bad_request",
            ProxyError::Route(
                RouteError::HostNotAllowed { .. } | RouteError::MarketplacePort { .. },
            ) => "host_not_allowed",
            ProxyError::Route(
                RouteError::PassthroughPort { .. } | RouteError::AddressNotAllowed { .. },
            )
            | ProxyError::DestinationNotAllowed(_) => "destination_not_allowed",
            ProxyError::Route(RouteError::ProfileNotAllowed { .. }) => "profile_not_allowed",
            ProxyError::Route(RouteError::AmbiguousProfile { .. }) => "ambiguous_profile",
            ProxyError::Route(RouteError::UnknownProfile { .. }) => "unknown_profile",
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit { .. } => "body_too_large",
            ProxyError::SigningFailed(_) => "signing_failed",
            ProxyError::UpstreamConnect { .. } => "upstream_connect_failed",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::MisdirectedRequest(_) => "misdirected_request",
            ProxyError::Interception(_) => "interception_failed",
            ProxyError::TokenUnavailable(_) => "token_unavailable",
            ProxyError::TooManyConnections { .. } => "too_many_connections",
            ProxyError::ProxyAuthRequired(_) => "proxy_auth_required",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::Busy { .. } => "busy",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::SignBadRequest(_)
            | ProxyError::Route(RouteError::MalformedHost { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::Route(
                RouteError::HostNotAllowed { .. }
                | RouteError::MarketplacePort { .. }
                | RouteError::PassthroughPort { .. }
                | RouteError::AddressNotAllowed { .. }
                | RouteError::ProfileNotAllowed { .. },
            )
            | ProxyError::DestinationNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::Route(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::SigningFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Interception(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::TokenUnavailable(_)
            | ProxyError::TooManyConnections { .. }
            | ProxyError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ProxyAuthRequired(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Errors after which the connection cannot be trusted to be in step (a body left unread,
    /// a refused tunnel the client may already be writing into) close it.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTimeout { .. }
                | ProxyError::ProxyAuthRequired(_)
                | ProxyError::Busy { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyOverLimit { .. }
        )
    }

    /// The error as the client sees it.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = Response::new(full_body(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        match self {
            ProxyError::ProxyAuthRequired(_) => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"signproxy\""),
                );
            }
            ProxyError::MethodNotAllowed { .. } => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                );
            }
            _ => {}
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_too_large_matches_the_contract_example() {
        let e = ProxyError::BodyTooLarge {
            actual: 40_000_000,
            limit: 33_554_432,
        };
        let r = e.to_response();
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()[ERROR_HEADER], "body_too_large");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"error":{"code":"body_too_large","message":"request body is 40000000 bytes; the limit is 33554432 ([proxy] max_body_bytes)"}}"#
        );
    }
}
