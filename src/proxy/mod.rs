//! The proxy server: accept loop and graceful shutdown ([`run`]), per-request dispatch and the
//! canonical log line. `forward` handles absolute-form requests, `connect` handles CONNECT, and
//! `error` turns every failure into the one response shape.

pub mod connect;
pub mod error;
pub mod forward;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ca::{CaError, CertificateAuthority};
use crate::config::Config;
use crate::token::{TokenError, TokenManager};
use crate::upstream::{Upstream, UpstreamError};
pub use error::ProxyError;

/// Response bodies: the upstream's, streamed, or one of ours.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn empty_body() -> ProxyBody {
    full_body(Bytes::new())
}

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every request handler shares.
pub struct State {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    pub ca: Arc<CertificateAuthority>,
    pub tokens: TokenManager,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("interception CA: {0}")]
    Ca(#[from] CaError),
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
}

/// Serves proxy connections from `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to a grace period).
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let upstream = Upstream::new(&config.upstream)?;
    let (tokens, warnings) = TokenManager::new(&config, upstream.clone())?;
    for warning in warnings {
        tracing::error!("{warning}");
    }
    let state = Arc::new(State {
        upstream,
        ca: Arc::new(CertificateAuthority::load_or_create(&config.mitm)?),
        tokens,
        config,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(Arc::clone(&state), stream, stop_rx.clone()));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace elapsed; closing remaining connections"
        );
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection(
    state: Arc<State>,
    stream: tokio::net::TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| handle(Arc::clone(&state), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
        () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// What the canonical log line says about a request. Filled in as the request is understood.
#[derive(Debug, Default)]
pub struct RequestLog {
    pub host: String,
    pub path: String,
    pub profile: Option<String>,
}

/// Entry point for every request on the proxy port.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let mut log = RequestLog::default();
    let result = if method == Method::CONNECT {
        connect::handle(Arc::clone(&state), req, &mut log).await
    } else {
        forward::handle_absolute(&state, req, &mut log).await
    };
    Ok(finish(result, &method, &log, started))
}

/// Turns a handler's outcome into the response and writes the one log line for it.
pub fn finish(
    result: Result<Response<ProxyBody>, ProxyError>,
    method: &Method,
    log: &RequestLog,
    started: Instant,
) -> Response<ProxyBody> {
    let (response, error_code) = match result {
        Ok(response) => (response, None),
        Err(e) => (e.to_response(), Some(e.code())),
    };
    tracing::info!(
        method = %method,
        host = %log.host,
        path = %log.path,
        profile = log.profile.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        error = error_code.unwrap_or("-"),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}
