//! Inbound webhooks: `[inbound.NAME]` listeners that verify what a marketplace sends by its rule
//! (through the profile's [`crate::marketplace::webhook::WebhookRoute`]) before the app sees it.
//!
//! Per request: route by path; a self-answered request (eBay's challenge) is answered here; the
//! raw body is read (bounded), verified (a key fetched by id first when the marketplace names
//! one), de-duplicated on the event id (the [`guard::ReplayGuard`]: in memory, or shared through
//! Redis), then forwarded byte for byte to `forward_to` with
//! `x-signproxy-verified` and `x-signproxy-event-id` and without the signature headers. The app's
//! answer is relayed; past the route's deadline the answer is 504 and the event is not recorded,
//! so the marketplace's retry delivers it again. One log line per request, no secrets.

pub mod dedupe;
pub mod guard;
pub mod keys;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{InboundRoute, InboundSettings};
use crate::marketplace::webhook::Refusal;
use crate::metrics::Metrics;
use guard::{Begun, ReplayGuard, IN_FLIGHT_MARGIN, REPLAY_CHECK_TIMEOUT};
pub use keys::{KeyCache, KeyFetch};

/// The header naming the profile that verified an event.
pub const VERIFIED_HEADER: &str = "x-signproxy-verified";
/// The header carrying the verified event id.
pub const EVENT_ID_HEADER: &str = "x-signproxy-event-id";
/// How long a sender may take to send the body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest app answer relayed.
const MAX_APP_ANSWER_BYTES: usize = 1024 * 1024;
/// Connections served at once by one listener.
const MAX_CONNECTIONS: usize = 1024;

type AppClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("inbound.{listener}: cannot set up TLS for forward_to: {reason}")]
    Tls { listener: String, reason: String },
}

/// One listener's shared state.
pub struct Inbound {
    /// Replaced by [`Inbound::reload`]; each request reads it once.
    settings: std::sync::RwLock<Arc<InboundSettings>>,
    metrics: Arc<Metrics>,
    replay: ReplayGuard,
    client: AppClient,
    keys: Option<Arc<KeyCache>>,
}

impl Inbound {
    /// `extra_roots`: CA certificates trusted for an https `forward_to` besides the web roots.
    /// `keys`: where keys named by id come from (eBay); `None` refuses such requests with 500.
    pub fn new(
        settings: Arc<InboundSettings>,
        metrics: Arc<Metrics>,
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
        keys: Option<Arc<KeyCache>>,
    ) -> Result<Inbound, InboundError> {
        let tls =
            crate::upstream::client_tls_config(extra_roots).map_err(|e| InboundError::Tls {
                listener: settings.name.clone(),
                reason: e.to_string(),
            })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Inbound {
            replay: ReplayGuard::memory(settings.dedupe_capacity),
            settings: std::sync::RwLock::new(settings),
            metrics,
            client,
            keys,
        })
    }

    /// De-duplicates through `store`, shared with every replica on it, instead of in memory.
    pub fn with_shared_dedupe(
        mut self,
        store: Arc<crate::token::redis_store::RedisStore>,
    ) -> Inbound {
        let settings = self.settings();
        self.replay =
            ReplayGuard::shared(store, settings.dedupe_capacity, settings.dedupe_retention);
        self
    }

    /// The settings requests are served by now.
    pub fn settings(&self) -> Arc<InboundSettings> {
        match self.settings.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Serves later requests by `new` (routes, secrets, `forward_to`, limits, deadlines), and
    /// says what only a restart applies.
    pub fn reload(&self, new: Arc<InboundSettings>) -> Vec<String> {
        let old = self.settings();
        let mut notes = Vec::new();
        let name = &old.name;
        if old.listen != new.listen {
            notes.push(format!(
                "inbound.{name}.listen changed: it takes effect at the next restart"
            ));
        }
        if (old.dedupe_capacity, old.dedupe_retention)
            != (new.dedupe_capacity, new.dedupe_retention)
        {
            notes.push(format!(
                "inbound.{name}.dedupe_capacity or dedupe_retention_secs changed: it takes effect \
                 at the next restart"
            ));
        }
        match self.settings.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        notes
    }

    /// Where event ids are de-duplicated: `memory` or `redis`.
    pub fn dedupe_backend(&self) -> &'static str {
        self.replay.describe()
    }
}

