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
use http::{header, HeaderMap, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{ProxyBody, ProxyError, RequestLog, State};

use crate::config::Profile;
use crate::request::{prepare_head, strip_hop_by_hop, unix_now};
use crate::route::{route, Route, PROFILE_HEADER};
use crate::secret::Secret;
use crate::sign::{https_authority, RequestHead};
use crate::token::{TokenError, TokenSource};
use crate::upstream::{BoxError, UpstreamBody, UpstreamError};

/// Responses up to this size are checked for a "token expired" answer before they are relayed.
const TOKEN_ANSWER_INSPECT_LIMIT: u64 = 64 * 1024;

/// Where a request is going, as the client named it.
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
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = absolute_target(req.uri())?;
    forward(state, req, target, log).await
}

/// Where an absolute-form request target points: its scheme, lower-cased host and explicit port.
/// Kept apart from I/O so the fuzz targets can reach it.
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
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    Ok(Target {
        host,
        port: uri.port_u16(),
        https,
    })
}

/// Routes and forwards a request whose destination is `target`.
pub async fn forward(
    state: &State,
    req: Request<Incoming>,
    target: Target,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    log.host.clone_from(&target.host);
    let requested = req
        .headers()
        .get(PROFILE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match route(&state.config, &target.host, requested.as_deref())? {
        Route::Sign(profile) => {
            log.routed = true;
            log.profile = Some(profile.qualified_name());
            forward_signed(state, req, &target, &profile, log).await
        }
        Route::Passthrough => {
            log.routed = true;
            forward_unchanged(state, req, &target, log).await
        }
    }
}

async fn forward_signed(
    state: &State,
    req: Request<Incoming>,
    target: &Target,
    profile: &Profile,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Marketplace APIs are https-only: a plain-http request through HTTP_PROXY is upgraded.
    let port = match (target.https, target.port) {
        (false, None | Some(80)) | (true, None) => 443,
        (_, Some(port)) => port,
    };
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, state.config.proxy.max_body_bytes).await?;
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
    let token = if profile.signer.wants_access_token(&head) {
        state
            .tokens
            .token(profile, unix_now())
            .await
            .map_err(|e| token_unavailable(state, e))?
    } else {
        None
    };
    let response = sign_and_send(state, profile, head.clone(), &body, token.as_ref(), log).await?;

    // Only a token this proxy injected and manages can be renewed; the client's own is theirs.
    let Some(used) = token.filter(|_| profile.token.is_managed()) else {
        return Ok(response);
    };
    let (response, expired) = answer_says_token_expired(&profile.token, response).await?;
    if !expired {
        return Ok(response);
    }
    tracing::info!(
        profile = %profile.qualified_name(),
        "the marketplace reports the access token expired: refreshing, then retrying once"
    );
    let fresh = state
        .tokens
        .refresh_after_rejection(profile, &used, unix_now())
        .await
        .map_err(|e| token_unavailable(state, e))?;
    sign_and_send(state, profile, head, &body, Some(&fresh), log).await
}

fn token_unavailable(state: &State, e: TokenError) -> ProxyError {
    let e = ProxyError::TokenUnavailable(e.to_string());
    state.metrics.signing_failure(e.code());
    e
}

/// Signs as of now (so a retry gets a fresh timestamp and signature) and sends.
async fn sign_and_send(
    state: &State,
    profile: &Profile,
    head: RequestHead,
    body: &Bytes,
    token: Option<&Secret>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let signed = profile
        .signer
        .sign(head, body, token, unix_now())
        .map_err(|e| {
            let e = ProxyError::from(e);
            state.metrics.signing_failure(e.code());
            e
        })?;
    let head = signed.head;
    let uri = upstream_uri("https", &head.authority, &head.path_and_query)?;
    let mut upstream_req = Request::new(
        Full::new(body.clone())
            .map_err(|never| -> BoxError { match never {} })
            .boxed(),
    );
    *upstream_req.method_mut() = head.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = head.headers;
    send(state, upstream_req, &head.authority, log).await
}

