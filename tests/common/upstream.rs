//! A real HTTP/1.1 (TLS or plain) upstream on 127.0.0.1 that records and echoes every request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::{JoinHandle, JoinSet};

use super::ca::TestCa;
use super::received::{Received, Verdict};
use super::verify::Verifier;

/// The DNS names every TLS test upstream's certificate covers (plus 127.0.0.1).
pub const UPSTREAM_NAMES: &[&str] = &[
    "localhost",
    "open-api.tiktokglobalshop.com",
    "auth.tiktok-shops.com",
    "api.ebay.com",
    "apiz.ebay.com",
    "api.sandbox.ebay.com",
    "apiz.sandbox.ebay.com",
    "partner.shopeemobile.com",
    "api.lazada.sg",
    "auth.lazada.com",
    "api-sg.aliexpress.com",
    "api.amazon.com",
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
    "sandbox.sellingpartnerapi-na.amazon.com",
];

/// A streamed response body: `total` bytes of [`pattern_bytes`] in `chunk`-sized frames.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub total: usize,
    pub chunk: usize,
    /// Pause before each chunk after the first.
    pub chunk_delay: Option<Duration>,
    /// Send `content-length: total` (else chunked transfer encoding).
    pub content_length: bool,
}

/// How the upstream answers. Default: 200 JSON echo, at once.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Wait this long (after reading the whole request) before sending the response head.
    pub delay: Option<Duration>,
    /// Response status (default 200).
    pub status: Option<u16>,
    /// Replaces the JSON echo (content-type stays application/json unless set in `headers`).
    pub body: Option<Vec<u8>>,
    /// Extra response headers; each replaces a default header of the same name.
    pub headers: Vec<(String, String)>,
    /// A large streamed body instead of the echo.
    pub stream: Option<StreamSpec>,
    /// Send `connection: close` and close after the response.
    pub close: bool,
    /// Close the connection without any response.
    pub hang_up: bool,
    /// Send `body` (or the echo) in chunked transfer encoding, in small frames, with no
    /// content-length: as API gateways often do.
    pub chunked: bool,
    /// Hold the response head until the test opens this gate (sends `true`): an answer that is
    /// in flight for exactly as long as the test needs, however slow the machine is.
    pub held: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The sending half of a [`Behaviour::held_until`] gate.
pub type Gate = tokio::sync::watch::Sender<bool>;

/// A closed gate and the receiver to give [`Behaviour::held_until`].
pub fn gate() -> (Gate, tokio::sync::watch::Receiver<bool>) {
    tokio::sync::watch::channel(false)
}

impl Behaviour {
    /// The default: 200 JSON echo.
    pub fn echo() -> Behaviour {
        Behaviour::default()
    }

    /// The echo, after `delay`.
    pub fn delayed(delay: Duration) -> Behaviour {
        Behaviour {
            delay: Some(delay),
            ..Behaviour::default()
        }
    }

    /// `status` with `body` as application/json.
    pub fn json(status: u16, body: &str) -> Behaviour {
        Behaviour {
            status: Some(status),
            body: Some(body.as_bytes().to_vec()),
            ..Behaviour::default()
        }
    }

    /// `status` with `body` and the given content type.
    pub fn respond(status: u16, content_type: &str, body: &[u8]) -> Behaviour {
        Behaviour {
            status: Some(status),
            body: Some(body.to_vec()),
            headers: vec![("content-type".into(), content_type.into())],
            ..Behaviour::default()
        }
    }

    /// A TikTok Shop envelope error, e.g. `tiktok_error(200, 105002, "access token expired")`.
    pub fn tiktok_error(http_status: u16, code: i64, message: &str) -> Behaviour {
        let body = serde_json::json!({
            "code": code,
            "message": message,
            "request_id": "test-upstream",
            "data": null,
        });
        Behaviour::json(http_status, &body.to_string())
    }

