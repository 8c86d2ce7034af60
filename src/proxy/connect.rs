//! CONNECT: for a host a profile serves, terminate TLS with a leaf from the local CA (or accept
//! plain HTTP inside the tunnel) and sign each inner request like absolute-form; for a
//! `[proxy] passthrough` host, an opaque byte tunnel; anything else is refused before any tunnel
//! opens.

use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::admission::{check_head, reauthorize, Client};
use super::forward::{forward, Target};
use super::limits::{reached, Phase, TunnelGauge};
use super::{
    empty_body, finish, head_buffer_size, ConnContext, Proxy, ProxyBody, ProxyError, RequestLog,
    State,
};
use crate::egress::EgressError;
use crate::route::{normalize_host, route, Destination, Route, RouteError, PROFILE_HEADER};

/// HTTP/2 streams one intercepted tunnel may have open at once.
const MAX_STREAMS_PER_TUNNEL: u32 = 16;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn handle(
    proxy: Proxy,
    state: &State,
    conn: ConnContext,
    client: Client,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = connect_target(req.uri())?;
    log.host.clone_from(&target.host);
    // `x-signproxy-profile` on the CONNECT (curl --proxy-header, Go's ProxyConnectHeader)
    // chooses the profile for every request inside the tunnel that does not name its own.
    let connect_profile = req.headers().get(PROFILE_HEADER).cloned();
    let requested = connect_profile
        .as_ref()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let dest = Destination {
        host: &target.host,
        port: target.port.unwrap_or(443),
        tunnel: true,
        https: false,
    };
    match route(&state.config, dest, requested.as_deref(), client.as_deref()) {
        Ok(Route::Passthrough) => {
            log.routed = true;
            tunnel(state, conn, req, &target).await
        }
        Ok(Route::Sign(profile)) => {
            log.routed = true;
            log.profile = Some(Arc::clone(profile.label()));
            intercept(proxy, state, conn, req, target, connect_profile, client)
        }
        // Several profiles serve the host and the CONNECT names none: each request inside the
        // tunnel chooses with its own header (or gets the 400 itself).
        Err(RouteError::AmbiguousProfile { .. }) => {
            log.routed = true;
            intercept(proxy, state, conn, req, target, None, client)
        }
        Err(e) => Err(e.into()),
    }
}

/// The host and port a CONNECT request target (authority-form) names; 443 when it gives no port.
/// Pure, so the fuzz targets can reach it.
pub fn connect_target(uri: &Uri) -> Result<Target, ProxyError> {
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs a HOST:PORT target".to_owned()))?;
    Ok(Target {
        host: normalize_host(authority.host()),
        port: Some(authority.port_u16().unwrap_or(443)),
        https: true,
    })
}

/// Dials first (through the egress guard), so an unreachable or refused destination is an
/// answer rather than a tunnel that dies at once. The tunnel holds its connection's slot for its
/// whole life.
async fn tunnel(
    state: &State,
    conn: ConnContext,
    req: Request<Incoming>,
    target: &Target,
) -> Result<Response<ProxyBody>, ProxyError> {
    let port = target.port.unwrap_or(443);
    let mut server = state
        .upstream
        .dial_guarded(&target.host, port)
        .await
        .map_err(|e| match e {
            EgressError::Denied(denied) => ProxyError::DestinationNotAllowed(denied),
            other => ProxyError::UpstreamConnect {
                authority: format!("{}:{port}", target.host),
                reason: other.to_string(),
            },
        })?;
    let gauge = TunnelGauge::new(&state.metrics);
    let idle_timeout = state.config.proxy.idle_timeout;
    tokio::spawn(async move {
        // Moved in whole: a closure that captured only some fields would drop the slot early.
        let ConnContext {
            slot: _slot,
            activity,
            mut phase,
        } = conn;
        let _gauge = gauge;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "CONNECT upgrade failed"),
        };
        let mut client = TokioIo::new(upgraded);
        // An opaque tunnel has no requests to finish: it lives until either side closes, it
        // idles out, or the shutdown grace ends.
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                if let Err(e) = copied {
                    tracing::debug!(error = %e, "tunnel closed with an error");
                }
            }
            () = activity.idle_for(idle_timeout) => {
                tracing::debug!("passthrough tunnel idle; closing it");
            }
            () = reached(&mut phase, Phase::Closing) => {}
        }
    });
    Ok(ok_response())
}

