//! End to end, the security issue: proxy authentication, the egress guard, marketplace ports and
//! methods, bounded bodies and heads. Every refusal is checked against the error contract (status,
//! `x-signproxy-error`, JSON body), against `/metrics`, and against the upstream: nothing arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::proxy::{
    parse_raw_response, raw_exchange, test_config, tiktok_profile, ProxyHarness, TIKTOK_APP_KEY,
    TIKTOK_APP_SECRET,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "open-api.tiktokglobalshop.com";
const WAIT: Duration = Duration::from_secs(5);

fn tiktok_verifier() -> Verifier {
    Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET)
}

async fn setup_with(proxy_extra: &str, profiles: &str) -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, tiktok_verifier());
    let config = test_config(proxy_extra, "", profiles);
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

/// A raw exchange; the request should say `connection: close` unless the proxy closes anyway.
async fn exchange(proxy: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let raw = raw_exchange(proxy, request.as_bytes(), WAIT).await;
    parse_raw_response(&raw)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The error contract: status, `x-signproxy-error`, JSON `{"error":{"code","message"}}`.
/// Returns the message.
fn assert_refused(
    answer: &(u16, Vec<(String, String)>, Vec<u8>),
    status: u16,
    code: &str,
) -> String {
    let (got, headers, body) = answer;
    let text = String::from_utf8_lossy(body);
    assert_eq!(*got, status, "{headers:?} {text}");
    assert_eq!(header(headers, "x-signproxy-error"), Some(code), "{text}");
    assert_eq!(header(headers, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    assert_eq!(json["error"]["code"], code, "{json}");
    json["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

fn refusals(proxy: &ProxyHarness, code: &str) -> f64 {
    proxy.metric(&format!("signproxy_refusals_total{{code=\"{code}\"}}"))
}

fn assert_nothing_upstream(upstream: &TestUpstream) {
    assert!(
        upstream.requests().is_empty(),
        "nothing may reach the upstream"
    );
    assert_eq!(upstream.connections_accepted(), 0, "not even a connection");
}

/// A TCP listener on 127.0.0.1 that echoes and counts the connections it accepts: a stand-in
/// for any internal service a passthrough request might try to reach.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn listener() -> Listener {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Listener { addr, accepted }
}

impl Listener {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads one response head (up to the blank line), byte by byte so nothing after it is taken.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before a full head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

// ---------------------------------------------------------------------------------------------
// Proxy authentication
// ---------------------------------------------------------------------------------------------

const AUTH: &str = "[[proxy.auth.clients]]\nusername = \"app\"\npassword = \"app-pw-1\"\n\n[[proxy.auth.clients]]\nusername = \"eu\"\npassword = \"eu-pw-2\"\nprofiles = [\"tiktok.eu\"]\n\n[[proxy.auth.clients]]\nusername = \"ebay-only\"\npassword = \"eb-pw-3\"\nprofiles = [\"ebay.default\"]\n";

fn two_shops() -> String {
    let key = common::keys::RFC9421_ED25519_PRIVATE_PEM;
    format!(
        "{}\n[tiktok.eu]\napp_key = \"eu_key\"\napp_secret = \"eu-secret\"\n\n[ebay.default]\nprivate_key = \"\"\"\n{key}\"\"\"\njwe = \"j\"\n",
        tiktok_profile()
    )
}

/// The auth table goes after the profiles: `[[proxy.auth.clients]]` opens a new table.
async fn setup_auth() -> (TestCa, TestUpstream, ProxyHarness) {
    setup_with("", &format!("{}\n{AUTH}", two_shops())).await
}

#[tokio::test]
async fn without_credentials_every_request_and_connect_gets_407() {
    let (_ca, upstream, proxy) = setup_auth().await;
    let url = format!("http://{HOST}/api/products");
    for request in [
        format!("GET {url} HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"),
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
        format!(
            "GET {url} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {}\r\nconnection: close\r\n\r\n",
            basic("app", "wrong")
        ),
        format!(
            "GET {url} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {}\r\nconnection: close\r\n\r\n",
            basic("eu", "app-pw-1")
        ),
        format!(
            "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Bearer app-pw-1\r\n\r\n"
        ),
    ] {
        let answer = exchange(proxy.addr, &request).await;
        let message = assert_refused(&answer, 407, "proxy_auth_required");
        assert_eq!(
            header(&answer.1, "proxy-authenticate"),
            Some("Basic realm=\"signproxy\"")
        );
        assert!(!message.contains("app-pw-1"), "{message}");
    }
    assert_eq!(refusals(&proxy, "proxy_auth_required"), 5.0);
    assert_nothing_upstream(&upstream);
}

#[tokio::test]
async fn credentials_in_the_proxy_url_work_for_both_modes_and_are_never_forwarded() {
    let (ca, upstream, proxy) = setup_auth().await;
    let client = reqwest_builder(&ca.ca_pem())
        .add_root_certificate(
            reqwest::Certificate::from_pem(proxy.proxy_ca_pem().as_bytes()).unwrap(),
        )
        .proxy(reqwest::Proxy::all(format!("http://app:app-pw-1@{}", proxy.addr)).unwrap())
        .build()
        .unwrap();
    for scheme in ["http", "https"] {
        let resp = client
            .get(format!("{scheme}://{HOST}/api/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
        let r = upstream.last_request();
        assert!(r.signature.ok, "{:?}", r.signature.error);
        assert_eq!(r.query_param("app_key").as_deref(), Some(TIKTOK_APP_KEY));
        assert!(!r.has_header("proxy-authorization"), "{scheme}: {r:?}");
    }
    if require_curl("credentials_in_the_proxy_url_work_for_both_modes") {
        let ca_path = proxy.proxy_ca_path();
        let out = curl(&[
            "-sS",
            "--proxy",
            &format!("http://app:app-pw-1@{}", proxy.addr),
            "--cacert",
            ca_path.to_str().unwrap(),
            &format!("https://{HOST}/api/curl"),
        ])
        .await;
        assert_eq!(out.status, 200, "{}", out.stderr);
        assert_eq!(upstream.last_request().path(), "/api/curl");
    }
}

#[tokio::test]
async fn a_client_uses_only_its_profiles_and_its_username_picks_one() {
    let (_ca, upstream, proxy) = setup_auth().await;
    let get = |who: &str, pw: &str, extra: &str| {
        format!(
            "GET http://{HOST}/api/who HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {}\r\n{extra}connection: close\r\n\r\n",
            basic(who, pw)
        )
    };
    // `eu` lists only tiktok.eu: that is the profile, whatever `default` says.
    let answer = exchange(proxy.addr, &get("eu", "eu-pw-2", "")).await;
    assert_eq!(answer.0, 200, "{}", String::from_utf8_lossy(&answer.2));
    assert_eq!(
        upstream.last_request().query_param("app_key").as_deref(),
        Some("eu_key")
    );
    // ... and it cannot ask for another.
    let answer = exchange(
        proxy.addr,
        &get("eu", "eu-pw-2", "x-signproxy-profile: default\r\n"),
    )
    .await;
    assert_refused(&answer, 400, "unknown_profile");
    // A client with no TikTok profile gets no TikTok signature.
    upstream.clear_requests();
    let answer = exchange(proxy.addr, &get("ebay-only", "eb-pw-3", "")).await;
    let message = assert_refused(&answer, 403, "profile_not_allowed");
    assert!(
        message.contains("ebay-only") && message.contains("tiktok.default"),
        "{message}"
    );
    assert!(upstream.requests().is_empty());
    assert_eq!(refusals(&proxy, "profile_not_allowed"), 1.0);
}

#[tokio::test]
async fn a_username_naming_a_profile_selects_it() {
    let auth = "[[proxy.auth.clients]]\nusername = \"eu\"\npassword = \"pw\"\n";
    let (_ca, upstream, proxy) = setup_with("", &format!("{}\n{auth}", two_shops())).await;
    let answer = exchange(
        proxy.addr,
        &format!(
            "GET http://{HOST}/x HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {}\r\nconnection: close\r\n\r\n",
            basic("eu", "pw")
        ),
    )
    .await;
    assert_eq!(answer.0, 200);
    assert_eq!(
        upstream.last_request().query_param("app_key").as_deref(),
        Some("eu_key")
    );
}

#[tokio::test]
async fn an_exposed_listener_without_authentication_is_refused_by_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[proxy]\nlisten = \"0.0.0.0:0\"\n",
            "proxy.listen",
            "allow_unauthenticated",
        ),
        (
            "[admin]\nlisten = \"0.0.0.0:0\"\n",
            "admin.listen",
            "[admin] token",
        ),
    ];
    for (text, key, fix) in cases {
        let path = dir.path().join("exposed.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &path,
            format!(
                "{text}\n[mitm]\nca_cert = {:?}\nca_key = {:?}\n",
                state.join("c.pem"),
                state.join("k.pem")
            ),
        )
        .unwrap();
        for command in ["check", "run"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
                .args([command, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
            assert!(
                stderr.contains(key) && stderr.contains(fix),
                "{command}: {stderr}"
            );
            assert!(
                stderr.contains("127.0.0.1"),
                "names the loopback fix: {stderr}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The egress guard (passthrough)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_to_loopback_by_name_literal_or_connect_to_is_refused_before_any_dial() {
    let target = listener().await;
    let port = target.addr.port();
    let proxy_extra =
        format!("passthrough = [\"localhost\", \"*.test\"]\npassthrough_ports = [{port}]");
    // Names that resolve (through connect_to, as a hostile DNS answer would) to every form of
    // "this machine".
    let aliases = [
        ("internal.test", target.addr.to_string()),
        ("two.test", format!("127.0.0.2:{port}")),
        ("six.test", format!("[::1]:{port}")),
        ("zero.test", format!("0.0.0.0:{port}")),
        ("mapped.test", format!("[::ffff:127.0.0.1]:{port}")),
    ];
    let upstream_extra = aliases
        .iter()
        .map(|(name, to)| format!("\"{name}:{port}\" = \"{to}\"\n"))
        .fold("[upstream.connect_to]\n".to_owned(), |acc, line| {
            acc + &line
        });
    let ca = TestCa::new();
    let config = test_config(&proxy_extra, "", &tiktok_profile())
        .replace("connect_to = @CONNECT_TO@\n", "")
        + &upstream_extra;
    let proxy = ProxyHarness::start(&config, &ca, None).await;

    let names = [
        "localhost",
        "internal.test",
        "two.test",
        "six.test",
        "zero.test",
        "mapped.test",
    ];
    for host in names {
        for request in [
            format!("GET http://{host}:{port}/admin HTTP/1.1\r\nHost: {host}:{port}\r\nconnection: close\r\n\r\n"),
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"),
        ] {
            let answer = exchange(proxy.addr, &request).await;
            let message = assert_refused(&answer, 403, "destination_not_allowed");
            let class = if host == "zero.test" { "unspecified" } else { "loopback" };
            assert!(message.contains(class), "{host}: {message}");
            assert!(message.contains("allow_networks"), "{message}");
        }
    }
    for literal in [
        "127.0.0.1",
        "[::1]",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "127.1",
    ] {
        let answer = exchange(
            proxy.addr,
            &format!(
                "GET http://{literal}:{port}/ HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"
            ),
        )
        .await;
        let message = assert_refused(&answer, 403, "destination_not_allowed");
        assert!(message.contains("allow_networks"), "{literal}: {message}");
        let answer = exchange(
            proxy.addr,
            &format!("CONNECT {literal}:{port} HTTP/1.1\r\nHost: {literal}:{port}\r\n\r\n"),
        )
        .await;
        assert_refused(&answer, 403, "destination_not_allowed");
    }
    let link_local = exchange(
        proxy.addr,
        "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(assert_refused(&link_local, 403, "destination_not_allowed").contains("link-local"));
    assert_eq!(target.accepted(), 0, "nothing was dialled");
    assert!(refusals(&proxy, "destination_not_allowed") >= 25.0);
    assert!(proxy.metric("signproxy_egress_denied_total{class=\"loopback\"}") >= 10.0);
}

#[tokio::test]
async fn allow_networks_opens_a_range_but_never_the_proxy_itself() {
    let target = listener().await;
    let port = target.addr.port();
    let ca = TestCa::new();
    // Ports: the target's, and (after start) the proxy's own, which no range can open.
    let proxy_extra = format!(
        "passthrough = [\"localhost\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\npassthrough_ports = [{port}]"
    );
    let proxy =
        ProxyHarness::start(&test_config(&proxy_extra, "", &tiktok_profile()), &ca, None).await;
    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    tunnel
        .write_all(
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nping")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("ping") {
        let n = tokio::time::timeout(WAIT, tunnel.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(target.accepted(), 1);
}

#[tokio::test]
async fn the_proxy_never_dials_itself_even_inside_an_allowed_range() {
    let ca = TestCa::new();
    let config = test_config(
        "passthrough = [\"localhost\"]\nallow_networks = [\"0.0.0.0/0\", \"::/0\"]\npassthrough_ports = [@PROXY_PORT@]",
        "",
        &tiktok_profile(),
    );
    let proxy = ProxyHarness::start(&config, &ca, None).await;
    let own = proxy.addr.port();
    for request in [
        format!("CONNECT 127.0.0.1:{own} HTTP/1.1\r\nHost: 127.0.0.1:{own}\r\n\r\n"),
        format!("CONNECT localhost:{own} HTTP/1.1\r\nHost: localhost:{own}\r\n\r\n"),
        format!(
            "GET http://localhost:{own}/ HTTP/1.1\r\nHost: localhost\r\nconnection: close\r\n\r\n"
        ),
    ] {
        let answer = exchange(proxy.addr, &request).await;
        let message = assert_refused(&answer, 403, "destination_not_allowed");
        assert!(message.contains("own"), "{message}");
    }
    assert!(proxy.metric("signproxy_egress_denied_total{class=\"proxy_itself\"}") >= 3.0);
    // Each refused CONNECT is its own connection: the loop never opened a second one.
    assert_eq!(proxy.metric("signproxy_open_tunnels"), 0.0);
}

#[tokio::test]
async fn passthrough_ports_limit_connect_and_absolute_form_and_host_follows_the_uri() {
    let plain = TestUpstream::start_plain(Verifier::None);
    let port = plain.port();
    let ca = TestCa::new();
    let closed = listener().await;
    let proxy_extra =
        "passthrough = [\"localhost\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]";
    let proxy =
        ProxyHarness::start(&test_config(proxy_extra, "", &tiktok_profile()), &ca, None).await;
    for request in [
        format!(
            "CONNECT localhost:{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            closed.addr.port()
        ),
        "CONNECT localhost:22 HTTP/1.1\r\nHost: localhost:22\r\n\r\n".to_owned(),
        "CONNECT localhost:80 HTTP/1.1\r\nHost: localhost:80\r\n\r\n".to_owned(),
        format!(
            "GET http://localhost:{}/ HTTP/1.1\r\nHost: localhost\r\nconnection: close\r\n\r\n",
            closed.addr.port()
        ),
    ] {
        let answer = exchange(proxy.addr, &request).await;
        let message = assert_refused(&answer, 403, "destination_not_allowed");
        assert!(message.contains("passthrough_ports"), "{message}");
    }
    assert_eq!(closed.accepted(), 0);
    drop(proxy);

    // Opened: the request goes through with the URI's authority as Host, whatever the client
    // sent, and without any Proxy-* header; a redirect comes back to the client unfollowed.
    let proxy_extra = format!("{proxy_extra}\npassthrough_ports = [{port}]");
    let proxy =
        ProxyHarness::start(&test_config(&proxy_extra, "", &tiktok_profile()), &ca, None).await;
    plain.set_behaviour(
        Behaviour::respond(302, "text/plain", b"moved")
            .with_header("location", "http://169.254.169.254/"),
    );
    let answer = exchange(
        proxy.addr,
        &format!("GET http://localhost:{port}/vhost HTTP/1.1\r\nHost: admin.internal\r\nProxy-Connection: keep-alive\r\nProxy-Status: x\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.0, 302);
    assert_eq!(
        header(&answer.1, "location"),
        Some("http://169.254.169.254/")
    );
    let seen = plain.requests();
    assert_eq!(seen.len(), 1, "the redirect was relayed, not followed");
    assert_eq!(
        seen[0].header_str("host"),
        Some(format!("localhost:{port}").as_str())
    );
    assert!(!seen[0].has_header("proxy-connection") && !seen[0].has_header("proxy-status"));
}

// ---------------------------------------------------------------------------------------------
// Marketplace hosts: their port only, trailing dots, methods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_marketplace_host_is_signed_only_on_its_port() {
    let (_ca, upstream, proxy) = setup_with("", &tiktok_profile()).await;
    for request in [
        format!("GET http://{HOST}:19443/api HTTP/1.1\r\nHost: {HOST}:19443\r\nconnection: close\r\n\r\n"),
        format!("GET https://{HOST}:8443/api HTTP/1.1\r\nHost: {HOST}:8443\r\nconnection: close\r\n\r\n"),
        format!("CONNECT {HOST}:22 HTTP/1.1\r\nHost: {HOST}:22\r\n\r\n"),
    ] {
        let answer = exchange(proxy.addr, &request).await;
        let message = assert_refused(&answer, 403, "host_not_allowed");
        assert!(message.contains("connect_to"), "{message}");
    }
    assert_eq!(refusals(&proxy, "host_not_allowed"), 3.0);
    assert_nothing_upstream(&upstream);
}

#[tokio::test]
async fn a_trailing_dot_takes_the_same_route_and_connect_to() {
    let (ca, upstream, proxy) = setup_with("", &tiktok_profile()).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}./api/dot?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert!(r.signature.ok, "{:?}", r.signature.error);
    assert_eq!(r.header_str("host"), Some(HOST));
    assert_eq!(r.tls_sni.as_deref(), Some(HOST));
}

#[tokio::test]
async fn only_api_methods_are_signed_and_head_gets_no_token() {
    let profile = format!("{}access_token = \"TTP_static_token\"\n", tiktok_profile());
    let (_ca, upstream, proxy) = setup_with("", &profile).await;
    for method in ["TRACE", "PROPFIND", "CONNECTX"] {
        let answer = exchange(
            proxy.addr,
            &format!(
                "{method} http://{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_refused(&answer, 405, "method_not_allowed");
        assert!(header(&answer.1, "allow").is_some_and(|a| a.contains("GET")));
    }
    assert_nothing_upstream(&upstream);
    assert_eq!(refusals(&proxy, "method_not_allowed"), 3.0);

    for method in ["HEAD", "OPTIONS"] {
        let answer = exchange(
            proxy.addr,
            &format!("{method} http://{HOST}/api/h HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(answer.0, 200, "{method}");
        let r = upstream.last_request();
        assert_eq!(r.method, method);
        assert!(
            r.signature.ok,
            "{method} is signed: {:?}",
            r.signature.error
        );
        assert!(
            !r.has_header("x-tts-access-token"),
            "{method} carries no token"
        );
    }
    let answer = exchange(
        proxy.addr,
        &format!("GET http://{HOST}/api/g HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.0, 200);
    assert_eq!(
        upstream.last_request().header_str("x-tts-access-token"),
        Some("TTP_static_token")
    );
}

// ---------------------------------------------------------------------------------------------
// Bounded resources and malformed heads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_body_gets_408_and_nothing_goes_upstream() {
    let (_ca, upstream, proxy) = setup_with("body_read_timeout_ms = 300", &tiktok_profile()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST http://{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\ncontent-length: 10\r\n\r\nab"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        // One more byte after a while: the deadline covers the whole body, not each read.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = stream.write_all(b"c").await;
        stream.read_to_end(&mut raw).await
    })
    .await;
    assert!(read.is_ok(), "the proxy closed the connection");
    let answer = parse_raw_response(&raw);
    assert_refused(&answer, 408, "body_timeout");
    assert_eq!(header(&answer.1, "connection"), Some("close"));
    assert_nothing_upstream(&upstream);
    assert_eq!(refusals(&proxy, "body_timeout"), 1.0);
}

#[tokio::test]
async fn the_buffer_budget_refuses_with_503_and_loses_nothing() {
    let (ca, upstream, proxy) = setup_with(
        "max_body_bytes = 4096\nmax_buffered_bytes = 6144",
        &tiktok_profile(),
    )
    .await;
    // The first upload reserves 4000 bytes and stalls halfway.
    let body = "x".repeat(4000);
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(format!("POST http://{HOST}/api/first HTTP/1.1\r\nHost: {HOST}\r\ncontent-type: text/plain\r\ncontent-length: 4000\r\nconnection: close\r\n\r\n{}", &body[..2000]).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A second one does not fit in what is left: 503 at once, nothing upstream.
    let second = exchange(
        proxy.addr,
        &format!("POST http://{HOST}/api/second HTTP/1.1\r\nHost: {HOST}\r\ncontent-length: 4000\r\nconnection: close\r\n\r\n{body}"),
    )
    .await;
    let message = assert_refused(&second, 503, "busy");
    assert!(message.contains("max_buffered_bytes"), "{message}");
    assert!(upstream.requests().is_empty());
    // A chunked upload grows its reservation as it goes, and is refused the same way.
    let chunked = exchange(
        proxy.addr,
        &format!("POST http://{HOST}/api/chunked HTTP/1.1\r\nHost: {HOST}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nfa0\r\n{}\r\n0\r\n\r\n", "y".repeat(4000)),
    )
    .await;
    assert_refused(&chunked, 503, "busy");
    assert!(upstream.requests().is_empty());

    // The first upload finishes and arrives whole.
    first.write_all(&body.as_bytes()[2000..]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, first.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_raw_response(&raw).0, 200);
    let r = upstream.last_request();
    assert_eq!(r.body, body.as_bytes());
    assert!(r.signature.ok);
    // ... and its reservation was returned: the next upload fits.
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(format!("http://{HOST}/api/third"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(refusals(&proxy, "busy"), 2.0);
}

#[tokio::test]
async fn oversized_heads_duplicate_hosts_userinfo_and_connect_bodies_are_refused() {
    let (_ca, upstream, proxy) = setup_with("max_header_bytes = 2048", &tiktok_profile()).await;
    let big = "v".repeat(3000);
    let cases = [
        (format!("GET http://{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\nx-big: {big}\r\nconnection: close\r\n\r\n"), 431, "headers_too_large"),
        (format!("GET http://{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.example\r\nconnection: close\r\n\r\n"), 400, "bad_request"),
        (format!("GET http://{HOST}/api HTTP/1.1\r\nHost: user@{HOST}\r\nconnection: close\r\n\r\n"), 400, "bad_request"),
        (format!("GET http://user:pw@{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"), 400, "bad_request"),
        (format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\ncontent-length: 5\r\n\r\nhello"), 400, "bad_request"),
    ];
    for (request, status, code) in cases {
        let answer = exchange(proxy.addr, &request).await;
        assert_refused(&answer, status, code);
    }
    // Inside a tunnel (plain HTTP after CONNECT) the same checks hold.
    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    tunnel
        .write_all(format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\nGET /api HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let inner = &raw[text.find("\r\n\r\n").unwrap() + 4..];
    assert_refused(&parse_raw_response(inner), 400, "bad_request");
    assert_nothing_upstream(&upstream);
}

#[tokio::test]
async fn a_passthrough_tunnel_holds_its_connection_slot() {
    let target = listener().await;
    let port = target.addr.port();
    let ca = TestCa::new();
    let proxy_extra = format!(
        "max_connections = 2\npassthrough = [\"localhost\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\npassthrough_ports = [{port}]"
    );
    let proxy =
        ProxyHarness::start(&test_config(&proxy_extra, "", &tiktok_profile()), &ca, None).await;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut t = TcpStream::connect(proxy.addr).await.unwrap();
        t.write_all(
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 64];
        let n = tokio::time::timeout(WAIT, t.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        tunnels.push(t);
    }
    // The tasks that answered CONNECT have returned; the tunnels still hold both slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.metric("signproxy_open_connections"), 2.0);
    let third = exchange(
        proxy.addr,
        &format!("GET http://{HOST}/api HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_refused(&third, 503, "too_many_connections");
    drop(tunnels);
    let mut freed = false;
    for _ in 0..50 {
        if proxy.metric("signproxy_open_connections") == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "closing the tunnels frees their slots");
}

// ---------------------------------------------------------------------------------------------
// README's Security examples
// ---------------------------------------------------------------------------------------------

#[test]
fn readme_security_block_is_valid_config() {
    let blocks = common::readme::fenced_blocks(&common::readme::readme(), "toml");
    let block = blocks
        .iter()
        .find(|b| b.contains("allow_networks = [\"10.20.0.0/16\"]"))
        .expect("the Security section's toml block");
    let config = signproxy::config::Config::from_toml_str(block, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert_eq!(config.proxy.passthrough_ports, vec![443, 8443]);
    assert_eq!(config.proxy.allow_networks[0].to_string(), "10.20.0.0/16");
}

#[tokio::test]
async fn readme_proxy_authentication_example_works() {
    if !require_curl("readme_proxy_authentication_example_works") {
        return;
    }
    let password = "readme-proxy-pw";
    let auth = format!("[[proxy.auth.clients]]\nusername = \"app\"\npassword = \"{password}\"\n");
    let (_ca, upstream, proxy) = setup_with("", &format!("{}\n{auth}", tiktok_profile())).await;
    let blocks = common::readme::fenced_blocks(&common::readme::readme(), "sh");
    let block = blocks
        .iter()
        .find(|b| b.contains("SIGNPROXY_PROXY_PASSWORD@signproxy:8080"))
        .expect("the proxy authentication example");
    let proxy_url = format!("http://app:{password}@{}", proxy.addr);
    let line = block
        .lines()
        .find(|l| l.starts_with("curl "))
        .expect("a curl line")
        .replace("\"$HTTP_PROXY\"", &proxy_url);
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let out = curl(&words).await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert!(upstream.last_request().signature.ok);
    // The same command without the credentials is refused.
    let bare = line.replace(&format!("app:{password}@"), "");
    let words: Vec<&str> = bare.split_whitespace().skip(1).collect();
    assert_eq!(curl(&words).await.status, 407);
}

// ---------------------------------------------------------------------------------------------
// Review follow-ups: host spellings, TLS on port 80, restricted clients in tunnels, reloads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_trailing_dot_is_dropped_and_empty_labels_are_refused() {
    let (_ca, upstream, proxy) = setup_with("", &tiktok_profile()).await;
    let answer = exchange(
        proxy.addr,
        &format!(
            "GET http://{HOST}../api/dots HTTP/1.1\r\nHost: {HOST}..\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.0, 200, "{}", String::from_utf8_lossy(&answer.2));
    let r = upstream.last_request();
    assert_eq!(
        r.header_str("host"),
        Some(HOST),
        "through connect_to, as {HOST}"
    );
    assert!(r.signature.ok);
    upstream.clear_requests();
    let answer = exchange(
        proxy.addr,
        "GET http://open-api..tiktokglobalshop.com/api HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_refused(&answer, 400, "bad_request");
    // TLS to port 80 is not the upgrade of plain http: refused.
    let answer = exchange(
        proxy.addr,
        &format!(
            "GET https://{HOST}:80/api HTTP/1.1\r\nHost: {HOST}:80\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_refused(&answer, 403, "host_not_allowed");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_restricted_client_cannot_choose_another_profile_on_connect_or_keep_rights_after_a_reload(
) {
    let (ca, upstream, proxy) = setup_auth().await;
    let credentials = format!("Proxy-Authorization: Basic {}\r\n", basic("eu", "eu-pw-2"));
    let answer = exchange(
        proxy.addr,
        &format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n{credentials}x-signproxy-profile: default\r\n\r\n"),
    )
    .await;
    assert_refused(&answer, 400, "unknown_profile");

    // A tunnel opened by `eu`, then the config narrows `eu` to no profile: the next request inside
    // the same tunnel is refused.
    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    tunnel
        .write_all(format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n{credentials}\r\nGET /api/one HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200"));
    let answer = read_head(&mut tunnel).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let length: usize = answer
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upstream.last_request().path(), "/api/one");
    let narrowed = AUTH.replace("profiles = [\"tiktok.eu\"]", "profiles = []");
    let config = test_config("", "", &format!("{}\n{narrowed}", two_shops()));
    proxy.reload(&config);
    tunnel
        .write_all(
            format!("GET /api/two HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_refused(&parse_raw_response(&rest), 403, "profile_not_allowed");
    assert_eq!(upstream.requests().len(), 1, "/api/two never went upstream");

    // A client whose password changed is refused inside a tunnel opened with the old one.
    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    let app = format!(
        "Proxy-Authorization: Basic {}\r\n",
        basic("app", "app-pw-1")
    );
    tunnel
        .write_all(
            format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n{app}\r\n").as_bytes(),
        )
        .await
        .unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200"));
    let rotated = narrowed.replace("app-pw-1", "app-pw-rotated");
    proxy.reload(&test_config("", "", &format!("{}\n{rotated}", two_shops())));
    tunnel
        .write_all(format!("GET /api/three HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_refused(&parse_raw_response(&rest), 407, "proxy_auth_required");
    assert_eq!(upstream.requests().len(), 1);
    let _ = ca;
}