    /// A TikTok Shop token endpoint grant: `access_token` valid for `lifetime` seconds from now,
    /// and a rotated `refresh_token` valid for 30 days.
    pub fn tiktok_grant(access_token: &str, refresh_token: &str, lifetime: u64) -> Behaviour {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let body = serde_json::json!({
            "code": 0, "message": "success", "request_id": "t",
            "data": {
                "access_token": access_token,
                "access_token_expire_in": now + lifetime,
                "refresh_token": refresh_token,
                "refresh_token_expire_in": now + 30 * 86400,
            }
        });
        Behaviour::json(200, &body.to_string())
    }

    /// An eBay error, e.g. `ebay_error(401, 1001, "Invalid access token")`.
    pub fn ebay_error(http_status: u16, error_id: i64, message: &str) -> Behaviour {
        let body = serde_json::json!({
            "errors": [{
                "errorId": error_id,
                "domain": "ACCESS",
                "category": "REQUEST",
                "message": message,
            }]
        });
        Behaviour::json(http_status, &body.to_string())
    }

    /// 200 with `total` bytes of [`pattern_bytes`] streamed in `chunk`-sized frames, chunked.
    pub fn stream(total: usize, chunk: usize) -> Behaviour {
        Behaviour {
            stream: Some(StreamSpec {
                total,
                chunk: chunk.max(1),
                chunk_delay: None,
                content_length: false,
            }),
            ..Behaviour::default()
        }
    }

    /// Close the connection without answering.
    pub fn hang_up() -> Behaviour {
        Behaviour {
            hang_up: true,
            ..Behaviour::default()
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Behaviour {
        self.delay = Some(delay);
        self
    }

    pub fn with_status(mut self, status: u16) -> Behaviour {
        self.status = Some(status);
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Behaviour {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_chunked(mut self) -> Behaviour {
        self.chunked = true;
        self
    }

    pub fn with_close(mut self) -> Behaviour {
        self.close = true;
        self
    }

    /// Answer only once `gate` opens (see [`gate`]); a gate dropped unopened means no answer.
    pub fn held_until(mut self, gate: tokio::sync::watch::Receiver<bool>) -> Behaviour {
        self.held = Some(gate);
        self
    }
}

/// Byte `i` of every streamed body: `(i % 251) as u8` (a prime period, so offsets show).
pub fn pattern_bytes(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// Decides the behaviour per request; `None` falls through to the queue, then the default.
pub type Handler = Arc<dyn Fn(&Received) -> Option<Behaviour> + Send + Sync>;

/// Options for [`TestUpstream::start_with`] / [`TestUpstream::start_plain_with`].
#[derive(Clone)]
pub struct UpstreamOptions {
    pub verifier: Verifier,
    /// Names the certificate covers besides [`UPSTREAM_NAMES`].
    pub extra_names: Vec<String>,
    /// The default behaviour.
    pub behaviour: Behaviour,
    /// ALPN protocols offered by the TLS server (default `http/1.1` only; add `h2` to serve
    /// HTTP/2 to clients that pick it).
    pub alpn: Vec<Vec<u8>>,
}

impl UpstreamOptions {
    pub fn new(verifier: Verifier) -> UpstreamOptions {
        UpstreamOptions {
            verifier,
            extra_names: Vec::new(),
            behaviour: Behaviour::default(),
            alpn: vec![b"http/1.1".to_vec()],
        }
    }
}

struct Shared {
    requests: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    handshake_errors: Mutex<Vec<String>>,
    verifier: Mutex<Verifier>,
    default: Mutex<Behaviour>,
    queue: Mutex<VecDeque<Behaviour>>,
    handler: Mutex<Option<Handler>>,
    notify: tokio::sync::Notify,
}

/// A recording, echoing upstream. Dropping it stops the server and closes its connections.
pub struct TestUpstream {
    addr: SocketAddr,
    tls: bool,
    names: Vec<String>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl TestUpstream {
    /// A TLS upstream for [`UPSTREAM_NAMES`]. Must be called inside a Tokio runtime.
    pub fn start(ca: &TestCa, verifier: Verifier) -> TestUpstream {
        Self::start_with(ca, UpstreamOptions::new(verifier))
    }

    /// A TLS upstream with options. Must be called inside a Tokio runtime.
    pub fn start_with(ca: &TestCa, opts: UpstreamOptions) -> TestUpstream {
        let mut names: Vec<String> = UPSTREAM_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(opts.extra_names.iter().cloned());
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let alpn: Vec<&[u8]> = opts.alpn.iter().map(Vec::as_slice).collect();
        let cfg = ca.server_config_with_alpn(&name_refs, &alpn);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        Self::spawn(Some(acceptor), names, opts)
    }

    /// A plain-HTTP (no TLS) upstream. Must be called inside a Tokio runtime.
    pub fn start_plain(verifier: Verifier) -> TestUpstream {
        Self::start_plain_with(UpstreamOptions::new(verifier))
    }

    pub fn start_plain_with(opts: UpstreamOptions) -> TestUpstream {
        Self::spawn(None, Vec::new(), opts)
    }

    fn spawn(
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        names: Vec<String>,
        opts: UpstreamOptions,
    ) -> TestUpstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .expect("TestUpstream must be started inside a Tokio runtime");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            handshake_errors: Mutex::new(Vec::new()),
            verifier: Mutex::new(opts.verifier),
            default: Mutex::new(opts.behaviour),
            queue: Mutex::new(VecDeque::new()),
            handler: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        });
        let tls = acceptor.is_some();
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _peer)) = accepted else { continue };
                        let id = task_shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        conns.spawn(serve_conn(tcp, acceptor.clone(), task_shared.clone(), id));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        TestUpstream {
            addr,
            tls,
            names,
            shared,
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The DNS names the certificate covers (empty for plain).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `https://localhost:PORT` (TLS) or `http://127.0.0.1:PORT` (plain), plus `path`.
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.port())
        } else {
            format!("http://127.0.0.1:{}{path}", self.port())
        }
    }