fn ok_response() -> Response<ProxyBody> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Answers 200, then serves the tunnel's inside as HTTP (over TLS with our leaf, or plain).
fn intercept(
    proxy: Proxy,
    state: &State,
    conn: ConnContext,
    req: Request<Incoming>,
    target: Target,
    connect_profile: Option<HeaderValue>,
    client: Client,
) -> Result<Response<ProxyBody>, ProxyError> {
    let tls_config = state
        .ca
        .server_config(&target.host)
        .map_err(ProxyError::Interception)?;
    let gauge = TunnelGauge::new(&state.metrics);
    // The tunnel's opening (first byte, TLS handshake) gets the same limit as a request head: a
    // client that goes quiet there must not hold its connection slot.
    let opening_limit = state.config.proxy.header_read_timeout;
    tokio::spawn(async move {
        let _gauge = gauge;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "CONNECT upgrade failed"),
        };
        let mut io = TokioIo::new(upgraded);
        let mut first = [0u8; 1];
        match tokio::time::timeout(opening_limit, io.read(&mut first)).await {
            Ok(Ok(1)) => {}
            Ok(_) => return,
            Err(_) => return tracing::debug!("CONNECT tunnel sent nothing in time; closing it"),
        }
        let stream = Prefixed::new(first[0], io);
        let inner = Inner {
            proxy,
            conn,
            target,
            connect_profile,
            client,
        };
        if first[0] == TLS_HANDSHAKE {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
            match tokio::time::timeout(opening_limit, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                    inner.serve(tls, sni).await;
                }
                Err(_) => tracing::debug!(
                    host = %inner.target.host,
                    "TLS handshake inside CONNECT did not finish in time; closing the tunnel"
                ),
                // Typically the client does not trust signproxy's CA yet.
                Ok(Err(e)) => tracing::warn!(
                    host = %inner.target.host,
                    error = %e,
                    "TLS handshake inside CONNECT failed (does the client trust signproxy's CA? see `signproxy ca cert`)"
                ),
            }
        } else {
            let inner = Inner {
                target: Target {
                    https: false,
                    ..inner.target
                },
                ..inner
            };
            inner.serve(stream, None).await;
        }
    });
    Ok(ok_response())
}

/// The inside of an intercepted tunnel.
struct Inner {
    proxy: Proxy,
    conn: ConnContext,
    target: Target,
    connect_profile: Option<HeaderValue>,
    /// Who opened the tunnel: requests inside it carry no credentials of their own.
    client: Client,
}

