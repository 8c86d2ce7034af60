//! Forwarding one HTTP request: route it, and either buffer + sign + send over TLS, or pass it
//! through unchanged; the upstream response streams back.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::Client;
use super::{ProxyBody, ProxyError, RequestLog, State, BUFFER_PERMIT_BYTES};

use crate::clock::Timestamp;
use crate::config::{Profile, ProxyClient};
use crate::marketplace::{SignInput, TokenNeed};
use crate::request::{prepare_head, strip_hop_by_hop};
use crate::route::{
    named_port, normalize_host, route, signed_port, Destination, Route, PROFILE_HEADER,
};
use crate::secret::Secret;
use crate::signing::{https_authority, RequestHead};
use crate::token::TokenError;
use crate::upstream::{BoxError, UpstreamBody, UpstreamError};

/// Responses up to this size are checked for a "token expired" answer before they are relayed.
const ANSWER_INSPECT_LIMIT: u64 = 64 * 1024;
/// The buffer-budget permits an inspection may take: the limit plus one frame past it.
const INSPECT_PERMITS: u32 = (2 * ANSWER_INSPECT_LIMIT / BUFFER_PERMIT_BYTES) as u32;

/// Where a request is going, as the client named it (host normalised by [`normalize_host`]).
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: Option<u16>,
    /// The client asked for https (absolute-form `https://` or TLS inside CONNECT).
    pub https: bool,
}

/// An absolute-form request (`GET http://host/path HTTP/1.1`), as clients send through HTTP_PROXY.
pub async fn handle_absolute(
    state: &State,
    client: Client,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = absolute_target(req.uri())?;
    forward(state, client.as_deref(), req, target, log).await
}

/// Where an absolute-form request target points: its scheme, normalised host and explicit port.
/// Pure, so the fuzz targets can reach it.
pub fn absolute_target(uri: &Uri) -> Result<Target, ProxyError> {
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(ProxyError::BadRequest(format!(
                "unsupported scheme `{other}`: signproxy forwards http:// and https:// URLs"
            )))
        }
        None => {
            return Err(ProxyError::BadRequest(
                "signproxy is a forward proxy and got an origin-form request (`GET /path`): \
                 set HTTP_PROXY/HTTPS_PROXY to signproxy and request the marketplace's full URL"
                    .to_owned(),
            ))
        }
    };
    Ok(Target {
        host: normalize_host(uri.host().unwrap_or_default()),
        port: uri.port_u16(),
        https,
    })
}

/// Routes and forwards a request whose destination is `target`, for `client` (the
/// authenticated proxy client, when `[proxy.auth]` is on).
pub async fn forward(
    state: &State,
    client: Option<&ProxyClient>,
    req: Request<Incoming>,
    target: Target,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    log.host.clone_from(&target.host);
    let requested = req
        .headers()
        .get(PROFILE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let dest = Destination {
        host: &target.host,
        port: named_port(target.https, target.port),
        tunnel: false,
        https: target.https,
    };
    match route(&state.config, dest, requested.as_deref(), client)? {
        Route::Sign(profile) => {
            log.routed = true;
            log.profile = Some(Arc::clone(profile.label()));
            forward_signed(state, req, &target, &profile, log).await
        }
        Route::Passthrough => {
            log.routed = true;
            forward_unchanged(state, req, &target, log).await
        }
    }
}

/// The methods marketplace APIs use. HEAD and OPTIONS are signed too, but never carry the
/// access token: nothing a marketplace answers to them needs it.
fn check_method(method: &Method, profile: &Profile) -> Result<bool, ProxyError> {
    match *method {
        Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE => Ok(true),
        Method::HEAD | Method::OPTIONS => Ok(false),
        _ => Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            profile: profile.qualified_name(),
        }),
    }
}

