//! The admin port (`[admin] listen`), separate from the proxy port: `/healthz` (the process
//! answers), `/readyz` (config loaded, upstream roots loaded, every managed profile holds a valid
//! token) and `/metrics` (Prometheus text). Nothing here ever shows a secret.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::proxy::Proxy;
use crate::secret::constant_time_eq;

/// Admin connections served at once; more are closed on accept.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// `/readyz` waits at most this long for missing tokens before it answers.
const READY_TOKEN_WAIT: Duration = Duration::from_secs(5);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, proxy: Proxy, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    // /healthz needs no token: without a cap, anyone who reaches the port could hold every file
    // handle the proxy port needs.
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue;
                    };
                    let proxy = proxy.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        let service = service_fn(move |req| answer(proxy.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    let now = Instant::now();
                    if last_warning.map_or(true, |at| now.duration_since(at) >= Duration::from_secs(1)) {
                        last_warning = Some(now);
                        tracing::warn!(error = %e, "admin accept failed; backing off");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    connections.abort_all();
}

async fn answer(proxy: Proxy, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &error_body("method_not_allowed", "the admin endpoints answer GET"),
        ));
    }
    let path = req.uri().path();
    if path != "/healthz" && !authorized(&proxy, req.headers()) {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &error_body(
                "admin_auth_required",
                "this endpoint needs `Authorization: Bearer TOKEN` with [admin] token",
            ),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"signproxy-admin\""),
        );
        return Ok(response);
    }
    let response = match path {
        "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        "/readyz" => {
            let (ready, report) = readiness(&proxy).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, &report)
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(proxy.metrics().encode())));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        other => json_response(
            StatusCode::NOT_FOUND,
            &error_body(
                "not_found",
                &format!("no admin endpoint `{other}`: use /healthz, /readyz or /metrics"),
            ),
        ),
    };
    Ok(response)
}

/// Without `[admin] token` every endpoint is open (the config only allows that on loopback or
/// with `allow_unauthenticated`); with it, the bearer token must match, compared in constant
/// time over digests.
fn authorized(proxy: &Proxy, headers: &http::HeaderMap) -> bool {
    let state = proxy.state();
    let Some(token) = &state.config.admin.token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim())
    else {
        return false;
    };
    bool::from(constant_time_eq(
        given.as_bytes(),
        token.expose().as_bytes(),
    ))
}

/// Whether the proxy can serve signed requests now, and a report saying why (or why not).
pub async fn readiness(proxy: &Proxy) -> (bool, Value) {
    let state = proxy.state();
    // A profile without a token yet (or whose refresh failed) gets an attempt now, so a fresh
    // sidecar becomes ready without waiting for the app's first request.
    let _ = tokio::time::timeout(
        READY_TOKEN_WAIT,
        state
            .tokens
            .obtain_missing(&state.config, state.clock.now()),
    )
    .await;
    let mut ready = true;
    let mut tokens = serde_json::Map::new();
    for (profile, status) in state.tokens.status(state.clock.now()) {
        let entry = match status {
            Ok(expires_at) => json!({ "ok": true, "expires_at": expires_at }),
            Err(reason) => {
                ready = false;
                json!({ "ok": false, "reason": reason })
            }
        };
        tokens.insert(profile, entry);
    }
    // Reported, never a reason to be unready: a key that expires soon still signs.
    let mut credentials = serde_json::Map::new();
    for profile in &state.config.profiles {
        if let Some(expiry) = profile.signer.credential_expiry() {
            let mut entry = json!({ "what": expiry.what, "expires_at": expiry.at });
            if let Some(warning) = profile.expiry_warning(state.clock.now()) {
                entry["warning"] = Value::String(warning);
            }
            credentials.insert(profile.qualified_name(), entry);
        }
    }
    let report = json!({
        "ready": ready,
        "checks": {
            "config": { "ok": true, "source": state.config.source.display().to_string() },
            "upstream_roots": { "ok": true, "trusted": state.upstream.trusted_roots() },
            "tokens": tokens,
            "signing_credentials": credentials,
        }
    });
    (ready, report)
}

fn error_body(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
