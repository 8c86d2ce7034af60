//! One worker's upstream connections: hyper HTTP/1 client connections over rustls, kept by
//! destination. A connection is taken for one request and put back when its answer's body ends,
//! so nothing runs between requests (hyper-util's pooled client spawned a task per request to
//! wait for that moment), and the connection task runs on the worker that uses it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

use super::{BoxError, Dialer, UpstreamBody};

/// An idle connection older than this is not reused (servers close theirs after a while; a
/// connection that outlived its welcome fails the request sent on it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per destination; more are closed when their answer ends.
const MAX_IDLE_PER_DESTINATION: usize = 256;

/// Where a connection goes: scheme and authority as the request names them.
type Destination = (bool, Authority);

/// One worker's connections.
pub struct Pool {
    connector: HttpsConnector<Dialer>,
    idle: Mutex<HashMap<Destination, Vec<Idle>>>,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Pool {
    pub fn new(connector: HttpsConnector<Dialer>) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            idle: Mutex::new(HashMap::new()),
        })
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<Destination, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection to `to` that is open and ready for a request.
    fn take(&self, to: &Destination) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle();
        let list = idle.get_mut(to)?;
        let mut found = None;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.since.elapsed() < IDLE_TIMEOUT {
                found = Some(c.sender);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(to);
        }
        found
    }

    /// Pools a connection once it is ready for another request. It may still be writing its
    /// request when the answer has ended (the server answered an upload early): then a task
    /// waits for it, as hyper-util's pool did, so no request ever waits behind another.
    fn put_back(self: &Arc<Self>, to: Destination, mut sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            return self.push(to, sender);
        }
        let pool = Arc::downgrade(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, sender.ready()).await {
                    if let Some(pool) = pool.upgrade() {
                        pool.push(to, sender);
                    }
                }
            });
        }
    }

    fn push(&self, to: Destination, sender: SendRequest<UpstreamBody>) {
        let mut idle = self.idle();
        let list = idle.entry(to).or_default();
        // Oldest first: what outlived the idle timeout goes now rather than when its
        // destination is next used (closed ones go when `take` meets them).
        let now = Instant::now();
        let stale = list.partition_point(|c| now.duration_since(c.since) >= IDLE_TIMEOUT);
        list.drain(..stale);
        if list.len() < MAX_IDLE_PER_DESTINATION {
            list.push(Idle { sender, since: now });
        }
    }

    /// A new connection to `uri`'s destination, its task spawned on this worker.
    async fn connect(&self, uri: &Uri) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(uri.clone()).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            // The pool drops closed senders; the cause is only worth a debug line.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (absolute URI) on a pooled connection, or a new one when none is idle or the
    /// idle one turns out closed before the request went out. The answer's body gives the
    /// connection back when it ends, and holds `permit` until then.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Response<Returning>, BoxError> {
        let uri = req.uri().clone();
        let authority = uri
            .authority()
            .cloned()
            .ok_or("the upstream URL has no host")?;
        let https = uri.scheme_str() != Some("http");
        if !req.headers().contains_key(header::HOST) {
            // As hyper-util wrote it: the host, and the port only when it is not the default
            // (never the URL's userinfo).
            let host = uri.host().ok_or("the upstream URL has no host")?;
            let value = match uri.port_u16() {
                Some(port) if port != if https { 443 } else { 80 } => {
                    HeaderValue::from_str(&format!("{host}:{port}"))?
                }
                _ => HeaderValue::from_str(host)?,
            };
            req.headers_mut().insert(header::HOST, value);
        }
        *req.uri_mut() = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let to: Destination = (https, authority);
        let mut req = req;
        loop {
            let (mut sender, fresh) = match self.take(&to) {
                Some(sender) => (sender, false),
                None => (self.connect(&uri).await?, true),
            };
            // A reused connection is ready unless it closed meanwhile; a new one once its
            // task runs.
            if sender.ready().await.is_err() {
                if fresh {
                    return Err("the upstream closed the connection at once".into());
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let mut body = Returning {
                        inner: body,
                        _permit: permit,
                        home: Some((Arc::clone(self), to.clone(), sender)),
                    };
                    // No body to read (204, HEAD, an empty answer): nobody may poll it.
                    if body.inner.is_end_stream() {
                        body.release();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed as it was taken. Another one.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(Box::new(e.into_error())),
                },
            }
        }
    }
}

/// An upstream answer's body: it holds its in-flight permit until it is read to the end or
/// dropped, and gives its connection back to the pool when it ends.
pub struct Returning {
    inner: Incoming,
    _permit: Option<OwnedSemaphorePermit>,
    home: Option<(Arc<Pool>, Destination, SendRequest<UpstreamBody>)>,
}

impl Returning {
    fn release(&mut self) {
        if let Some((pool, to, sender)) = self.home.take() {
            pool.put_back(to, sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error mid-body: the connection is not reused (dropped with this body).
            Poll::Ready(Some(Err(_))) => self.home = None,
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