async fn forward_signed(
    state: &State,
    req: Request<Incoming>,
    target: &Target,
    profile: &Profile,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let may_carry_token = check_method(req.method(), profile)?;
    let port = signed_port(target.https, target.port);
    let (parts, body) = req.into_parts();
    // Held until the request is done with the body (the retry after a token refresh included).
    let (body, _reservation) = read_body(state, &parts.headers, body).await?;
    log.bytes_in.store(body.len() as u64, Ordering::Relaxed);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let head = prepare_head(
        parts.method,
        https_authority(&target.host, port),
        path_and_query,
        parts.headers,
        body.len(),
    )?;
    let need = if may_carry_token {
        profile.signer.token_need(&head)
    } else {
        TokenNeed::None
    };
    let token = match &need {
        TokenNeed::None => None,
        TokenNeed::AccessToken => state
            .tokens
            .token(profile, state.clock.now())
            .await
            .map_err(|e| token_unavailable(state, e))?,
        // A failed mint stops the request here: the access token would only be refused.
        TokenNeed::Restricted(resource) => Some(
            state
                .tokens
                .restricted_token(profile, &head.authority, resource, state.clock.now())
                .await
                .map_err(|e| token_unavailable(state, e))?,
        ),
    };
    let now = state.clock.now();
    let response = sign_and_send(state, profile, &head, &body, token.as_ref(), now, log).await?;

    // Only a token this proxy injected and manages can be renewed; the client's own is theirs.
    let managed = token.as_ref().filter(|_| profile.token.is_managed());
    // Successful answers stream on untouched; small error answers are read to recognise an
    // expired token or a rejected signature.
    if managed.is_none() && !response.status().is_client_error() {
        return Ok(response);
    }
    let (response, answer) = read_small_answer(&state.buffer_budget, response).await?;
    let Some(answer) = answer else {
        return Ok(response);
    };
    let status = response.status();
    if let Some(code) = profile.signer.rejection(status, &answer) {
        let input = SignInput {
            head: &head,
            body: &body,
            access_token: token.as_ref(),
            now,
        };
        report_rejection(state, profile, input, &code, log);
    }
    let Some(used) = managed else {
        return Ok(response);
    };
    if !profile.token.is_expired_answer(status, &answer) {
        return Ok(response);
    }
    tracing::info!(
        profile = %profile.qualified_name(),
        "the marketplace reports the access token expired: refreshing, then retrying once"
    );
    let fresh = match &need {
        TokenNeed::Restricted(resource) => {
            state
                .tokens
                .restricted_after_rejection(
                    profile,
                    &head.authority,
                    resource,
                    used,
                    state.clock.now(),
                )
                .await
        }
        TokenNeed::None | TokenNeed::AccessToken => {
            state
                .tokens
                .refresh_after_rejection(profile, used, state.clock.now())
                .await
        }
    }
    .map_err(|e| token_unavailable(state, e))?;
    let now = state.clock.now();
    sign_and_send(state, profile, &head, &body, Some(&fresh), now, log).await
}

/// The marketplace said the signature is wrong: one warning with what was signed (secrets
/// masked) that a user can paste into a bug report, and a count.
fn report_rejection(
    state: &State,
    profile: &Profile,
    input: SignInput<'_>,
    code: &str,
    log: &RequestLog,
) {
    let name = profile.qualified_name();
    state.metrics.signature_rejection(&name, code);
    let explanation = profile
        .signer
        .explain(input)
        .unwrap_or_else(|e| format!("(cannot explain: {e})"));
    tracing::warn!(
        request_id = %log.id,
        profile = %name,
        code,
        explanation = %explanation,
        "the marketplace rejected the signature; what was signed (secrets masked) follows"
    );
}

fn token_unavailable(state: &State, e: TokenError) -> ProxyError {
    let e = ProxyError::TokenUnavailable(e);
    state.metrics.signing_failure(e.code());
    e
}

/// Signs as of now (so a retry gets a fresh timestamp and signature) and sends.
async fn sign_and_send(
    state: &State,
    profile: &Profile,
    head: &RequestHead,
    body: &Bytes,
    token: Option<&Secret>,
    now: Timestamp,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let input = SignInput {
        head,
        body,
        access_token: token,
        now,
    };
    let head = profile.signer.sign(input).map_err(|e| {
        let e = ProxyError::from(e);
        state.metrics.signing_failure(e.code());
        e
    })?;
    let uri = upstream_uri(true, &head.authority, head.path_and_query)?;
    let mut upstream_req = Request::new(
        Full::new(body.clone())
            .map_err(|never| -> BoxError { match never {} })
            .boxed(),
    );
    *upstream_req.method_mut() = head.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = head.headers;
    send(
        state,
        Egress::Marketplace,
        upstream_req,
        &head.authority,
        log,
    )
    .await
}