/// Serves `settings` on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Arc<InboundSettings>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), InboundError> {
    let inbound = Inbound::new(settings, metrics, &[], None)?;
    serve(listener, Arc::new(inbound), shutdown).await;
    Ok(())
}

/// Serves an [`Inbound`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue;
                    };
                    let inbound = Arc::clone(&inbound);
                    connections.spawn(async move {
                        let _slot = slot;
                        let service = service_fn(move |req| {
                            let inbound = Arc::clone(&inbound);
                            async move { Ok::<_, Infallible>(handle(&inbound, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    connections.abort_all();
}

/// What became of one request: the answer, and how logs and metrics name it.
struct Outcome {
    response: Response<Full<Bytes>>,
    outcome: &'static str,
    event_id: Option<String>,
}

fn answer(status: StatusCode, outcome: &'static str) -> Outcome {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Outcome {
        response,
        outcome,
        event_id: None,
    }
}

async fn handle(inbound: &Inbound, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let settings = inbound.settings();
    let route = settings.routes.iter().find(|r| r.path == path);
    let result = match route {
        Some(route) => handle_route(inbound, &settings, route, req).await,
        None => answer(StatusCode::NOT_FOUND, "no_route"),
    };
    let profile = route.map_or("-", |r| r.profile.label());
    let status = result.response.status().as_u16();
    inbound
        .metrics
        .inbound(&settings.name, profile, result.outcome);
    tracing::info!(
        target: "signproxy::inbound",
        listener = %settings.name,
        method = %method,
        path = %path,
        profile = profile,
        outcome = result.outcome,
        status = status,
        event_id = result.event_id.as_deref().unwrap_or("-"),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "inbound webhook"
    );
    result.response
}

async fn handle_route(
    inbound: &Inbound,
    settings: &InboundSettings,
    route: &InboundRoute,
    req: Request<Incoming>,
) -> Outcome {
    let verifier = &route.verifier;
    if let Some(own) = verifier.self_answer(req.method(), req.uri().query()) {
        let mut response = Response::new(Full::new(Bytes::from(own.body)));
        *response.status_mut() = own.status;
        if let Some(ct) = own.content_type {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        return Outcome {
            response,
            outcome: "challenge",
            event_id: None,
        };
    }
    if req.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
    let body =
        match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return answer(StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            Ok(Err(_)) | Err(_) => return answer(StatusCode::BAD_REQUEST, "body_unreadable"),
        };
    let refuse = |refusal: Refusal| answer(verifier.refusal_status(refusal), refusal.as_str());
    let key = match verifier.key_id(&parts.headers) {
        Err(refusal) => return refuse(refusal),
        Ok(None) => None,
        Ok(Some(kid)) => {
            let Some(keys) = &inbound.keys else {
                return answer(StatusCode::INTERNAL_SERVER_ERROR, "key_unavailable");
            };
            match keys.get(route, &kid).await {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(target: "signproxy::inbound", listener = %settings.name, profile = %route.profile.label(), kid = %kid, error = %e, "cannot fetch the webhook signing key");
                    return answer(StatusCode::INTERNAL_SERVER_ERROR, "key_unavailable");
                }
            }
        }
    };
    let event_id = match verifier.verify(&parts.headers, &body, key.as_ref()) {
        Ok(id) => id,
        Err(refusal) => return refuse(refusal),
    };
    let Ok(id_value) = HeaderValue::from_str(&event_id) else {
        return refuse(Refusal::Malformed);
    };
    let with_id = |mut outcome: Outcome| {
        outcome.event_id = Some(event_id.clone());
        outcome
    };
    // The shared store's answer counts against the marketplace's deadline too (TikTok wants
    // an answer within 3 s): a slow store gets a 503 and the marketplace's retry.
    let started = std::time::Instant::now();
    let begun = match tokio::time::timeout(
        REPLAY_CHECK_TIMEOUT,
        inbound.replay.begin(
            route.profile.label(),
            &event_id,
            route.deadline + IN_FLIGHT_MARGIN,
        ),
    )
    .await
    {
        Ok(begun) => begun.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {REPLAY_CHECK_TIMEOUT:?}")),
    };
    // Settles the id however this future ends: dropped mid-forward (the sender went away), the
    // id is released so the marketplace's retry is delivered.
    let mut claim = match begun {
        Ok(Begun::New(claim)) => claim,
        Ok(Begun::Duplicate) => return with_id(answer(verifier.duplicate_status(), "duplicate")),
        // Not acknowledged: the marketplace retries, and by then the first copy is settled.
        Ok(Begun::InFlight) => {
            return with_id(answer(StatusCode::SERVICE_UNAVAILABLE, "in_flight"))
        }
        // Unknown whether the app has it: never forwarded, never acknowledged; the
        // marketplace retries until the store answers again.
        Err(e) => {
            tracing::warn!(target: "signproxy::inbound", listener = %settings.name, profile = %route.profile.label(), event_id = %event_id, error = %e, "cannot check the event id in the shared store; answering 503 so the marketplace retries");
            return with_id(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "dedupe_unavailable",
            ));
        }
    };
    let forwarded = forward_request(
        &settings.forward_to,
        &parts.uri,
        &parts.headers,
        verifier.signature_headers(),
        route.profile.label(),
        id_value,
        body,
    );
    let Some(forwarded) = forwarded else {
        claim.settle(false, Duration::ZERO).await;
        return with_id(answer(StatusCode::INTERNAL_SERVER_ERROR, "bad_forward_url"));
    };
    let exchange = async {
        let response = inbound.client.request(forwarded).await.map_err(|_| ())?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, MAX_APP_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| ())?
            .to_bytes();
        Ok::<_, ()>((head, body))
    };
    match tokio::time::timeout(route.deadline.saturating_sub(started.elapsed()), exchange).await {
        Err(_) => {
            claim.settle(false, Duration::ZERO).await;
            with_id(answer(StatusCode::GATEWAY_TIMEOUT, "timeout"))
        }
        Ok(Err(())) => {
            claim.settle(false, Duration::ZERO).await;
            with_id(answer(StatusCode::BAD_GATEWAY, "app_unreachable"))
        }
        Ok(Ok((head, body))) => {
            let accepted = head.status.is_success();
            claim
                .settle(accepted, route.deadline.saturating_sub(started.elapsed()))
                .await;
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = head.status;
            for (name, value) in &head.headers {
                if !is_hop_by_hop(name) && name != http::header::CONTENT_LENGTH {
                    response.headers_mut().append(name.clone(), value.clone());
                }
            }
            with_id(Outcome {
                response,
                outcome: if accepted { "forwarded" } else { "app_refused" },
                event_id: None,
            })
        }
    }
}

/// The request to the app: `forward_to`'s path joined with the request's path and query, the
/// original headers less hop-by-hop ones, the marketplace's signature headers and any
/// `x-signproxy-*` a sender put there, plus the verified profile and event id.
fn forward_request(
    forward_to: &Uri,
    original: &Uri,
    headers: &HeaderMap,
    signature_headers: &[&str],
    profile: &str,
    event_id: HeaderValue,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let base = forward_to.path().trim_end_matches('/');
    let rest = original.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = Uri::builder()
        .scheme(forward_to.scheme_str()?)
        .authority(forward_to.authority()?.as_str())
        .path_and_query(format!("{base}{rest}"))
        .build()
        .ok()?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let out = request.headers_mut();
    for (name, value) in headers {
        let lower = name.as_str();
        if is_hop_by_hop(name)
            || name == http::header::HOST
            || name == http::header::CONTENT_LENGTH
            || lower.starts_with("x-signproxy-")
            || signature_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(lower))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(
        HeaderName::from_static(VERIFIED_HEADER),
        HeaderValue::from_str(profile).ok()?,
    );
    out.insert(HeaderName::from_static(EVENT_ID_HEADER), event_id);
    Some(request)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_head_drops_signatures_and_spoofed_verdicts() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("sig"));
        headers.insert("x-signproxy-verified", HeaderValue::from_static("forged"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("connection", HeaderValue::from_static("close"));
        let req = forward_request(
            &"http://127.0.0.1:3000/app/".parse().unwrap(),
            &"/webhooks/tiktok?x=1".parse().unwrap(),
            &headers,
            &["authorization"],
            "tiktok.default",
            HeaderValue::from_static("42"),
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://127.0.0.1:3000/app/webhooks/tiktok?x=1"
        );
        let h = req.headers();
        assert!(h.get("authorization").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["x-signproxy-verified"], "tiktok.default");
        assert_eq!(h["x-signproxy-event-id"], "42");
        assert_eq!(h["content-type"], "application/json");
    }
}
