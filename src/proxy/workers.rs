//! One event loop per worker thread, as nginx runs one per worker process: each worker has a
//! current-thread runtime, its own listener on the proxy port (`SO_REUSEPORT`: the kernel
//! spreads connections over them) and its own upstream pools, so a request is accepted, signed,
//! forwarded and answered on one thread without cross-thread wake-ups. `[proxy] workers` sets
//! how many (default: one per CPU).

use std::io;
use std::net::SocketAddr;

use tokio::sync::watch;

use super::{Proxy, ServeError};

/// `count` listeners on `addr`, all bound with `SO_REUSEPORT` (the first decides the port when
/// `addr` says 0). Where the kernel does not spread connections over such a group (not Linux),
/// one listener.
pub async fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let count = if cfg!(target_os = "linux") {
        count.max(1)
    } else {
        1
    };
    let mut listeners = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let socket = match at {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        #[cfg(unix)]
        {
            socket.set_reuseaddr(true)?;
            if count > 1 {
                socket.set_reuseport(true)?;
            }
        }
        socket.bind(at)?;
        let listener = socket.listen(1024)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Serves `proxy` on each listener from a worker thread of its own until `shutdown` turns
/// true; returns when every worker has drained. A worker that fails to start is reported and
/// the others go on.
pub async fn serve(
    proxy: Proxy,
    listeners: Vec<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let mut done = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let proxy = proxy.clone();
        let mut stop = shutdown.clone();
        let started = std::thread::Builder::new()
            .name(format!("signproxy-worker-{index}"))
            .spawn(move || {
                let outcome = run_worker(index, proxy, listener, async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                });
                let _ = tx.send(outcome);
            });
        match started {
            Ok(_) => done.push(rx),
            Err(e) => tracing::error!(worker = index, error = %e, "cannot start a worker thread"),
        }
    }
    let mut first_error = None;
    for rx in done {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => tracing::error!("a worker thread ended without reporting"),
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn run_worker(
    index: usize,
    proxy: Proxy,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    crate::upstream::set_worker(index);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Runtime)?;
        proxy.serve(listener, shutdown).await
    })
}