impl Inner {
    /// Serves HTTP/1.1 or HTTP/2; every request is checked against the CONNECT target and then
    /// forwarded like an absolute-form request (with the CONNECT's profile choice when it names
    /// none).
    async fn serve<S>(self, stream: S, sni: Option<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Inner {
            proxy,
            mut conn,
            target,
            connect_profile,
            client,
        } = self;
        let config = Arc::clone(&proxy.state().config);
        let service = service_fn(move |mut req: Request<Incoming>| {
            let state = proxy.state();
            let target = target.clone();
            let sni = sni.clone();
            let client = client.clone();
            if let Some(profile) = &connect_profile {
                if !req.headers().contains_key(PROFILE_HEADER) {
                    req.headers_mut().insert(PROFILE_HEADER, profile.clone());
                }
            }
            async move {
                let mut log =
                    RequestLog::new(req.method().clone(), target.host.clone(), req.uri().clone());
                // The tunnel's client is checked again against the live config: a reload that
                // removes it or narrows its profiles applies to tunnels already open.
                let admitted = check_head(&req, state.config.proxy.max_header_bytes)
                    .and_then(|()| {
                        check_inner_authority(
                            req.uri(),
                            req.headers(),
                            &target.host,
                            sni.as_deref(),
                        )
                    })
                    .and_then(|()| reauthorize(state.config.proxy.auth.as_ref(), &client));
                let result = match admitted {
                    Ok(client) => forward(&state, client.as_deref(), req, target, &mut log).await,
                    Err(e) => {
                        tracing::warn!(request_id = %log.id, connect = %log.host, reason = %e, "misdirected request inside CONNECT refused");
                        Err(e)
                    }
                };
                Ok::<_, std::convert::Infallible>(finish(result, log, &state.metrics))
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.proxy.header_read_timeout)
            .max_buf_size(head_buffer_size(&config));
        // One connection slot must not become hundreds of concurrent signed requests.
        builder
            .http2()
            .max_concurrent_streams(MAX_STREAMS_PER_TUNNEL)
            .max_header_list_size(u32::try_from(config.proxy.max_header_bytes).unwrap_or(u32::MAX));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let outcome = conn
            .drive(connection, config.proxy.idle_timeout, |c| {
                c.graceful_shutdown()
            })
            .await;
        if let Some(Err(e)) = outcome {
            tracing::debug!(error = %e, "tunnel connection ended with an error");
        }
    }
}

/// The CONNECT authority, the TLS SNI and the inner Host/authority must name one host: routing,
/// signing and dialling all use that name, so a disagreement could sign for one host and send
/// to another. Pure (URI and headers in), so the fuzz targets can reach it.
pub fn check_inner_authority(
    uri: &Uri,
    headers: &HeaderMap,
    connect_host: &str,
    sni: Option<&str>,
) -> Result<(), ProxyError> {
    if let Some(sni) = sni {
        if normalize_host(sni) != connect_host {
            return Err(ProxyError::MisdirectedRequest(format!(
                "TLS SNI `{sni}` does not match the CONNECT target `{connect_host}`: open one tunnel per host"
            )));
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    // RFC 9112 §3.2: two Host lines are a 400. Checking only the first would vouch for a request
    // that also names another host.
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "request inside CONNECT has more than one Host header: send exactly one".to_owned(),
        ));
    }
    let inner = match uri.host() {
        Some(host) => host.to_owned(),
        None => {
            let value = host_header.and_then(|v| v.to_str().ok()).ok_or_else(|| {
                ProxyError::BadRequest("request inside CONNECT has no Host header".to_owned())
            })?;
            let authority = Authority::from_str(value).map_err(|_| {
                ProxyError::BadRequest(format!("Host `{value}` is not a host name"))
            })?;
            // Host is `host[:port]` (RFC 9110 §7.2); `Authority` would also take `user@host`.
            if value.contains('@') {
                // Not echoed: the userinfo may hold a password.
                return Err(ProxyError::BadRequest(
                    "the Host header carries userinfo (`user@`): send only HOST[:PORT]".to_owned(),
                ));
            }
            // ... and a port of any characters (`host:4$3`), where RFC 9110 allows digits only.
            let port = value.get(authority.host().len()..).unwrap_or_default();
            let digits = port
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
            if !(port.is_empty() || digits) {
                return Err(ProxyError::BadRequest(format!(
                    "Host `{value}` is not a host name: send HOST[:PORT]"
                )));
            }
            authority.host().to_owned()
        }
    };
    if normalize_host(&inner) != connect_host {
        return Err(ProxyError::MisdirectedRequest(format!(
            "Host `{inner}` does not match the CONNECT target `{connect_host}`: open one tunnel per host"
        )));
    }
    Ok(())
}

/// A stream with one already-read byte put back in front.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(first: u8, inner: S) -> Self {
        Prefixed {
            first: Some(first),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(byte) = self.first.take() {
                buf.put_slice(&[byte]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