    /// `("NAME:443", "127.0.0.1:PORT")` for every certificate name, for `[upstream] connect_to`.
    pub fn connect_to_entries(&self) -> Vec<(String, String)> {
        self.names
            .iter()
            .map(|n| (format!("{n}:443"), self.addr.to_string()))
            .collect()
    }

    /// The same as a TOML inline table: `{ "api.ebay.com:443" = "127.0.0.1:PORT", ... }`.
    pub fn connect_to_toml(&self) -> String {
        let items: Vec<String> = self
            .connect_to_entries()
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        format!("{{ {} }}", items.join(", "))
    }

    /// An `[upstream]` TOML section trusting `ca_file` and routing every certificate name here.
    pub fn upstream_toml_section(&self, ca_file: &std::path::Path) -> String {
        format!(
            "[upstream]\nca_file = {:?}\nconnect_to = {}\n",
            ca_file.to_string_lossy(),
            self.connect_to_toml()
        )
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The last request received; panics when there is none.
    pub fn last_request(&self) -> Received {
        self.requests()
            .pop()
            .expect("the test upstream has received no request")
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// TCP connections accepted so far (TLS handshake or not).
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client did not trust the test CA).
    pub fn handshake_errors(&self) -> Vec<String> {
        self.shared.handshake_errors.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let reqs = self.requests();
            if reqs.len() >= n {
                return reqs;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "waited {timeout:?} for {n} requests at the test upstream; got {}",
                    self.requests().len()
                );
            }
        }
    }

    pub fn set_verifier(&self, verifier: Verifier) {
        *self.shared.verifier.lock().unwrap() = verifier;
    }

    /// Replaces the default behaviour.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.default.lock().unwrap() = behaviour;
    }

    /// Queues a one-shot behaviour: the next request without a handler decision gets it.
    pub fn push_behaviour(&self, behaviour: Behaviour) {
        self.shared.queue.lock().unwrap().push_back(behaviour);
    }

    /// Installs a per-request decision (it sees the request and its verdict).
    pub fn set_handler(&self, f: impl Fn(&Received) -> Option<Behaviour> + Send + Sync + 'static) {
        *self.shared.handler.lock().unwrap() = Some(Arc::new(f));
    }

    pub fn clear_handler(&self) {
        *self.shared.handler.lock().unwrap() = None;
    }

    /// Stops accepting and closes every connection, and waits for that to finish.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    conn: usize,
) {
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => serve_io(tcp, false, None, shared, conn).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(stream) => {
                let (_, session) = stream.get_ref();
                let sni = session.server_name().map(str::to_string);
                let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
                serve_io(stream, h2, sni, shared, conn).await
            }
            Err(e) => shared
                .handshake_errors
                .lock()
                .unwrap()
                .push(format!("connection {conn}: {e}")),
        },
    }
}

