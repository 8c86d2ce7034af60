//! The proxy server: [`Proxy`] holds the live state (swapped whole on reload) and runs the
//! accept loop with its limits and graceful shutdown. `admission` checks every request first
//! (proxy authentication, head limits), `forward` handles absolute-form requests, `connect` handles CONNECT, `access_log` writes the canonical line, `limits` owns connection
//! slots and timeouts, `workers` runs one event loop per worker thread, and `error` turns every
//! failure into the one response shape.

pub mod access_log;
pub mod admission;
pub mod connect;
pub mod error;
pub mod forward;
pub mod limits;
pub mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::ca::{CaError, CertificateAuthority};
use crate::clock::{self, SharedClock};
use crate::config::Config;
use crate::egress::EgressPolicy;
use crate::metrics::Metrics;
use crate::sandbox::Sandbox;
use crate::token::store::TokenStore;
use crate::token::{TokenError, TokenManager};
use crate::upstream::{Upstream, UpstreamError};
pub use access_log::{finish, RequestLog};
pub use error::ProxyError;
use limits::{reached, Activity, ConnectionSlot, Phase, Watched};

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

/// Everything built from one config. A reload builds a new one; requests already running keep
/// the one they started with.
pub struct State {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    pub ca: Arc<CertificateAuthority>,
    pub tokens: TokenManager,
    pub metrics: Arc<Metrics>,
    /// Request-body bytes buffered across all requests, in KiB permits (`max_buffered_bytes`);
    /// shared across reloads, like the connection slots.
    pub buffer_budget: Arc<Semaphore>,
    /// Where signing and token expiry read the time.
    pub clock: SharedClock,
}

/// One permit of [`State::buffer_budget`] stands for this many bytes.
pub const BUFFER_PERMIT_BYTES: u64 = 1024;