/// Marketplaces' "token expired" and "signature invalid" answers are small JSON bodies. Up to
/// [`ANSWER_INSPECT_LIMIT`] bytes of the answer are read (whatever its framing: a chunked
/// answer has no declared size) and returned decoded; a longer answer streams on with what was
/// read put back in front, untouched. The client always gets the bytes as the marketplace sent
/// them.
async fn read_small_answer(
    budget: &Arc<Semaphore>,
    response: Response<ProxyBody>,
) -> Result<(Response<ProxyBody>, Option<Vec<u8>>), ProxyError> {
    let declared_large = response.body().size_hint().lower() > ANSWER_INSPECT_LIMIT;
    let encoding = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if declared_large || !INSPECTABLE_ENCODINGS.contains(&encoding.as_str()) {
        return Ok((response, None));
    }
    // What is read here is held until the client has it: it counts against max_buffered_bytes.
    // When the budget is spent the answer streams on uninspected rather than waiting.
    let Ok(reservation) = Arc::clone(budget).try_acquire_many_owned(INSPECT_PERMITS) else {
        tracing::debug!("buffer budget spent: relaying the answer without inspecting it");
        return Ok((response, None));
    };
    let (parts, mut body) = response.into_parts();
    let mut read = VecDeque::new();
    let mut data = BytesMut::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::UpstreamConnect {
            authority: String::from("upstream"),
            reason: format!("the response body broke off: {e}"),
        })?;
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        }
        read.push_back(frame);
        if data.len() as u64 > ANSWER_INSPECT_LIMIT {
            complete = false;
            break;
        }
    }
    let answer = complete
        .then(|| decoded(&encoding, &data).map(Cow::into_owned))
        .flatten();
    let replay = Replay {
        read,
        rest: body,
        _reservation: reservation,
    };
    Ok((Response::from_parts(parts, replay.boxed()), answer))
}

/// Content encodings whose answers can be read for the check (clients such as Python requests
/// ask for gzip by default; the client still gets the bytes as the marketplace sent them).
const INSPECTABLE_ENCODINGS: [&str; 5] = ["", "identity", "gzip", "x-gzip", "deflate"];

/// `data` decoded per `encoding` (at most the inspection limit), or None if it does not decode.
fn decoded<'a>(encoding: &str, data: &'a [u8]) -> Option<Cow<'a, [u8]>> {
    let mut out = Vec::new();
    let limit = ANSWER_INSPECT_LIMIT;
    let read = match encoding {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        _ => return Some(Cow::Borrowed(data)),
    };
    read.ok().map(|_| Cow::Owned(out))
}

