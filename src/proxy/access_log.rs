//! The canonical log line: one per request, written when the response body has been sent (or
//! abandoned), with the request id, route, statuses, byte counts and durations. It names the
//! path without its query: queries carry `sign`, `access_token` and friends.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::{ProxyBody, ProxyError};
use crate::egress::AddrClass;
use crate::metrics::Metrics;
use crate::route::RouteError;

/// The response header that carries the request id back to the client.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-signproxy-request-id");

/// What the canonical line says about a request; filled in as the request is understood.
#[derive(Debug)]
pub struct RequestLog {
    pub id: RequestId,
    pub method: Method,
    pub host: String,
    /// The request target; only its path is logged. A shared handle on the parsed request line.
    pub uri: http::Uri,
    pub profile: Option<Arc<str>>,
    /// The host was routed (to a profile or passthrough), so it is a bounded metrics label.
    pub routed: bool,
    pub upstream_status: Option<u16>,
    /// Time to the upstream's response head, for the last attempt.
    pub upstream_latency: Option<Duration>,
    /// Request body bytes read from the client (counted as they stream when not buffered).
    pub bytes_in: Arc<AtomicU64>,
    pub started: Instant,
}

impl RequestLog {
    pub fn new(method: Method, host: String, uri: http::Uri) -> RequestLog {
        RequestLog {
            id: next_request_id(),
            method,
            host,
            uri,
            profile: None,
            routed: false,
            upstream_status: None,
            upstream_latency: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }
}

/// Ids are unique per process and sortable by arrival: a per-process random prefix (so two
/// instances' logs do not collide) and a counter. Shown as `{prefix:08x}-{counter:06x}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    prefix: u32,
    counter: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:06x}", self.prefix, self.counter)
    }
}

impl RequestId {
    /// The id as a header value, formatted on the stack (one per response).
    fn header_value(self) -> Option<HeaderValue> {
        use std::io::Write;
        let mut buf = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        write!(cursor, "{self}").ok()?;
        let len = usize::try_from(cursor.position()).ok()?;
        HeaderValue::from_bytes(&buf[..len]).ok()
    }
}

fn next_request_id() -> RequestId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos ^ std::process::id().rotate_left(16)
    });
    RequestId {
        prefix,
        counter: COUNTER.fetch_add(1, Ordering::Relaxed),
    }
}

/// Turns a handler's outcome into the response; the log line and the request metrics follow
/// when its body is done.
pub fn finish(
    result: Result<Response<ProxyBody>, ProxyError>,
    log: RequestLog,
    metrics: &Arc<Metrics>,
) -> Response<ProxyBody> {
    let (response, error_code) = match result {
        Ok(response) => (response, None),
        Err(e) => {
            if matches!(
                e,
                ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit { .. }
            ) {
                metrics.body_limit_rejection();
            }
            metrics.refusal(e.code());
            let egress_class = match &e {
                ProxyError::DestinationNotAllowed(denied) => Some(denied.class.label()),
                ProxyError::Route(RouteError::AddressNotAllowed { class, .. }) => {
                    Some(class.map_or("public_address", AddrClass::label))
                }
                ProxyError::Route(RouteError::PassthroughPort { .. }) => Some("port"),
                _ => None,
            };
            if let Some(class) = egress_class {
                metrics.egress_denied(class);
                tracing::warn!(request_id = %log.id, host = %log.host, class, reason = %e, "destination refused by the egress guard");
            }
            (e.to_response(), Some(e.code()))
        }
    };
    let (mut parts, body) = response.into_parts();
    if let Some(id) = log.id.header_value() {
        parts.headers.insert(REQUEST_ID_HEADER, id);
    }
    let body = LoggedBody {
        inner: body,
        bytes_out: 0,
        pending: Some(Pending {
            log,
            status: parts.status.as_u16(),
            error_code,
            metrics: Arc::clone(metrics),
        }),
    };
    Response::from_parts(parts, body.boxed())
}

struct Pending {
    log: RequestLog,
    status: u16,
    error_code: Option<&'static str>,
    metrics: Arc<Metrics>,
}

impl Pending {
    fn emit(self, bytes_out: u64, completed: bool) {
        let log = &self.log;
        let profile = log.profile.as_deref().unwrap_or("-");
        let host_label = if log.routed { log.host.as_str() } else { "-" };
        self.metrics.request(profile, host_label, self.status);
        tracing::info!(
            request_id = %log.id,
            method = %log.method,
            host = %log.host,
            path = log.uri.path(),
            profile,
            status = self.status,
            upstream_status = log.upstream_status.map(i64::from).unwrap_or(-1),
            error = self.error_code.unwrap_or("-"),
            bytes_in = log.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            upstream_ms = log.upstream_latency.map(millis).unwrap_or(-1.0),
            duration_ms = millis(log.started.elapsed()),
            completed,
            "request"
        );
    }
}

/// Milliseconds to the microsecond, so log lines stay short.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A response body that counts what it sends and writes the log line when it ends.
struct LoggedBody {
    inner: ProxyBody,
    bytes_out: u64,
    pending: Option<Pending>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(pending) = self.pending.take() {
                    pending.emit(self.bytes_out, true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Hyper may drop a body it knows is empty without polling it, and a client may hang up
        // mid-body: either way the request gets its line.
        if let Some(pending) = self.pending.take() {
            let completed = self.inner.is_end_stream();
            pending.emit(self.bytes_out, completed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_share_the_process_prefix() {
        let id = next_request_id();
        assert_eq!(id.header_value().unwrap().to_str().unwrap(), id.to_string());
        let a = next_request_id().to_string();
        let b = next_request_id().to_string();
        assert_ne!(a, b);
        assert_eq!(a.split('-').next(), b.split('-').next());
        assert_eq!(a.len(), 15, "{a}");
    }
}