impl State {
    /// Builds the state for `config`; `previous` lends its token entries so a reload neither
    /// forgets tokens nor races a refresh in flight.
    fn build(
        config: Arc<Config>,
        metrics: &Arc<Metrics>,
        previous: Option<&State>,
        own_addresses: &[SocketAddr],
        clock: SharedClock,
    ) -> Result<State, ServeError> {
        let egress = EgressPolicy {
            allow_networks: config.proxy.allow_networks.clone(),
            own_addresses: own_addresses
                .iter()
                .copied()
                .chain(Some(config.proxy.listen))
                .chain(config.admin.listen)
                .collect(),
        };
        let mut upstream = Upstream::new(&config.upstream, egress, config.proxy.workers)?;
        // Tokens the sandbox issued are honoured across a reload, as the marketplace would.
        let same_mode = previous.filter(|p| p.config.sandbox.enabled == config.sandbox.enabled);
        if config.sandbox.enabled {
            let book = previous
                .and_then(|p| p.upstream.sandbox())
                .map(|s| Arc::clone(s.book()))
                .unwrap_or_default();
            let sandbox = Sandbox::new(Arc::clone(&config), Arc::clone(&clock), book);
            upstream = upstream.with_sandbox(Arc::new(sandbox));
        }
        let buffer_budget = match previous {
            Some(p) => Arc::clone(&p.buffer_budget),
            None => {
                let permits = config
                    .proxy
                    .max_buffered_bytes
                    .div_ceil(BUFFER_PERMIT_BYTES);
                Arc::new(Semaphore::new(
                    usize::try_from(permits)
                        .unwrap_or(usize::MAX)
                        .min(Semaphore::MAX_PERMITS),
                ))
            }
        };
        let (tokens, warnings) = TokenManager::new(
            &config,
            upstream.clone(),
            Arc::clone(metrics),
            // Never a sandbox token for the marketplace, nor the other way round.
            same_mode.map(|p| &p.tokens),
            clock.now(),
        )?;
        for warning in warnings {
            tracing::error!("{warning}");
        }
        let ca = CertificateAuthority::load_or_create(&config.mitm)?;
        // Logged on every build, so a reload repeats what is still unfixed.
        let token_file = TokenStore::permission_warning(&config.proxy.state_dir);
        let expiring = config
            .profiles
            .iter()
            .filter_map(|p| p.expiry_warning(clock.now()));
        for warning in config
            .warnings
            .iter()
            .cloned()
            .chain(ca.warnings().iter().cloned())
            .chain(token_file)
            .chain(expiring)
        {
            tracing::warn!("{warning}");
        }
        Ok(State {
            upstream,
            ca: Arc::new(ca),
            tokens,
            config,
            metrics: Arc::clone(metrics),
            buffer_budget,
            clock,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("interception CA: {0}")]
    Ca(#[from] CaError),
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
    #[error("worker runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The running proxy: its current [`State`] and the process-wide metrics. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    current: Arc<RwLock<Arc<State>>>,
    metrics: Arc<Metrics>,
    /// `[proxy] max_connections`, shared by every listener (one per worker) and across reloads.
    slots: Arc<Semaphore>,
    /// Refusing politely (a 503 after reading the request) also takes a task and a socket: at
    /// most as many as there are slots; past that a connection is just closed.
    refusals: Arc<Semaphore>,
    /// Where this process listens (proxy and admin, as bound): never a passthrough destination.
    own_addresses: Arc<Vec<SocketAddr>>,
}

impl Proxy {
    /// `own_addresses` are the addresses actually bound (they differ from the config's when it
    /// says port 0); the egress guard refuses them so the proxy never dials itself.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        own_addresses: Vec<SocketAddr>,
    ) -> Result<Proxy, ServeError> {
        Self::with_clock(config, metrics, own_addresses, clock::system())
    }

    /// Like [`Proxy::new`], reading time from `clock` (tests move a manual one).
    pub fn with_clock(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        own_addresses: Vec<SocketAddr>,
        clock: SharedClock,
    ) -> Result<Proxy, ServeError> {
        let max_connections = config.proxy.max_connections;
        let state = State::build(config, &metrics, None, &own_addresses, clock)?;
        Ok(Proxy {
            current: Arc::new(RwLock::new(Arc::new(state))),
            metrics,
            slots: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(max_connections)),
            own_addresses: Arc::new(own_addresses),
        })
    }

    /// The state new requests use.
    pub fn state(&self) -> Arc<State> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Switches to `config` for every request from now on. On error nothing changes. Returns
    /// notes on settings that only take effect at start.
    pub fn reload(&self, config: Arc<Config>) -> Result<Vec<String>, ServeError> {
        let old = self.state();
        let state = State::build(
            config,
            &self.metrics,
            Some(&old),
            &self.own_addresses,
            Arc::clone(&old.clock),
        )?;
        let notes = restart_only_changes(&old.config, &state.config);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        Ok(notes)
    }

    /// Serves proxy connections from `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish within `[proxy] shutdown_grace_ms`. Several listeners (one per worker
    /// thread) may be served at once: they share the connection slots, and each returns once
    /// every connection has ended.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let max_connections = self.state().config.proxy.max_connections;
        let slots = &self.slots;
        let refusals = &self.refusals;
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let _ = stream.set_nodelay(true);
                        match Arc::clone(slots).try_acquire_owned() {
                            Ok(permit) => {
                                let conn = ConnContext {
                                    slot: ConnectionSlot::new(permit, Arc::clone(&self.metrics)),
                                    activity: Activity::new(),
                                    phase: phase_rx.clone(),
                                };
                                connections.spawn(serve_connection(self.clone(), stream, conn));
                            }
                            Err(_) => {
                                self.metrics.connection_refused();
                                if let Ok(refusal) = Arc::clone(refusals).try_acquire_owned() {
                                    connections.spawn(refuse_connection(self.state(), stream, max_connections, refusal));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning, and say so at most once a
                        // second however long it lasts, across every worker's listener.
                        if accept_warning_due() {
                            tracing::warn!(error = %e, "accept failed (out of file handles?); backing off");
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let grace = self.state().config.proxy.shutdown_grace;
        tracing::info!(
            open = max_connections - slots.available_permits(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: finishing in-flight requests"
        );
        let _ = phase_tx.send(Phase::Draining);
        // Every slot back means every connection and tunnel has ended.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        // Held only for the check: a listener that finishes first must not keep the others'
        // slots from coming back.
        let drained = tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .map(drop);
        if drained.is_err() {
            tracing::warn!(
                open = max_connections - slots.available_permits(),
                "shutdown grace elapsed; closing the remaining connections"
            );
            let _ = phase_tx.send(Phase::Closing);
            connections.abort_all();
        }
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// Serves proxy connections from `listener` with `config` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let own = listener.local_addr().into_iter().collect();
    Proxy::new(config, Arc::new(Metrics::new()), own)?
        .serve(listener, shutdown)
        .await
}

/// How long the accept loop pauses after a failed accept (usually: out of file handles).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether an accept failure may be logged now: at most once a second for the whole process
/// (every worker's accept loop fails together when the process runs out of handles).
fn accept_warning_due() -> bool {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Milliseconds since START of the last warning, plus one (0: none yet).
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    (last == 0 || now.saturating_sub(last) >= 1000)
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

/// Settings a reload cannot apply to a running server.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut note = |changed: bool, key: &str| {
        if changed {
            notes.push(format!(
                "{key} changed: it takes effect at the next restart"
            ));
        }
    };
    note(old.proxy.listen != new.proxy.listen, "proxy.listen");
    note(
        old.proxy.max_connections != new.proxy.max_connections,
        "proxy.max_connections",
    );
    note(
        old.proxy.max_buffered_bytes != new.proxy.max_buffered_bytes,
        "proxy.max_buffered_bytes",
    );
    note(old.admin.listen != new.admin.listen, "admin.listen");
    note(old.log != new.log, "log");
    // Listeners added or removed; each running one takes the rest of its new settings itself
    // (`Inbound::reload`).
    let inbound = |c: &Config| c.inbound.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    note(
        inbound(old) != inbound(new),
        "the set of [inbound.NAME] listeners",
    );
    if !new.inbound.is_empty() {
        // What running listeners took at start-up besides their own table.
        let store = |c: &Config| match &c.store {
            crate::config::StoreSettings::File => String::new(),
            crate::config::StoreSettings::Redis(r) => {
                format!("{}\n{}", r.url.expose(), r.key_prefix)
            }
        };
        note(
            store(old) != store(new) || old.sandbox.enabled != new.sandbox.enabled,
            "store or sandbox.enabled, for inbound de-duplication,",
        );
        note(
            old.upstream.extra_roots != new.upstream.extra_roots,
            "upstream.ca_file, for an inbound forward_to over https,",
        );
    }
    notes
}

/// What one client connection's handlers share: its slot, its traffic clock and the server's
/// phase. A CONNECT tunnel takes a clone, so the slot stays held while the tunnel lives.
#[derive(Clone)]
pub struct ConnContext {
    pub slot: Arc<ConnectionSlot>,
    pub activity: Activity,
    pub phase: watch::Receiver<Phase>,
}

impl ConnContext {
    /// Drives a served connection to its end. Once this connection should stop taking requests
    /// (shutdown began, or no traffic for `idle_timeout`), `graceful` asks it to finish what is in
    /// flight; when the shutdown grace ends it is dropped. Returns the connection's own outcome
    /// when it ended by itself.
    pub async fn drive<C: Future>(
        &mut self,
        connection: C,
        idle_timeout: Duration,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> Option<C::Output> {
        tokio::pin!(connection);
        let activity = self.activity.clone();
        tokio::select! {
            outcome = connection.as_mut() => return Some(outcome),
            () = reached(&mut self.phase, Phase::Draining) => {}
            () = activity.idle_for(idle_timeout) => {}
        }
        graceful(connection.as_mut());
        tokio::select! {
            _ = connection.as_mut() => {}
            () = reached(&mut self.phase, Phase::Closing) => {}
        }
        None
    }
}

/// An HTTP/1.1 server builder with the configured header read timeout.
pub fn http1_builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.proxy.header_read_timeout)
        .max_buf_size(head_buffer_size(config));
    builder
}

/// hyper's read buffer bounds the head it will parse: room for a head at the limit (which
/// then gets the JSON 431 from admission), while anything far past it is cut off by hyper.
pub fn head_buffer_size(config: &Config) -> usize {
    config.proxy.max_header_bytes.saturating_mul(2).max(8192)
}

async fn serve_connection(proxy: Proxy, stream: TcpStream, mut conn: ConnContext) {
    let state = proxy.state();
    let io = TokioIo::new(Watched::new(stream, conn.activity.clone()));
    let handler_conn = conn.clone();
    let service = service_fn(move |req| handle(proxy.clone(), handler_conn.clone(), req));
    let connection = http1_builder(&state.config)
        .serve_connection(io, service)
        .with_upgrades();
    let idle_timeout = state.config.proxy.idle_timeout;
    drop(state);
    let outcome = conn
        .drive(connection, idle_timeout, |c| c.graceful_shutdown())
        .await;
    if let Some(Err(e)) = outcome {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Over `[proxy] max_connections`: every request on the connection gets the 503, then it closes.
async fn refuse_connection(
    state: Arc<State>,
    stream: TcpStream,
    limit: usize,
    _refusal: OwnedSemaphorePermit,
) {
    let service = service_fn(move |_req: Request<Incoming>| async move {
        Ok::<_, Infallible>(ProxyError::TooManyConnections { limit }.to_response())
    });
    let _ = http1_builder(&state.config)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Entry point for every request on the proxy port.
async fn handle(
    proxy: Proxy,
    conn: ConnContext,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let state = proxy.state();
    let mut log = RequestLog::new(req.method().clone(), String::new(), req.uri().clone());
    let is_connect = req.method() == Method::CONNECT;
    let admitted = admission::check_head(&req, state.config.proxy.max_header_bytes)
        .and_then(|()| admission::authenticate(state.config.proxy.auth.as_ref(), req.headers()));
    let result = match admitted {
        Err(e) => Err(e),
        Ok(client) if is_connect => {
            connect::handle(proxy, &state, conn, client, req, &mut log).await
        }
        Ok(client) => forward::handle_absolute(&state, client, req, &mut log).await,
    };
    let mut response = finish(result, log, &state.metrics);
    // A client whose CONNECT was refused may already be sending into the tunnel it expected:
    // those bytes must never be read as the next request.
    if is_connect && response.status() != StatusCode::OK {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}