/// A body whose first frames were already read: those first, then the rest.
struct Replay {
    read: VecDeque<Frame<Bytes>>,
    rest: ProxyBody,
    /// The buffer budget the read frames take, returned when the body is done.
    _reservation: OwnedSemaphorePermit,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.read.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

async fn forward_unchanged(
    state: &State,
    req: Request<Incoming>,
    target: &Target,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(PROFILE_HEADER);
    let authority = match target.port {
        Some(port) => format!("{}:{port}", target.host),
        None => target.host.clone(),
    };
    // RFC 9112 §3.2.2: the absolute URI's authority wins over the client's Host, so a client
    // cannot reach another virtual host behind an allowed name.
    let host = HeaderValue::from_str(&authority)
        .map_err(|_| ProxyError::BadRequest(format!("`{authority}` is not a valid host")))?;
    parts.headers.insert(header::HOST, host);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let bytes_in = Arc::clone(&log.bytes_in);
    let counted = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    let mut upstream_req: Request<UpstreamBody> =
        Request::new(counted.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = upstream_uri(target.https, &authority, path_and_query.to_owned())?;
    *upstream_req.headers_mut() = parts.headers;
    send(state, Egress::Guarded, upstream_req, &authority, log).await
}

/// The upstream URL from its parts; the path is taken as it is, without a copy.
fn upstream_uri(https: bool, authority: &str, path_and_query: String) -> Result<Uri, ProxyError> {
    let bad = |e: &dyn std::fmt::Display| {
        ProxyError::BadRequest(format!("cannot form the upstream URL: {e}"))
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if https { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(Authority::try_from(authority).map_err(|e| bad(&e))?);
    parts.path_and_query =
        Some(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).map_err(|e| bad(&e))?);
    Uri::from_parts(parts).map_err(|e| bad(&e))
}

/// Buffers the whole body (hyper has already removed any chunked framing), refusing more than
/// `[proxy] max_body_bytes` (early from Content-Length when declared, else as soon as the limit
/// is crossed), a body slower than `body_read_timeout_ms`, and more than the process may buffer
/// at once (`max_buffered_bytes`). Nothing has gone upstream when any of these refuses.
async fn read_body(
    state: &State,
    headers: &HeaderMap,
    mut body: Incoming,
) -> Result<(Bytes, BufferReservation), ProxyError> {
    let settings = &state.config.proxy;
    let limit = settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(actual) = declared.filter(|&len| len > limit) {
        return Err(ProxyError::BodyTooLarge { actual, limit });
    }
    let mut reservation = BufferReservation {
        budget: Arc::clone(&state.buffer_budget),
        permit: None,
        limit: settings.max_buffered_bytes,
    };
    let declared = declared.unwrap_or(0);
    reservation.cover(declared)?;
    let deadline = tokio::time::Instant::now() + settings.body_read_timeout;
    // Within max_body_bytes and already reserved, so the up-front allocation is bounded.
    let mut buffer = BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BodyTimeout {
                    timeout_ms: settings.body_read_timeout.as_millis(),
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProxyError::BadRequest(format!(
                    "could not read the request body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            let total = buffer.len() as u64 + data.len() as u64;
            if total > limit {
                return Err(ProxyError::BodyOverLimit { limit });
            }
            reservation.cover(total)?;
            buffer.extend_from_slice(&data);
        }
    }
    Ok((buffer.freeze(), reservation))
}

/// This request's share of `[proxy] max_buffered_bytes`, returned when dropped.
struct BufferReservation {
    budget: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    limit: u64,
}

impl BufferReservation {
    /// Grows the reservation to cover `bytes`, or refuses with 503 `busy` without waiting: a
    /// waiting request would hold its connection and partial body while others do the same.
    fn cover(&mut self, bytes: u64) -> Result<(), ProxyError> {
        let busy = || ProxyError::Busy { limit: self.limit };
        let wanted = bytes.div_ceil(BUFFER_PERMIT_BYTES);
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
        if wanted <= held {
            return Ok(());
        }
        let more = u32::try_from(wanted - held).map_err(|_| busy())?;
        let extra = Arc::clone(&self.budget)
            .try_acquire_many_owned(more)
            .map_err(|_| busy())?;
        match &mut self.permit {
            Some(permit) => permit.merge(extra),
            None => self.permit = Some(extra),
        }
        Ok(())
    }
}

/// Past this, a marketplace that checks timestamps (TikTok: 5 minutes) is close to refusing.
const CLOCK_SKEW_WARN_SECS: i64 = 10;

/// Compares the marketplace's `Date` with our clock: a gauge always, a warning once. `Date`
/// changes once a second while answers come thousands of times a second: each thread parses a
/// given value once.
fn note_clock_skew(state: &State, host: &str, date: &HeaderValue) {
    std::thread_local! {
        static LAST: std::cell::RefCell<Option<(HeaderValue, Option<u64>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let parse = |date: &HeaderValue| {
        date.to_str()
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let theirs = LAST.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some((seen, secs)) if seen == date => *secs,
            _ => {
                let secs = parse(date);
                *last = Some((date.clone(), secs));
                secs
            }
        }
    });
    let Some(theirs) = theirs else {
        return;
    };
    let ours = i64::try_from(state.clock.now().secs()).unwrap_or(i64::MAX);
    let skew = i64::try_from(theirs)
        .unwrap_or(i64::MAX)
        .saturating_sub(ours);
    if state.metrics.clock_skew(skew, CLOCK_SKEW_WARN_SECS) {
        tracing::warn!(
            host,
            skew_s = skew,
            "this machine's clock differs from the marketplace's by more than {CLOCK_SKEW_WARN_SECS} s: signatures with timestamps may be refused; sync the clock (NTP)"
        );
    }
}

/// Which dialler a request takes: marketplace hosts go where the config says (`connect_to` or
/// DNS); everything else passes the egress guard first.
#[derive(Clone, Copy)]
enum Egress {
    Marketplace,
    Guarded,
}

async fn send(
    state: &State,
    egress: Egress,
    req: Request<UpstreamBody>,
    authority: &str,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut req = req;
    let authority = || authority.to_owned();
    *req.version_mut() = Version::HTTP_11;
    let sent = Instant::now();
    let response = match egress {
        Egress::Marketplace => state.upstream.send(req).await,
        Egress::Guarded => state.upstream.send_guarded(req).await,
    };
    // Only an answer is a latency sample: a failed dial or a timeout says nothing about the
    // upstream's speed.
    if response.is_ok() {
        let latency = sent.elapsed();
        log.upstream_latency = Some(latency);
        state
            .metrics
            .upstream_latency(log.profile.as_deref().unwrap_or("-"), latency.as_secs_f64());
    }
    let response = response.map_err(|e| match e {
        UpstreamError::Timeout(after) => ProxyError::UpstreamTimeout {
            authority: authority(),
            timeout_ms: after.as_millis(),
        },
        UpstreamError::Connect { reason } => ProxyError::UpstreamConnect {
            authority: authority(),
            reason,
        },
        UpstreamError::TlsSetup(reason) => ProxyError::UpstreamConnect {
            authority: authority(),
            reason,
        },
        UpstreamError::Denied(denied) => ProxyError::DestinationNotAllowed(denied),
    })?;
    if let (Egress::Marketplace, Some(date)) = (egress, response.headers().get(header::DATE)) {
        note_clock_skew(state, &log.host, date);
    }
    log.upstream_status = Some(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}
