//! End to end, HTTPS_PROXY (CONNECT): real clients (reqwest, curl, raw sockets with rustls and
//! hyper) → the real proxy, which terminates TLS with a leaf from its own CA, signs each request
//! inside the tunnel and forwards it over TLS → a test upstream that verifies the signature with
//! its own implementation and records the bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use common::keys::pem_decode;
use common::proxy::{test_config, tiktok_profile, ProxyHarness, TIKTOK_APP_KEY, TIKTOK_APP_SECRET};
use common::*;

const TIKTOK: &str = "open-api.tiktokglobalshop.com";
const EBAY: &str = "api.ebay.com";
const EBAY_JWE: &str = "eyJ0ZXN0IjoiY29ubmVjdF9lMmUifQ.test-jwe";

/// Guards every raw read so a broken proxy fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

fn ebay_key() -> EbayTestKey {
    EbayTestKey::rfc9421_ed25519()
}

fn ebay_profile(key: &EbayTestKey) -> String {
    format!(
        "[ebay.default]\nprivate_key = \"\"\"\n{}\"\"\"\njwe = \"{EBAY_JWE}\"\n",
        key.private_pem()
    )
}

/// One upstream for both marketplaces: the verifier is picked by the Host the upstream received.
fn both_verifier() -> Verifier {
    Verifier::ByHost(vec![
        (
            TIKTOK.to_owned(),
            Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET),
        ),
        (EBAY.to_owned(), Verifier::ebay(ebay_key().public)),
    ])
}

async fn setup_with(proxy_extra: &str) -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, both_verifier());
    let profiles = format!("{}\n{}", tiktok_profile(), ebay_profile(&ebay_key()));
    let config = test_config(proxy_extra, "", &profiles);
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

async fn setup() -> (TestCa, TestUpstream, ProxyHarness) {
    setup_with("").await
}

fn assert_verified(r: &Received, scheme: &str) {
    assert_eq!(
        r.signature.scheme,
        scheme,
        "the upstream must have checked a {scheme} signature (Host {:?})",
        r.header_str("host")
    );
    assert!(
        r.signature.ok,
        "upstream rejected the signature: {:?}",
        r.signature.error
    );
}

/// Forwarded over TLS, with the marketplace host as SNI and Host.
fn assert_sent_over_tls_to(r: &Received, host: &str) {
    assert_eq!(r.tls_sni.as_deref(), Some(host), "upstream SNI");
    assert_eq!(r.header_str("host"), Some(host), "upstream Host");
    assert_eq!(r.version, "HTTP/1.1");
}

// ---------------------------------------------------------------------------------------------
// Raw clients: CONNECT by hand, rustls, hyper's connection-level clients
// ---------------------------------------------------------------------------------------------

