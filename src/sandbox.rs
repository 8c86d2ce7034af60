//! The sandbox: every marketplace host (and token endpoint) a profile serves, answered by that
//! marketplace's built-in stand-in instead of the network. `run --sandbox` puts it behind the
//! upstream client, after the whole proxy path (routing, signing, tokens, interception);
//! `sandbox serve` puts it behind an HTTPS listener of its own, for code that signs by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use serde_json::json;

use crate::clock::SharedClock;
use crate::config::{Config, Profile};
use crate::marketplace::stand_in::TokenBook;
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest};
use crate::route::normalize_host;

/// Every answer carries this header, so nobody mistakes a stand-in's answer for the
/// marketplace's.
pub const SANDBOX_HEADER: &str = "x-signproxy-sandbox";

/// `POST` here, on any host the sandbox answers, expires every access token it has issued (as a
/// marketplace revoking tokens early would): the next request shows refresh-on-expiry at work.
pub const EXPIRE_TOKENS_PATH: &str = "/signproxy-sandbox/expire-tokens";

/// The stand-ins of one config, with the token book they share.
pub struct Sandbox {
    config: Arc<Config>,
    clock: SharedClock,
    book: Arc<TokenBook>,
    requests: AtomicU64,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

impl Sandbox {
    /// `book` carries the issued tokens over from the sandbox of a previous config (a reload).
    pub fn new(config: Arc<Config>, clock: SharedClock, book: Arc<TokenBook>) -> Sandbox {
        Sandbox {
            config,
            clock,
            book,
            requests: AtomicU64::new(0),
        }
    }

    pub fn book(&self) -> &Arc<TokenBook> {
        &self.book
    }

    /// The profile whose stand-in answers `req`: among the profiles serving its host (or whose
    /// token endpoint it is), the one whose app the request names, else the first.
    pub fn profile_for(&self, req: &SandboxRequest) -> Option<&Arc<Profile>> {
        let candidates: Vec<&Arc<Profile>> = self
            .config
            .profiles
            .iter()
            .filter(|p| {
                let token = p.stand_in.is_token_request(req)
                    && (p.serves(&req.host) || p.stand_in.token_hosts().contains(&req.host));
                token || p.serves(&req.host)
            })
            .collect();
        candidates
            .iter()
            .find(|p| p.stand_in.claims(req))
            .or(candidates.first())
            .copied()
    }

    /// The stand-in's answer to `req`.
    pub fn answer(&self, req: &SandboxRequest) -> SandboxAnswer {
        let serial = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = format!("sandbox-{serial:08}");
        if req.path == EXPIRE_TOKENS_PATH && req.method == http::Method::POST {
            self.book.expire_access_tokens();
            tracing::info!("sandbox: every access token issued so far is now expired");
            return SandboxAnswer::new(
                StatusCode::OK,
                json!({"expired": "every access token issued so far", "request_id": request_id}),
            );
        }
        let Some(profile) = self.profile_for(req) else {
            return SandboxAnswer::new(
                StatusCode::MISDIRECTED_REQUEST,
                json!({
                    "error": "no_stand_in",
                    "message": format!("the sandbox has no profile serving {}: add it to a profile's hosts", req.host),
                }),
            );
        };
        let cx = SandboxContext {
            now: self.clock.now(),
            token_ttl_secs: self.config.sandbox.token_ttl_secs,
            tokens: &self.book,
            request_id: &request_id,
        };
        let answer = profile.stand_in.answer(req, &cx);
        tracing::debug!(
            profile = %profile.qualified_name(),
            status = answer.status.as_u16(),
            request_id,
            "sandbox answered"
        );
        answer
    }

    /// Answers an HTTP request: the body is read whole (the proxy has buffered it already),
    /// the answer is JSON with a `Date` from the sandbox's clock.
    pub async fn respond<B>(&self, req: Request<B>) -> Result<Response<Bytes>, B::Error>
    where
        B: Body,
    {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let authority = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        let host = authority
            .parse::<http::uri::Authority>()
            .map(|a| normalize_host(a.host()))
            .unwrap_or_else(|_| normalize_host(&authority));
        let req = SandboxRequest {
            method: parts.method,
            host,
            authority,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        };
        Ok(self.to_response(self.answer(&req)))
    }

    fn to_response(&self, answer: SandboxAnswer) -> Response<Bytes> {
        let body = Bytes::from(answer.body.to_string());
        let mut response = Response::new(body);
        *response.status_mut() = answer.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(SANDBOX_HEADER, HeaderValue::from_static("1"));
        let now =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.clock.now().millis());
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
            headers.insert(header::DATE, date);
        }
        response
    }
}

/// A sandbox answer as a response body of any error type.
pub fn full<E>(bytes: Bytes) -> http_body_util::combinators::BoxBody<Bytes, E>
where
    E: 'static,
{
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Connections `sandbox serve` handles at once; more wait in the listen backlog.
const SERVE_CONNECTIONS: usize = 256;
/// A client must finish its TLS handshake and each request head within this.
const SERVE_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `signproxy sandbox serve`: the stand-ins as an HTTPS server of their own. The certificate
/// for each connection is issued by the local CA for the name the client asked for (SNI), so a
/// client that trusts the CA and dials this port for a marketplace host (curl `--connect-to`, a
/// base-URL override) gets the marketplace's verdict on its own signing.
pub async fn serve(
    sandbox: Arc<Sandbox>,
    ca: Arc<crate::ca::CertificateAuthority>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(SERVE_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let sandbox = Arc::clone(&sandbox);
        let ca = Arc::clone(&ca);
        connections.spawn(async move {
            let _permit = permit;
            if let Err(reason) = serve_connection(sandbox, &ca, stream).await {
                tracing::debug!(reason, "sandbox connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

async fn serve_connection(
    sandbox: Arc<Sandbox>,
    ca: &crate::ca::CertificateAuthority,
    stream: tokio::net::TcpStream,
) -> Result<(), String> {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::time::timeout(SERVE_HEAD_TIMEOUT, acceptor)
        .await
        .map_err(|_| "no TLS ClientHello in time".to_owned())?
        .map_err(|e| format!("not a TLS ClientHello: {e}"))?;
    let Some(host) = start.client_hello().server_name().map(str::to_owned) else {
        return Err(
            "the client sent no server name (SNI): call the marketplace host, e.g. curl --connect-to HOST:443:ADDR"
                .to_owned(),
        );
    };
    let config = ca.server_config(&host).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(SERVE_HEAD_TIMEOUT, start.into_stream(config))
        .await
        .map_err(|_| "TLS handshake did not finish in time".to_owned())?
        .map_err(|e| {
            tracing::warn!(host, error = %e, "TLS handshake failed: does the client trust signproxy's CA (`signproxy ca cert`)?");
            e.to_string()
        })?;
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let sandbox = Arc::clone(&sandbox);
        async move {
            let response = sandbox.respond(req).await?;
            Ok::<_, hyper::Error>(response.map(Full::new))
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(SERVE_HEAD_TIMEOUT);
    builder
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}
