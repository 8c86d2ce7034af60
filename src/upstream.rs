//! The client side: keep-alive HTTP/1 connections over rustls (web roots + `ca_file`), pooled
//! per worker ([`pool`]), dialling through `connect_to` overrides while keeping Host, SNI and
//! certificate checks. One set of pools serves marketplace hosts; the other (passthrough) dials
//! only what the egress guard let through. Under `run --sandbox` the marketplace side is answered by the [`Sandbox`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::UpstreamSettings;
use crate::egress::{find_denied, EgressDenied, EgressError, EgressPolicy};
use crate::marketplace::tool::{Exchange, ToolFuture};
use crate::sandbox::{self, Sandbox};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream: buffered (signed) or streamed (passthrough).
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
/// Response bodies: the network's, streamed, or the sandbox's.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{reason}")]
    Connect { reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS setup failed: {0}")]
    TlsSetup(String),
    #[error(transparent)]
    Denied(EgressDenied),
}

pub mod pool;

use pool::Pool;

std::thread_local! {
    /// Which worker's pools this thread uses (see [`Upstream::new`]); other threads share one
    /// more set.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as worker `index`: its requests use that worker's pools, so an
/// upstream connection is driven by the event loop that uses it (no cross-thread wake-ups).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

/// The shared upstream clients. Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct Upstream {
    /// One connection pool per worker thread, plus one for every other thread.
    clients: Arc<[Arc<Pool>]>,
    guarded: Arc<[Arc<Pool>]>,
    /// `[upstream] max_in_flight`, split evenly over the client sets: a permit per request in
    /// flight, held until its answer has been read, so connections stay bounded.
    in_flight: Arc<[Arc<Semaphore>]>,
    dialer: Dialer,
    egress: Arc<EgressPolicy>,
    request_timeout: Duration,
    trusted_roots: usize,
    /// Set by `run --sandbox`: marketplace hosts and token endpoints are answered by the
    /// stand-ins; passthrough still goes to the network.
    sandbox: Option<Arc<Sandbox>>,
}

impl Upstream {
    /// `egress` guards every destination that is not a marketplace host (passthrough).
    /// `workers` is how many event-loop threads will call [`set_worker`]: each gets pools of
    /// its own.
    pub fn new(
        settings: &UpstreamSettings,
        egress: EgressPolicy,
        workers: usize,
    ) -> Result<Self, UpstreamError> {
        let tls = client_tls_config(&settings.extra_roots)?;
        let egress = Arc::new(egress);
        let dialer = Dialer {
            connect_to: Arc::new(settings.connect_to.clone()),
            timeout: settings.connect_timeout,
            guard: None,
        };
        let guarded_dialer = Dialer {
            guard: Some(Arc::clone(&egress)),
            ..dialer.clone()
        };
        let client = |dialer: Dialer| {
            Pool::new(
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(dialer),
            )
        };
        let sets = workers.max(1) + 1;
        let share = settings.max_in_flight.div_ceil(workers.max(1)).max(1);
        Ok(Upstream {
            in_flight: (0..sets).map(|_| Arc::new(Semaphore::new(share))).collect(),
            clients: (0..sets).map(|_| client(dialer.clone())).collect(),
            guarded: (0..sets).map(|_| client(guarded_dialer.clone())).collect(),
            dialer,
            egress,
            request_timeout: settings.request_timeout,
            trusted_roots: webpki_roots::TLS_SERVER_ROOTS.len() + settings.extra_roots.len(),
            sandbox: None,
        })
    }

    /// Answers marketplace requests with `sandbox` instead of the network.
    pub fn with_sandbox(mut self, sandbox: Arc<Sandbox>) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    pub fn sandbox(&self) -> Option<&Arc<Sandbox>> {
        self.sandbox.as_ref()
    }

    /// Sends one request to a marketplace host and waits (up to the request timeout) for the
    /// response head; the body then streams.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match &self.sandbox {
            Some(sandbox) => sandbox
                .respond(req)
                .await
                .map(|answer| answer.map(sandbox::full))
                .map_err(|e| UpstreamError::Connect {
                    reason: format!("reading the request body for the sandbox failed: {e}"),
                }),
            None => {
                self.send_with(pick(&self.clients), pick(&self.in_flight), req)
                    .await
            }
        }
    }

    /// Like [`Upstream::send`], for a destination that must pass the egress guard.
    pub async fn send_guarded(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.send_with(pick(&self.guarded), pick(&self.in_flight), req)
            .await
    }

    async fn send_with(
        &self,
        pool: &Arc<Pool>,
        in_flight: &Arc<Semaphore>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let exchange = async {
            // The semaphore is never closed, so this only waits.
            let permit = Arc::clone(in_flight).acquire_owned().await.ok();
            pool.send(req, permit).await
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp.map(BodyExt::boxed)),
            Ok(Err(e)) => match find_denied(&*e) {
                Some(denied) => Err(UpstreamError::Denied(denied.clone())),
                None => Err(UpstreamError::Connect {
                    reason: describe_client_error(&*e),
                }),
            },
        }
    }

    /// Sends a small request (a token grant, a key request: never logged, it carries
    /// credentials) and reads its whole answer, up to `limit` bytes, both within the request
    /// timeout: a stalled body would otherwise hold whatever waits on it. `what` names the far
    /// end in errors.
    pub async fn exchange(
        &self,
        request: Request<Bytes>,
        limit: usize,
        what: &str,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let request = request.map(|body: Bytes| {
            Full::new(body)
                .map_err(|never| -> BoxError { match never {} })
                .boxed()
        });
        let deadline = self.request_timeout;
        let exchange = async {
            let response = self
                .send(request)
                .await
                .map_err(|e| format!("{what} could not be reached: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading {what}'s answer failed: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{what} did not answer in full within {deadline:?} ([upstream] request_timeout_ms)"
                ))
            })
    }

    /// A raw TCP connection for a passthrough tunnel, to an address the egress guard allows.
    pub async fn dial_guarded(&self, host: &str, port: u16) -> Result<TcpStream, EgressError> {
        dial_guarded(
            &self.egress,
            &self.dialer.connect_to,
            host,
            port,
            self.dialer.timeout,
        )
        .await
    }

    /// How many root certificates upstream TLS trusts (web roots plus `ca_file`).
    pub fn trusted_roots(&self) -> usize {
        self.trusted_roots
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn connect_to(&self) -> &BTreeMap<String, String> {
        &self.dialer.connect_to
    }

    pub fn connect_timeout(&self) -> Duration {
        self.dialer.timeout
    }
}

