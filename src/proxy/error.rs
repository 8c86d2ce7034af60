//! Every error the proxy itself produces, and the one place they become HTTP responses
//! (JSON body `{"error":{"code","message"}}` plus an `x-signproxy-error` header).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::{full_body, ProxyBody};
use crate::route::RouteError;
use crate::sign::SignError;

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
    Interception(String),
    #[error("{0}")]
    TokenUnavailable(String),
    #[error("signproxy is serving its limit of {limit} connections ([proxy] max_connections): retry shortly, reuse connections, or raise the limit")]
    TooManyConnections { limit: usize },
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
            ProxyError::BadRequest(_) | ProxyError::SignBadRequest(_) => "bad_request",
            ProxyError::Route(RouteError::HostNotAllowed { .. }) => "host_not_allowed",
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
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::SignBadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Route(RouteError::HostNotAllowed { .. }) => StatusCode::FORBIDDEN,
            ProxyError::Route(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::SigningFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Interception(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::TokenUnavailable(_) | ProxyError::TooManyConnections { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
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