/// Marketplaces' "token expired" answers are small JSON bodies. Up to
/// [`TOKEN_ANSWER_INSPECT_LIMIT`] bytes of the answer are read (whatever its framing: a chunked
/// answer has no declared size) and checked; a longer answer streams on with what was read put
/// back in front, untouched.
async fn answer_says_token_expired(
    source: &TokenSource,
    response: Response<ProxyBody>,
) -> Result<(Response<ProxyBody>, bool), ProxyError> {
    let declared_large = response.body().size_hint().lower() > TOKEN_ANSWER_INSPECT_LIMIT;
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
        return Ok((response, false));
    }
    let (parts, mut body) = response.into_parts();
    let mut read = VecDeque::new();
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::UpstreamConnect {
            authority: String::from("upstream"),
            reason: format!("the response body broke off: {e}"),
        })?;
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        }
        read.push_back(frame);
        if data.len() as u64 > TOKEN_ANSWER_INSPECT_LIMIT {
            let replay = Replay { read, rest: body };
            return Ok((Response::from_parts(parts, replay.boxed()), false));
        }
    }
    let expired = decoded(&encoding, &data)
        .is_some_and(|answer| source.is_expired_answer(parts.status.as_u16(), &answer));
    let replay = Replay { read, rest: body };
    Ok((Response::from_parts(parts, replay.boxed()), expired))
}

/// Content encodings whose answers can be read for the check (clients such as Python requests
/// ask for gzip by default; the client still gets the bytes as the marketplace sent them).
const INSPECTABLE_ENCODINGS: [&str; 5] = ["", "identity", "gzip", "x-gzip", "deflate"];

/// `data` decoded per `encoding` (at most the inspection limit), or None if it does not decode.
fn decoded<'a>(encoding: &str, data: &'a [u8]) -> Option<Cow<'a, [u8]>> {
    let mut out = Vec::new();
    let limit = TOKEN_ANSWER_INSPECT_LIMIT;
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
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let scheme = if target.https { "https" } else { "http" };
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
    *upstream_req.uri_mut() = upstream_uri(scheme, &authority, path_and_query)?;
    *upstream_req.headers_mut() = parts.headers;
    send(state, upstream_req, &authority, log).await
}

fn upstream_uri(scheme: &str, authority: &str, path_and_query: &str) -> Result<Uri, ProxyError> {
    format!("{scheme}://{authority}{path_and_query}")
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("cannot form the upstream URL: {e}")))
}

/// Buffers the whole body (hyper has already removed any chunked framing), refusing more than
/// `limit` bytes: early from Content-Length when declared, else as soon as the limit is crossed.
async fn read_body(headers: &HeaderMap, body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(actual) = declared.filter(|&len| len > limit) {
        return Err(ProxyError::BodyTooLarge { actual, limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::BodyOverLimit { limit })
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

async fn send(
    state: &State,
    req: Request<UpstreamBody>,
    authority: &str,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut req = req;
    *req.version_mut() = Version::HTTP_11;
    let sent = Instant::now();
    let response = state.upstream.send(req).await;
    let latency = sent.elapsed();
    log.upstream_latency = Some(latency);
    state
        .metrics
        .upstream_latency(log.profile.as_deref().unwrap_or("-"), latency.as_secs_f64());
    let response = response.map_err(|e| match e {
        UpstreamError::Timeout(after) => ProxyError::UpstreamTimeout {
            authority: authority.to_owned(),
            timeout_ms: after.as_millis(),
        },
        UpstreamError::Connect { reason } => ProxyError::UpstreamConnect {
            authority: authority.to_owned(),
            reason,
        },
        UpstreamError::TlsSetup(reason) => ProxyError::UpstreamConnect {
            authority: authority.to_owned(),
            reason,
        },
    })?;
    log.upstream_status = Some(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}