impl Exchange for Upstream {
    fn exchange<'a>(
        &'a self,
        request: Request<Bytes>,
        what: &'a str,
    ) -> ToolFuture<'a, Result<(http::StatusCode, Bytes), String>> {
        Box::pin(Upstream::exchange(
            self,
            request,
            MAX_TOOL_ANSWER_BYTES,
            what,
        ))
    }
}

/// What a marketplace command reads of an answer at most (an eBay signing key is about 3 KiB).
const MAX_TOOL_ANSWER_BYTES: usize = 1 << 20;

/// The calling thread's entry (client, limit): its worker's, or the last for any other thread.
fn pick<T>(clients: &[T]) -> &T {
    let last = clients.len().saturating_sub(1);
    let index = WORKER.with(|w| w.get()).map_or(last, |i| i.min(last));
    &clients[index]
}

/// rustls client config trusting the web roots plus `extra_roots`, with the ring provider.
pub fn client_tls_config(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| UpstreamError::TlsSetup(format!("[upstream] ca_file: {e}")))?;
    }
    // No ALPN here: the hyper-rustls connector sets it (and panics if it is already set).
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| UpstreamError::TlsSetup(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// Flattens an error chain into one sentence, with a hint for the usual TLS trust problem.
fn describe_client_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    let mut reason = parts.join(": ");
    if reason.contains("UnknownIssuer") || reason.contains("invalid peer certificate") {
        reason.push_str(" (if this upstream uses a private CA, add its PEM to [upstream] ca_file)");
    }
    reason
}

/// Dials TCP for the TLS connector, applying `connect_to` and the connect timeout.
#[derive(Clone)]
pub struct Dialer {
    connect_to: Arc<BTreeMap<String, String>>,
    timeout: Duration,
    /// Set for the passthrough client: every address is checked before it is dialled.
    guard: Option<Arc<EgressPolicy>>,
}

/// A dialled TCP connection for the TLS connector. hyper-util's own wrapper reports the peer
/// addresses, which its client then copies into every response's extensions (two allocations
/// per request) for nobody to read.
pub struct Dialled(TokioIo<TcpStream>);

impl hyper_util::client::legacy::connect::Connection for Dialled {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for Dialled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Dialled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = Dialled;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let default_port = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let connect_to = Arc::clone(&self.connect_to);
        let timeout = self.timeout;
        let guard = self.guard.clone();
        Box::pin(async move {
            let stream = match guard {
                Some(policy) => dial_guarded(&policy, &connect_to, &host, port, timeout).await?,
                None => dial(&connect_to, &host, port, timeout).await?,
            };
            Ok(Dialled(TokioIo::new(stream)))
        })
    }
}

/// Opens a TCP connection to `host:port`, or to its `connect_to` override, through the egress
/// guard: an override is an address like any other, and is checked too.
async fn dial_guarded(
    policy: &EgressPolicy,
    connect_to: &BTreeMap<String, String>,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, EgressError> {
    let key = format!("{}:{port}", host.to_ascii_lowercase());
    match connect_to
        .get(&key)
        .and_then(|to| to.rsplit_once(':'))
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    {
        Some((to_host, to_port)) => policy.dial(to_host, to_port, timeout).await,
        None => policy.dial(host, port, timeout).await,
    }
}

/// Opens a TCP connection to `host:port`, or to its `connect_to` override.
pub async fn dial(
    connect_to: &BTreeMap<String, String>,
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let key = format!("{}:{port}", host.to_ascii_lowercase());
    let target = connect_to.get(&key).map(String::as_str).unwrap_or(&key);
    let stream = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TCP connect to {target} timed out after {timeout:?} ([upstream] connect_timeout_ms)"),
            )
        })?
        .map_err(|e| io::Error::new(e.kind(), format!("TCP connect to {target}: {e}")))?;
    // Latency matters more than packet count for request/response traffic.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