/// A rustls client config trusting only `ca_pem` (ring provider), offering `alpn`.
fn tls_config_trusting(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let der = pem_decode(ca_pem).expect("CA PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der)).expect("add CA root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any server certificate (signatures are still checked against the presented key).
/// Only for the SNI-mismatch test, where the leaf names the CONNECT host, not the SNI.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config_accepting_any_cert() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A parsed HTTP/1.1 response read off a raw stream.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {}, body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response head byte by byte (so nothing after it is consumed), then its body by
/// `content-length` or chunked framing. `bodiless`: a CONNECT 2xx, which has no body.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, bodiless: bool) -> RawResponse {
    tokio::time::timeout(IO_TIMEOUT, read_response_inner(stream, bodiless))
        .await
        .expect("timed out reading a response")
}

async fn read_response_inner<S: AsyncRead + Unpin>(stream: &mut S, bodiless: bool) -> RawResponse {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.unwrap_or_else(|e| {
            panic!(
                "connection ended inside a response head ({e}); got {:?}",
                String::from_utf8_lossy(&head)
            )
        });
        head.push(byte);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/1.1 "), "{text:?}");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if bodiless && (200..300).contains(&status) {
        // A successful CONNECT response: the tunnel starts right after the head.
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        body.resize(len, 0);
        stream.read_exact(&mut body).await.expect("read body");
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = Vec::new();
            while !size_line.ends_with(b"\r\n") {
                size_line.push(stream.read_u8().await.expect("chunk size"));
            }
            let size_text = String::from_utf8_lossy(&size_line[..size_line.len() - 2]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut body).await.expect("read body");
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Sends `CONNECT authority` on a fresh connection to the proxy and returns the stream with the
/// proxy's answer (the tunnel is open when the status is 200).
async fn send_connect(proxy: SocketAddr, authority: &str) -> (TcpStream, RawResponse) {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect to proxy");
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let response = read_response(&mut tcp, true).await;
    (tcp, response)
}

/// An open tunnel to `authority` through the proxy.
async fn open_tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let (tcp, response) = send_connect(proxy, authority).await;
    assert_eq!(
        response.status,
        200,
        "CONNECT {authority}: {:?} {}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    tcp
}

/// A tunnel to `TIKTOK:443` with TLS on top, `server_name` as SNI.
async fn tls_tunnel(
    proxy: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> TlsStream<TcpStream> {
    let tcp = open_tunnel(proxy, &format!("{TIKTOK}:443")).await;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake inside the tunnel (trusting signproxy's CA)")
}

type Http1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1_over<S>(io: S) -> Http1Sender
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends `req` and returns (status, headers, whole body).
async fn exchange<B>(
    send: impl std::future::Future<Output = hyper::Result<hyper::Response<B>>>,
) -> (u16, http::HeaderMap, Bytes)
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let response = tokio::time::timeout(IO_TIMEOUT, send)
        .await
        .expect("response timed out")
        .expect("send request");
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(IO_TIMEOUT, body.collect())
        .await
        .expect("body timed out")
        .expect("read body")
        .to_bytes();
    (status, parts.headers, bytes)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

// ---------------------------------------------------------------------------------------------
// reqwest (HTTPS_PROXY) to TikTok and eBay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tiktok_get_over_connect_is_signed_and_sent_with_the_host_sni() {
    let (_ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let resp = client
        .get(format!(
            "https://{TIKTOK}/authorization/202309/shops?page_token=a%3D%3D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-signproxy-error").is_none());
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["scheme"], "tiktok", "{echo}");
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_verified(r, "tiktok");
    assert_sent_over_tls_to(r, TIKTOK);
    assert_eq!(r.method, "GET");
    assert_eq!(r.path(), "/authorization/202309/shops");
    assert!(
        r.query().unwrap().starts_with("page_token=a%3D%3D"),
        "client's query encoding kept: {}",
        r.path_and_query
    );
    assert_eq!(r.query_param("app_key").as_deref(), Some(TIKTOK_APP_KEY));
    let ts: u64 = r.query_param("timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.abs_diff(now) < 60, "timestamp {ts} near now {now}");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn tiktok_post_json_over_connect_arrives_byte_for_byte() {
    let (_ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let body = "{ \"order_status\" :\t\"UNPAID\",\n  \"note\": \"Grüße, 東京 👋\",\"n\":1.50 }\r\n";
    let resp = client
        .post(format!(
            "https://{TIKTOK}/order/202309/orders/search?page_size=20"
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["ok"], true, "{echo}");
    assert_eq!(echo["body_len"], body.len());

    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_sent_over_tls_to(&r, TIKTOK);
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(
        r.header_str("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header_str("content-type"), Some("application/json"));
    assert_eq!(r.query_param("page_size").as_deref(), Some("20"));
}

#[tokio::test]
async fn ebay_post_json_over_connect_is_rfc9421_signed_with_ed25519() {
    let (_ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let body = "{\"requests\":[{\"sku\":\"SKU-1\",  \"locale\":\"de_DE\",\"title\":\"Größe M\"}]}";
    let resp = client
        .post(format!(
            "https://{EBAY}/sell/inventory/v1/bulk_create_or_replace_inventory_item"
        ))
        .header("content-type", "application/json")
        .header("authorization", "Bearer v^1.1#client-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["scheme"], "ebay", "{echo}");
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_verified(r, "ebay");
    assert_sent_over_tls_to(r, EBAY);
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(
        r.header_str("content-digest"),
        Some(content_digest(body.as_bytes()).as_str())
    );
    assert_eq!(r.header_str("x-ebay-signature-key"), Some(EBAY_JWE));
    assert!(
        r.header_str("signature-input")
            .unwrap()
            .starts_with(r#"sig1=("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created="#),
        "{:?}",
        r.header_str("signature-input")
    );
    assert_eq!(
        r.header_str("authorization"),
        Some("Bearer v^1.1#client-token"),
        "the client's credential is kept"
    );
    assert_eq!(
        r.path_and_query,
        "/sell/inventory/v1/bulk_create_or_replace_inventory_item"
    );
}

#[tokio::test]
async fn ebay_get_with_query_over_connect_is_signed_without_content_digest() {
    let (_ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let query = "filter=orderfulfillmentstatus:%7BNOT_STARTED%7CIN_PROGRESS%7D&limit=50";
    let resp = client
        .get(format!("https://{EBAY}/sell/fulfillment/v1/order?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_verified(&r, "ebay");
    assert_sent_over_tls_to(&r, EBAY);
    assert_eq!(r.method, "GET");
    assert_eq!(
        r.path_and_query,
        format!("/sell/fulfillment/v1/order?{query}"),
        "the query is forwarded as the client wrote it"
    );
    assert!(r.body.is_empty());
    assert!(!r.has_header("content-digest"));
    assert!(
        r.header_str("signature-input").unwrap().starts_with(
            r#"sig1=("x-ebay-signature-key" "@method" "@path" "@authority");created="#
        ),
        "{:?}",
        r.header_str("signature-input")
    );
}

// ---------------------------------------------------------------------------------------------
// Several requests on one tunnel: HTTP/1.1 keep-alive and HTTP/2
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn several_http1_requests_on_one_tls_tunnel_are_each_signed() {
    let (_ca, upstream, proxy) = setup().await;
    let config = tls_config_trusting(&proxy.proxy_ca_pem(), &[b"http/1.1"]);
    let tls = tls_tunnel(proxy.addr, config, TIKTOK).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    let mut sender = http1_over(tls).await;

    for i in 0..3 {
        sender.ready().await.expect("connection still usable");
        let body = format!("{{\"order_status\":\"UNPAID\", \"i\": {i}}}");
        let req = Request::builder()
            .method("POST")
            .uri(format!("/order/202309/orders/search?page_size={i}"))
            .header("host", TIKTOK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let (status, headers, bytes) = exchange(sender.send_request(req)).await;
        assert_eq!(
            status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(headers.get("x-signproxy-error").is_none());
        let echo = json(&bytes);
        assert_eq!(echo["signature"]["ok"], true, "request {i}: {echo}");

        let r = upstream.last_request();
        assert_verified(&r, "tiktok");
        assert_sent_over_tls_to(&r, TIKTOK);
        assert_eq!(r.body, body.as_bytes(), "request {i}");
        assert_eq!(r.query_param("page_size"), Some(i.to_string()));
    }
    // A GET as the last one, on the same connection.
    sender.ready().await.expect("connection still usable");
    let req = Request::builder()
        .uri("/authorization/202309/shops")
        .header("host", TIKTOK)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = exchange(sender.send_request(req)).await;
    assert_eq!(status, 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests
        .iter()
        .all(|r| r.signature.ok && r.signature.scheme == "tiktok"));
    assert_eq!(
        upstream.connections_accepted(),
        1,
        "the proxy's upstream connection is reused too"
    );
}

#[tokio::test]
async fn http2_inside_the_tunnel_is_served_and_signed() {
    let (_ca, upstream, proxy) = setup().await;
    let config = tls_config_trusting(&proxy.proxy_ca_pem(), &[b"h2", b"http/1.1"]);
    let tls = tls_tunnel(proxy.addr, config, TIKTOK).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"h2".as_slice()),
        "signproxy's leaf offers h2"
    );
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });

    let post = |i: u32| {
        let mut sender = sender.clone();
        async move {
            let body = format!("{{\"i\":{i},\"note\":\"ü\"}}");
            let req = Request::builder()
                .method("POST")
                .uri(format!("https://{TIKTOK}/order/202309/orders/search?n={i}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let (status, headers, bytes) = exchange(sender.send_request(req)).await;
            (i, body, status, headers, bytes)
        }
    };
    // Two concurrent streams, then a third one after them.
    let (a, b) = tokio::join!(post(1), post(2));
    let c = post(3).await;
    for (i, body, status, headers, bytes) in [a, b, c] {
        assert_eq!(
            status,
            200,
            "stream {i}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(headers.get("x-signproxy-error").is_none());
        let echo = json(&bytes);
        assert_eq!(echo["signature"]["ok"], true, "stream {i}: {echo}");
        assert_eq!(
            echo["query"].as_str().unwrap().split('&').next(),
            Some(format!("n={i}").as_str())
        );
        let received = upstream
            .requests()
            .into_iter()
            .find(|r| r.query_param("n") == Some(i.to_string()))
            .unwrap_or_else(|| panic!("the upstream never got stream {i}"));
        assert_verified(&received, "tiktok");
        assert_sent_over_tls_to(&received, TIKTOK);
        assert_eq!(received.body, body.as_bytes());
        assert_eq!(received.path(), "/order/202309/orders/search");
    }
    assert_eq!(upstream.requests().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP inside CONNECT (Node's undici for http:// URLs)
// ---------------------------------------------------------------------------------------------

async fn plain_http_inside_connect(connect_port: u16) {
    let (_ca, upstream, proxy) = setup().await;
    let mut tunnel = open_tunnel(proxy.addr, &format!("{TIKTOK}:{connect_port}")).await;
    tunnel
        .write_all(
            format!("GET /authorization/202309/shops HTTP/1.1\r\nHost: {TIKTOK}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let response = read_response(&mut tunnel, false).await;
    assert_eq!(
        response.status,
        200,
        "{:?} {}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert!(response.header("x-signproxy-error").is_none());
    let echo = response.json();
    assert_eq!(echo["signature"]["ok"], true, "{echo}");
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_sent_over_tls_to(&r, TIKTOK);
    assert_eq!(r.path(), "/authorization/202309/shops");

    // Keep-alive: a POST on the same plain tunnel.
    let body = "{\"a\":  1,\"b\":\"ü\"}";
    tunnel
        .write_all(
            format!(
                "POST /order/202309/orders/search HTTP/1.1\r\nHost: {TIKTOK}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let response = read_response(&mut tunnel, false).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_sent_over_tls_to(&r, TIKTOK);
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn plain_http_inside_connect_to_port_80_is_signed_and_sent_over_tls() {
    plain_http_inside_connect(80).await;
}

#[tokio::test]
async fn plain_http_inside_connect_to_port_443_is_signed_and_sent_over_tls() {
    plain_http_inside_connect(443).await;
}

// ---------------------------------------------------------------------------------------------
// Misdirected requests: CONNECT target, SNI and Host must agree
// ---------------------------------------------------------------------------------------------

fn assert_misdirected(status: u16, error_header: Option<&str>, body: &[u8], needle: &str) {
    assert_eq!(status, 421, "{:?}", String::from_utf8_lossy(body));
    assert_eq!(error_header, Some("misdirected_request"));
    let body = json(body);
    assert_eq!(body["error"]["code"], "misdirected_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message}");
    assert!(message.contains(TIKTOK), "{message}");
}

#[tokio::test]
async fn inner_host_other_than_the_connect_target_is_421_and_not_sent() {
    let (_ca, upstream, proxy) = setup().await;
    let config = tls_config_trusting(&proxy.proxy_ca_pem(), &[b"http/1.1"]);
    let tls = tls_tunnel(proxy.addr, config, TIKTOK).await;
    let mut sender = http1_over(tls).await;
    let req = Request::builder()
        .method("POST")
        .uri("/sell/inventory/v1/inventory_item")
        .header("host", EBAY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"x\":1}")))
        .unwrap();
    let (status, headers, body) = exchange(sender.send_request(req)).await;
    assert_misdirected(
        status,
        headers
            .get("x-signproxy-error")
            .and_then(|v| v.to_str().ok()),
        &body,
        "Host `api.ebay.com`",
    );
    assert_eq!(
        headers.get("content-type").map(|v| v.as_bytes()),
        Some(b"application/json".as_slice())
    );

    // The tunnel still serves its own host afterwards.
    sender.ready().await.expect("connection still usable");
    let req = Request::builder()
        .uri("/authorization/202309/shops")
        .header("host", TIKTOK)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = exchange(sender.send_request(req)).await;
    assert_eq!(status, 200);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "only the matching request went upstream");
    assert_eq!(requests[0].header_str("host"), Some(TIKTOK));
    assert_verified(&requests[0], "tiktok");
}

#[tokio::test]
async fn http2_authority_other_than_the_connect_target_is_421() {
    let (_ca, upstream, proxy) = setup().await;
    let config = tls_config_trusting(&proxy.proxy_ca_pem(), &[b"h2"]);
    let tls = tls_tunnel(proxy.addr, config, TIKTOK).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri(format!(
            "https://{EBAY}/sell/finances/v1/seller_funds_summary"
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = exchange(sender.send_request(req)).await;
    assert_misdirected(
        status,
        headers
            .get("x-signproxy-error")
            .and_then(|v| v.to_str().ok()),
        &body,
        "Host `api.ebay.com`",
    );
    assert!(upstream.requests().is_empty());
    assert_eq!(upstream.connections_accepted(), 0);
}

#[tokio::test]
async fn tls_sni_other_than_the_connect_target_is_421_and_not_sent() {
    let (_ca, upstream, proxy) = setup().await;
    // The leaf names the CONNECT host, so this client must accept a certificate for another name.
    let tls = tls_tunnel(proxy.addr, tls_config_accepting_any_cert(), EBAY).await;
    let mut sender = http1_over(tls).await;
    let req = Request::builder()
        .uri("/authorization/202309/shops")
        .header("host", TIKTOK)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = exchange(sender.send_request(req)).await;
    assert_misdirected(
        status,
        headers
            .get("x-signproxy-error")
            .and_then(|v| v.to_str().ok()),
        &body,
        "TLS SNI `api.ebay.com`",
    );
    assert!(upstream.requests().is_empty());
    assert_eq!(upstream.connections_accepted(), 0);
}

// ---------------------------------------------------------------------------------------------
// Passthrough tunnel and refusal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_host_gets_an_opaque_tunnel_with_tls_end_to_end() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::None);
    // localhost is loopback, and the test upstream is on a high port: both opened explicitly.
    let config = test_config(
        &format!(
            "passthrough = [\"localhost\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\npassthrough_ports = [{}]",
            upstream.port()
        ),
        "",
        &tiktok_profile(),
    );
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    // The tunnel is opaque: the client sees the upstream's own certificate, so it trusts the
    // test CA (and not signproxy's).
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let body = "{\"raw\":  true}";
    let resp = client
        .post(upstream.url("/bucket/key?sign=client-owned&x=%2B"))
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-signproxy-error").is_none());
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["scheme"], "none", "{echo}");

    let r = upstream.last_request();
    assert_eq!(r.tls_sni.as_deref(), Some("localhost"), "TLS end to end");
    assert_eq!(
        r.header_str("host"),
        Some(format!("localhost:{}", upstream.port()).as_str())
    );
    assert_eq!(
        r.path_and_query, "/bucket/key?sign=client-owned&x=%2B",
        "unsigned: nothing added or replaced"
    );
    assert!(r.query_param("timestamp").is_none());
    assert!(r.query_param("app_key").is_none());
    assert_eq!(r.query_params("sign"), vec!["client-owned".to_owned()]);
    assert_eq!(r.header_str("x-custom"), Some("kept"));
    assert_eq!(r.body, body.as_bytes());

    // And a client trusting only signproxy's CA cannot talk to it: nothing is intercepted.
    let wrong = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let err = wrong.get(upstream.url("/y")).send().await.unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.to_ascii_lowercase().contains("certificate"),
        "{chain}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn connect_to_a_host_not_allowed_is_403_before_any_upstream_connection() {
    let (_ca, upstream, proxy) = setup().await;
    // auth.tiktok-shops.com is dialled at the test upstream by connect_to, but no profile serves
    // it and it is not in passthrough: a tunnel would show up as an upstream connection.
    for authority in ["auth.tiktok-shops.com:443", "example.com:443"] {
        let (mut tcp, response) = send_connect(proxy.addr, authority).await;
        assert_eq!(response.status, 403, "CONNECT {authority}");
        assert_eq!(
            response.header("x-signproxy-error"),
            Some("host_not_allowed")
        );
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
        let host = authority.split(':').next().unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{host}`")),
            "{body}"
        );
        // No tunnel: a TLS ClientHello now is not relayed anywhere; the proxy reads it as HTTP.
        let _ = tcp
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, tcp.read_to_end(&mut rest)).await;
        assert!(
            !rest.starts_with(b"\x16"),
            "no TLS answer may come back through a refused CONNECT"
        );
    }
    assert_eq!(upstream.connections_accepted(), 0);
    assert!(upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// A client that does not trust signproxy's CA
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_not_trusting_the_proxy_ca_fails_cleanly_and_the_proxy_keeps_serving() {
    let (ca, upstream, proxy) = setup().await;
    let untrusting = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let url = format!("https://{TIKTOK}/authorization/202309/shops");
    let err = untrusting.get(&url).send().await.unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.to_ascii_lowercase().contains("certificate"),
        "a certificate error: {chain}"
    );
    assert!(upstream.requests().is_empty());

    // The same with a raw rustls client: the handshake fails, nothing panics.
    let tcp = open_tunnel(proxy.addr, &format!("{TIKTOK}:443")).await;
    let config = tls_config_trusting(&ca.ca_pem(), &[b"http/1.1"]);
    let handshake = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(TIKTOK).unwrap(), tcp),
    )
    .await
    .expect("handshake timed out");
    let e = handshake.expect_err("the proxy's leaf must not verify against the test CA");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // A correctly configured client right after is served, on the same proxy.
    let trusting = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let resp = trusting.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_sent_over_tls_to(&r, TIKTOK);
    assert_eq!(upstream.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// curl with HTTPS_PROXY
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn curl_post_json_over_connect_is_signed_and_intact() {
    if !require_curl("curl_post_json_over_connect_is_signed_and_intact") {
        return;
    }
    let (_ca, upstream, proxy) = setup().await;
    let body = "{\"order_status\":  \"UNPAID\" ,\"ü\":1, \"emoji\":\"👋\"}";
    let out = curl_via_proxy(
        proxy.addr,
        &proxy.proxy_ca_path(),
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &format!("https://{TIKTOK}/order/202309/orders/search?page_size=20"),
        ],
    )
    .await;
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert!(out.header("x-signproxy-error").is_none());
    let echo = out.json();
    assert_eq!(echo["signature"]["ok"], true, "{echo}");
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_sent_over_tls_to(&r, TIKTOK);
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.query_param("page_size").as_deref(), Some("20"));

    // And eBay through the same proxy.
    let out = curl_via_proxy(
        proxy.addr,
        &proxy.proxy_ca_path(),
        &[&format!(
            "https://{EBAY}/sell/finances/v1/seller_funds_summary"
        )],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    let r = upstream.last_request();
    assert_verified(&r, "ebay");
    assert_sent_over_tls_to(&r, EBAY);
}

// ---------------------------------------------------------------------------------------------
// The CA files and `signproxy ca`
// ---------------------------------------------------------------------------------------------

fn signproxy(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args(args)
        .env_remove("SIGNPROXY_CONFIG")
        .env_remove("SIGNPROXY_STATE_DIR")
        .output()
        .expect("run signproxy")
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn ca_files_and_the_ca_subcommands() {
    let (_ca, _upstream, proxy) = setup().await;
    let state = proxy.dir.path().join("state");
    let cert_path = state.join("ca-cert.pem");
    let key_path = state.join("ca-key.pem");
    assert_eq!(proxy.proxy_ca_path(), cert_path);
    let cert_pem = std::fs::read_to_string(&cert_path).expect("ca-cert.pem");
    let key_pem = std::fs::read_to_string(&key_path).expect("ca-key.pem");
    assert!(
        cert_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{cert_pem}"
    );
    assert!(key_pem.contains("PRIVATE KEY-----"));
    #[cfg(unix)]
    assert_eq!(mode(&key_path), 0o600, "ca-key.pem is private");

    // `ca cert` prints the certificate the proxy serves from.
    let config_path = proxy.dir.path().join("signproxy.toml");
    let config_arg = config_path.to_str().unwrap();
    let out = signproxy(&["ca", "cert", "--config", config_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), cert_pem);

    // `ca init` refuses to overwrite an existing CA.
    let out = signproxy(&["ca", "init", "--config", config_arg]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_pem);

    // The CA in use is still the one clients trust.
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let resp = client
        .get(format!("https://{TIKTOK}/authorization/202309/shops"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // On a fresh state dir, `ca init` creates both files; `ca cert` then prints that CA.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_state = fresh.path().join("nested").join("state");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let state_toml = state.to_string_lossy().replace('\\', "\\\\");
    assert!(text.contains(&state_toml), "{text}");
    let fresh_text = text.replace(
        &state_toml,
        &fresh_state.to_string_lossy().replace('\\', "\\\\"),
    );
    let fresh_config = fresh.path().join("signproxy.toml");
    std::fs::write(&fresh_config, fresh_text).unwrap();
    let fresh_arg = fresh_config.to_str().unwrap();
    let out = signproxy(&["ca", "init", "--config", fresh_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_cert = std::fs::read_to_string(fresh_state.join("ca-cert.pem")).expect("new cert");
    let new_key = std::fs::read_to_string(fresh_state.join("ca-key.pem")).expect("new key");
    assert!(new_cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(new_key.contains("PRIVATE KEY-----"));
    assert_ne!(new_cert, cert_pem, "a new CA, not a copy");
    #[cfg(unix)]
    assert_eq!(mode(&fresh_state.join("ca-key.pem")), 0o600);
    let out = signproxy(&["ca", "cert", "--config", fresh_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), new_cert);
    // A second init there now fails too.
    let out = signproxy(&["ca", "init", "--config", fresh_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(fresh_state.join("ca-cert.pem")).unwrap(),
        new_cert
    );
}

// ---------------------------------------------------------------------------------------------
// Choosing a profile through CONNECT
// ---------------------------------------------------------------------------------------------

/// Two TikTok profiles for one host and neither named `default`.
async fn setup_two_profiles() -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok("us_key", "us-secret"));
    let profiles = "[tiktok.us]\napp_key = \"us_key\"\napp_secret = \"us-secret\"\n\n\
                    [tiktok.eu]\napp_key = \"eu_key\"\napp_secret = \"eu-secret\"\n";
    let config = test_config("", "", profiles);
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

#[tokio::test]
async fn profile_header_inside_the_tunnel_chooses_among_several_profiles() {
    let (_ca, upstream, proxy) = setup_two_profiles().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let url = format!("https://{TIKTOK}/authorization/202309/shops");
    // The CONNECT carries no choice; each request inside the tunnel names its profile.
    let resp = client
        .get(&url)
        .header("x-signproxy-profile", "us")
        .send()
        .await
        .expect("CONNECT must not be refused when the inner requests choose the profile");
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_eq!(r.query_param("app_key").as_deref(), Some("us_key"));
    assert!(!r.has_header("x-signproxy-profile"));

    upstream.set_verifier(Verifier::tiktok("eu_key", "eu-secret"));
    let resp = client
        .get(&url)
        .header("x-signproxy-profile", "tiktok.eu")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_eq!(r.query_param("app_key").as_deref(), Some("eu_key"));

    // No choice at all: refused inside the tunnel, with the usual error.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "ambiguous_profile");
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn profile_header_on_the_connect_applies_to_requests_inside_the_tunnel() {
    let (_ca, upstream, proxy) = setup_two_profiles().await;
    upstream.set_verifier(Verifier::tiktok("eu_key", "eu-secret"));
    // Like `curl --proxy-header 'x-signproxy-profile: eu'` or Go's ProxyConnectHeader.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        format!(
            "CONNECT {TIKTOK}:443 HTTP/1.1\r\nHost: {TIKTOK}:443\r\nx-signproxy-profile: eu\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let response = read_response(&mut tcp, true).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let config = tls_config_trusting(&proxy.proxy_ca_pem(), &[b"http/1.1"]);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(TIKTOK).unwrap(), tcp)
        .await
        .unwrap();
    let mut sender = http1_over(tls).await;
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .uri("/authorization/202309/shops")
            .header("host", TIKTOK)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = exchange(sender.send_request(req)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let r = upstream.last_request();
        assert_verified(&r, "tiktok");
        assert_eq!(r.query_param("app_key").as_deref(), Some("eu_key"));
    }
    // An inner header still wins over the CONNECT's.
    upstream.set_verifier(Verifier::tiktok("us_key", "us-secret"));
    sender.ready().await.unwrap();
    let req = Request::builder()
        .uri("/authorization/202309/shops")
        .header("host", TIKTOK)
        .header("x-signproxy-profile", "us")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = exchange(sender.send_request(req)).await;
    assert_eq!(status, 200);
    let r = upstream.last_request();
    assert_verified(&r, "tiktok");
    assert_eq!(r.query_param("app_key").as_deref(), Some("us_key"));

    // A CONNECT naming no profile of the host is refused before any tunnel.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        format!(
            "CONNECT {TIKTOK}:443 HTTP/1.1\r\nHost: {TIKTOK}:443\r\nx-signproxy-profile: jp\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let response = read_response(&mut tcp, true).await;
    assert_eq!(response.status, 400);
    assert_eq!(
        response.header("x-signproxy-error"),
        Some("unknown_profile")
    );
}
