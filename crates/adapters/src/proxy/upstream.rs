//! The proxy's side toward the versions (`traffic.proxy.upstream_protocol`): HTTP/1.1
//! through hyper-util's pooled client, or HTTP/2 with prior knowledge (h2c) on one
//! multiplexed connection per endpoint.
//!
//! Owns the upstream connections and how a request is put to them. It must not choose
//! a variant or an endpoint, nor count anything: `mod.rs` does both, and hands it the
//! endpoint.
//!
//! Guarantees (h2c): each endpoint has at most one connection in use, opened on the
//! first request to it and opened again when it closes (a version restarted, an idle
//! connection closed by the version); a request that found the connection closed
//! before any byte of it was sent is sent once more on a new one, as hyper-util's
//! pool does for HTTP/1.1. The request reaches the version with the client's
//! authority as `:authority` (not the endpoint's address), and without `Host`.
//! Assumptions: a version that speaks h2c accepts prior knowledge (no `Upgrade:
//! h2c` dance), as gRPC servers and `h2c`-enabled HTTP servers do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_core::policy::UpstreamProtocol;

/// The largest response (or trailer) header block taken from an h2c version, as
/// HTTP/2 counts it. hyper's default (16 KiB) reset larger ones, which the client
/// saw as the version's 502 where an HTTP/1.1 version's answer passed.
const RESPONSE_HEADER_LIST: u32 = 256 * 1024;

/// How long opening a connection to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A failure to get an answer from a version.
pub(super) type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

/// The versions' side of the proxy, in the protocol the policy chose.
#[derive(Debug)]
pub(super) enum Upstream<B> {
    /// HTTP/1.1, pooled.
    Http1(Client<HttpConnector, B>),
    /// HTTP/2 with prior knowledge, one connection per endpoint.
    H2c(H2cPool<B>),
}

impl<B> Upstream<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An upstream side speaking `protocol`.
    pub(super) fn new(protocol: UpstreamProtocol) -> Self {
        match protocol {
            UpstreamProtocol::Http1 => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                Upstream::Http1(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build(connector),
                )
            }
            UpstreamProtocol::H2c => Upstream::H2c(H2cPool {
                conns: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The protocol spoken.
    pub(super) fn protocol(&self) -> UpstreamProtocol {
        match self {
            Upstream::Http1(_) => UpstreamProtocol::Http1,
            Upstream::H2c(_) => UpstreamProtocol::H2c,
        }
    }

    /// Sends `req` to the endpoint `addr`. `req`'s URI is absolute, with `addr` as its
    /// authority; its version and headers are set here for the protocol.
    pub(super) async fn request(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match self {
            Upstream::Http1(client) => {
                // The proxy speaks HTTP/1.1 on each hop: a 1.0 client's request
                // forwarded as 1.0 would pin the pooled upstream connection to 1.0,
                // and every later client would get 1.0 answers (hyper still answers a
                // 1.0 client in 1.0).
                *req.version_mut() = hyper::Version::HTTP_11;
                client.request(req).await.map_err(Into::into)
            }
            Upstream::H2c(pool) => {
                *req.version_mut() = hyper::Version::HTTP_2;
                authority_from_host(&mut req);
                pool.request(addr, req).await
            }
        }
    }

    /// Forgets the connections to endpoints no route names any more.
    pub(super) fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        if let Upstream::H2c(pool) = self {
            pool.lock().retain(|addr, _| keep(addr));
        }
    }
}

/// Makes the request's `Host` its `:authority` (HTTP/2 has no `Host`; RFC 9113
/// 8.3.1): the version sees the name the client asked for. A request without a
/// usable `Host` keeps the endpoint's address.
fn authority_from_host<B>(req: &mut Request<B>) {
    let Some(host) = req.headers_mut().remove(hyper::header::HOST) else {
        return;
    };
    let Ok(authority) = hyper::http::uri::Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// One HTTP/2 connection per endpoint, shared by every request to it.
#[derive(Debug)]
pub(super) struct H2cPool<B> {
    conns: Mutex<HashMap<SocketAddr, http2::SendRequest<B>>>,
}

impl<B> H2cPool<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<B>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn request(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut sender = self.sender(addr).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    // Not sent at all (the connection closed under it): once more, on a
                    // connection of its own.
                    match e.take_message() {
                        Some(back) if !retried => {
                            self.forget(addr, &sender);
                            retried = true;
                            req = back;
                        }
                        _ => return Err(e.into_error().into()),
                    }
                }
            }
        }
    }

    /// The endpoint's connection, opened if it has none that is open.
    async fn sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<B>, UpstreamError> {
        if let Some(s) = self.lock().get(&addr)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(RESPONSE_HEADER_LIST)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %addr, "upstream h2c connection ended");
            }
        });
        // Two requests may open one each at once: the last one kept serves the next
        // requests, and the other closes once its own request is answered.
        self.lock().insert(addr, sender.clone());
        Ok(sender)
    }

    /// Drops the endpoint's connection, if it is still `sender`'s.
    fn forget(&self, addr: SocketAddr, sender: &http2::SendRequest<B>) {
        let mut conns = self.lock();
        if conns
            .get(&addr)
            .is_some_and(|s| s.is_closed() || sender.is_closed())
        {
            conns.remove(&addr);
        }
    }
}