async fn serve_io<I>(io: I, h2: bool, sni: Option<String>, shared: Arc<Shared>, conn: usize)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, shared.clone(), conn, sni.clone()));
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(io, svc)
            .await;
    }
}

type RespBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: usize,
    sni: Option<String>,
) -> Result<Response<RespBody>, std::io::Error> {
    let (parts, mut body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut bytes = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let mut received = Received {
        method: parts.method.as_str().to_string(),
        path_and_query,
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers,
        body: bytes,
        body_error,
        tls_sni: sni,
        connection: conn,
        signature: Verdict::none(),
    };
    let verifier = shared.verifier.lock().unwrap().clone();
    received.signature = verifier.check(&received);

    let handler = shared.handler.lock().unwrap().clone();
    let behaviour = handler
        .and_then(|h| h(&received))
        .or_else(|| shared.queue.lock().unwrap().pop_front())
        .unwrap_or_else(|| shared.default.lock().unwrap().clone());

    let echo = echo_json(&received);
    shared.requests.lock().unwrap().push(received);
    shared.notify.notify_waiters();

    if behaviour.hang_up {
        return Err(std::io::Error::other(
            "test upstream hangs up (Behaviour::hang_up)",
        ));
    }
    if let Some(delay) = behaviour.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(mut gate) = behaviour.held.clone() {
        if gate.wait_for(|open| *open).await.is_err() {
            // The test dropped the gate without opening it: never answer.
            std::future::pending::<()>().await;
        }
    }
    let mut builder = Response::builder().status(behaviour.status.unwrap_or(200));
    let body: RespBody = if let Some(spec) = behaviour.stream.clone() {
        builder = builder.header("content-type", "application/octet-stream");
        if spec.content_length {
            builder = builder.header("content-length", spec.total.to_string());
        }
        stream_body(spec)
    } else {
        builder = builder.header("content-type", "application/json");
        let bytes = behaviour
            .body
            .clone()
            .unwrap_or_else(|| echo.to_string().into_bytes());
        if behaviour.chunked {
            chunked_body(bytes)
        } else {
            Full::new(Bytes::from(bytes)).boxed()
        }
    };
    let mut resp = builder.body(body).expect("response");
    for (name, value) in &behaviour.headers {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = hyper::header::HeaderValue::from_str(value).expect("header value");
        resp.headers_mut().insert(name, value);
    }
    if behaviour.close {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// The JSON echo of a request.
pub fn echo_json(r: &Received) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &r.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        match headers.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), serde_json::Value::String(value));
            }
        }
    }
    use base64::Engine as _;
    serde_json::json!({
        "method": r.method,
        "path": r.path(),
        "query": r.query(),
        "uri": r.uri,
        "version": r.version,
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "body_len": r.body.len(),
        "sni": r.tls_sni,
        "connection": r.connection,
        "signature": {
            "scheme": r.signature.scheme,
            "ok": r.signature.ok,
            "error": r.signature.error,
        },
    })
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// `bytes` in 16-byte frames with no declared length, so hyper sends it chunked.
fn chunked_body(bytes: Vec<u8>) -> RespBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(bytes.len() / 16 + 1);
    for piece in bytes.chunks(16) {
        let _ = tx.try_send(Bytes::copy_from_slice(piece));
    }
    ChannelBody { rx }.boxed()
}

fn stream_body(spec: StreamSpec) -> RespBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < spec.total {
            if offset > 0 {
                if let Some(d) = spec.chunk_delay {
                    tokio::time::sleep(d).await;
                }
            }
            let len = spec.chunk.min(spec.total - offset);
            if tx
                .send(Bytes::from(pattern_bytes(offset, len)))
                .await
                .is_err()
            {
                return;
            }
            offset += len;
        }
    });
    ChannelBody { rx }.boxed()
}
