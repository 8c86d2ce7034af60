//! End to end, the sandbox: the shipped example config with `[sandbox] enabled`, real clients
//! through both proxy modes, managed tokens through expiry, and `sandbox serve` judging
//! requests signed outside the proxy (tampered ones get the marketplace's code). Every upstream
//! name is pointed at a real TLS server that must see nothing: the sandbox answers in its place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::proxy::ProxyHarness;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use signproxy::clock::{Clock as _, ManualClock, SharedClock, Timestamp};

const TIKTOK: &str = "open-api.tiktokglobalshop.com";
const EBAY: &str = "apiz.ebay.com";
const SANDBOX_HEADER: &str = "x-signproxy-sandbox";

/// The example config as shipped, with the sandbox on, state in the test's folder and every
/// upstream name dialled at the test upstream (which must never be reached).
fn example_in_sandbox(ttl_secs: u64) -> String {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/signproxy.example.toml"),
    )
    .unwrap();
    assert!(
        example.contains("enabled = false "),
        "the example has a [sandbox] switch"
    );
    assert!(example.contains("token_ttl_secs = 7200 "));
    example
        .replace("[proxy]\n", "[proxy]\nstate_dir = \"@STATE@\"\n")
        .replace(
            "connect_to = {}",
            "connect_to = @CONNECT_TO@\nca_file = \"@CA_FILE@\"",
        )
        .replace("enabled = false ", "enabled = true ")
        .replace(
            "token_ttl_secs = 7200 ",
            &format!("token_ttl_secs = {ttl_secs} "),
        )
}

struct World {
    network: TestUpstream,
    proxy: ProxyHarness,
}

impl World {
    async fn start(ttl_secs: u64, clock: SharedClock) -> World {
        let ca = TestCa::new();
        let network = TestUpstream::start(&ca, Verifier::None);
        let proxy = ProxyHarness::start_with_clock(
            &example_in_sandbox(ttl_secs),
            &ca,
            Some(&network),
            clock,
        )
        .await;
        World { network, proxy }
    }

    fn client(&self) -> reqwest::Client {
        reqwest_via_proxy(self.proxy.addr, &self.proxy.proxy_ca_pem())
    }

    fn refreshes(&self, profile: &str) -> f64 {
        self.proxy.metric(&format!(
            "signproxy_token_refreshes_total{{profile=\"{profile}\",outcome=\"success\"}}"
        ))
    }

    fn assert_nothing_left_the_machine(&self) {
        assert_eq!(
            self.network.connections_accepted(),
            0,
            "the sandbox dialled out"
        );
        assert!(
            !self.proxy.dir.path().join("state/tokens.json").exists(),
            "sandbox tokens must never be persisted"
        );
    }
}

/// Sends one request and returns the status, the sandbox header and the JSON answer.
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&'static [u8]>,
) -> (u16, Option<String>, Value) {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let marker = resp
        .headers()
        .get(SANDBOX_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, marker, json)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn the_example_config_gets_verified_answers_for_both_marketplaces_in_both_modes() {
    let world = World::start(7200, signproxy::clock::system()).await;
    let client = world.client();
    // Spaced JSON, as Python's json.dumps writes it: the bytes sent are the bytes signed.
    let body: &'static [u8] = br#"{"order_status": "UNPAID", "page": 1}"#;
    for scheme in ["http", "https"] {
        let (status, marker, shops) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{TIKTOK}/authorization/202309/shops"),
            None,
        )
        .await;
        assert_eq!((status, marker.as_deref()), (200, Some("1")), "{shops}");
        assert_eq!(shops["code"], 0, "{shops}");
        assert_eq!(shops["data"]["shops"][0]["cipher"], "ROW_sandboxcipher0001");
        let echo = &shops["data"]["sandbox"];
        assert_eq!(echo["verified"], true);
        assert_eq!(echo["headers"]["x-tts-access-token"], "(redacted)");

        let (status, _, orders) = call(
            &client,
            reqwest::Method::POST,
            &format!("{scheme}://{TIKTOK}/order/202309/orders/search?page_size=20"),
            Some(body),
        )
        .await;
        assert_eq!(
            (status, orders["code"].as_u64()),
            (200, Some(0)),
            "{orders}"
        );
        assert_eq!(orders["data"]["orders"][0]["status"], "UNPAID");
        assert_eq!(orders["data"]["sandbox"]["body_sha256"], sha256_hex(body));
        assert_eq!(orders["data"]["sandbox"]["body_bytes"], body.len());

        let (status, _, funds) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{EBAY}/sell/finances/v1/seller_funds_summary"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{funds}");
        assert_eq!(funds["totalFunds"]["currency"], "GBP");
        assert_eq!(funds["sandbox"]["headers"]["authorization"], "(redacted)");

        let (status, _, refund) = call(
            &client,
            reqwest::Method::POST,
            &format!("{scheme}://{EBAY}/sell/fulfillment/v1/order/12-34567-89012/issue_refund"),
            Some(body),
        )
        .await;
        assert_eq!(status, 200, "{refund}");
        assert_eq!(refund["sandbox"]["body_sha256"], sha256_hex(body));
        let input = refund["sandbox"]["headers"]["signature-input"]
            .as_str()
            .unwrap();
        assert!(input.starts_with(r#"sig1=("content-digest" "#), "{input}");
    }
    // One grant per profile served every request.
    assert_eq!(world.refreshes("tiktok.default"), 1.0);
    assert_eq!(world.refreshes("ebay.default"), 1.0);
    world.assert_nothing_left_the_machine();
}

#[tokio::test]
async fn curl_through_both_modes_gets_the_sandboxs_verdict() {
    if !require_curl("curl_through_both_modes_gets_the_sandboxs_verdict") {
        return;
    }
    let world = World::start(7200, signproxy::clock::system()).await;
    for url in [
        format!("http://{TIKTOK}/authorization/202309/shops"),
        format!("https://{TIKTOK}/authorization/202309/shops"),
    ] {
        let out = curl_via_proxy(world.proxy.addr, &world.proxy.proxy_ca_path(), &[&url]).await;
        assert_eq!(out.status, 200, "{}", out.stderr);
        assert_eq!(out.json()["data"]["sandbox"]["verified"], true);
    }
    world.assert_nothing_left_the_machine();
}

#[tokio::test]
async fn managed_tokens_refresh_ahead_of_expiry_and_on_an_expired_answer() {
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let world = World::start(600, clock.clone()).await;
    let client = world.client();
    let tiktok = format!("http://{TIKTOK}/authorization/202309/shops");
    let ebay = format!("http://{EBAY}/sell/finances/v1/seller_funds_summary");
    let ok = |answer: &(u16, Option<String>, Value)| {
        assert_eq!(answer.0, 200, "{}", answer.2);
    };
    ok(&call(&client, reqwest::Method::GET, &tiktok, None).await);
    ok(&call(&client, reqwest::Method::GET, &ebay, None).await);
    assert_eq!(
        (
            world.refreshes("tiktok.default"),
            world.refreshes("ebay.default")
        ),
        (1.0, 1.0)
    );

    // Past the 600 s lifetime: the proxy knows, and refreshes before sending. TikTok's refresh
    // token rotates and the sandbox honours each once, so this also proves the rotated one is
    // the one kept.
    clock.advance_secs(601);
    ok(&call(&client, reqwest::Method::GET, &tiktok, None).await);
    ok(&call(&client, reqwest::Method::GET, &ebay, None).await);
    assert_eq!(
        (
            world.refreshes("tiktok.default"),
            world.refreshes("ebay.default")
        ),
        (2.0, 2.0)
    );

    // The marketplace kills the tokens early: TikTok answers 105002 and eBay 401/1001; the proxy
    // refreshes once and retries, and the client sees only the success.
    let expire = format!("http://{TIKTOK}/signproxy-sandbox/expire-tokens");
    let (status, _, answer) = call(&client, reqwest::Method::POST, &expire, None).await;
    assert_eq!(status, 200, "{answer}");
    ok(&call(&client, reqwest::Method::GET, &tiktok, None).await);
    ok(&call(&client, reqwest::Method::GET, &ebay, None).await);
    assert_eq!(
        (
            world.refreshes("tiktok.default"),
            world.refreshes("ebay.default")
        ),
        (3.0, 3.0)
    );
    world.assert_nothing_left_the_machine();
}

const SHOPEE: &str = "partner.shopeemobile.com";

/// Shopee in the sandbox: its own stand-in verifies the Shop and Public signatures in both proxy
/// modes and answers in Shopee's envelope; its refresh tokens are single use, so a second
/// refresh past the token lifetime proves the rotated one was kept; killed tokens get
/// `invalid_acceess_token`, which the proxy answers with one refresh and a retry.
#[tokio::test]
async fn shopee_gets_verified_answers_in_both_modes_with_single_use_refresh_tokens() {
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let ca = TestCa::new();
    let network = TestUpstream::start(&ca, Verifier::None);
    // The shipped example's [shopee.default]: one shop, a demo partner key and refresh token.
    let config = example_in_sandbox(600);
    assert!(config.contains("[shopee.default]"));
    let shared: SharedClock = clock.clone();
    let proxy = ProxyHarness::start_with_clock(&config, &ca, Some(&network), shared).await;
    let world = World { network, proxy };
    let client = world.client();
    for scheme in ["http", "https"] {
        let (status, marker, info) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{SHOPEE}/api/v2/shop/get_shop_info"),
            None,
        )
        .await;
        assert_eq!((status, marker.as_deref()), (200, Some("1")), "{info}");
        assert_eq!(info["error"], "", "{info}");
        assert_eq!(info["response"]["shop_name"], "Sandbox Shop");
        let echo = &info["response"]["sandbox"];
        assert_eq!(echo["verified"], true);
        assert!(
            echo["query"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p[0] == "access_token" && p[1] == "(redacted)"),
            "{echo}"
        );
        let body: &'static [u8] = br#"{"item_id": 800000001, "name": "x"}"#;
        let (status, _, update) = call(
            &client,
            reqwest::Method::POST,
            &format!("{scheme}://{SHOPEE}/api/v2/product/update_item"),
            Some(body),
        )
        .await;
        assert_eq!(
            (status, update["error"].as_str()),
            (200, Some("")),
            "{update}"
        );
        assert_eq!(
            update["response"]["sandbox"]["body_sha256"],
            sha256_hex(body)
        );
        let (status, _, public) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{SHOPEE}/api/v2/public/get_shops_by_partner"),
            None,
        )
        .await;
        assert_eq!(
            (status, public["error"].as_str()),
            (200, Some("")),
            "{public}"
        );
    }
    assert_eq!(world.refreshes("shopee.default"), 1.0);

    clock.advance_secs(601);
    let info = format!("http://{SHOPEE}/api/v2/shop/get_shop_info");
    let (status, _, answer) = call(&client, reqwest::Method::GET, &info, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(world.refreshes("shopee.default"), 2.0);

    let expire = format!("http://{TIKTOK}/signproxy-sandbox/expire-tokens");
    let (status, _, answer) = call(&client, reqwest::Method::POST, &expire, None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = call(&client, reqwest::Method::GET, &info, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(world.refreshes("shopee.default"), 3.0);
    world.assert_nothing_left_the_machine();
}

#[tokio::test]
async fn a_real_token_file_is_left_exactly_as_it_was() {
    let ca = TestCa::new();
    let network = TestUpstream::start(&ca, Verifier::None);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let real = br#"{"version":1,"profiles":{"tiktok.default":{"seed":"x","refresh_token":"REAL-ROTATED-TOKEN"}}}"#;
    std::fs::write(state.join("tokens.json"), real).unwrap();
    let config = example_in_sandbox(7200).replace("@STATE@", &state.to_string_lossy());
    let proxy = ProxyHarness::start(&config, &ca, Some(&network)).await;
    // Plain http: the proxy's CA (in this test's own state folder) is not needed.
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let (status, _, answer) = call(
        &client,
        reqwest::Method::GET,
        &format!("http://{TIKTOK}/authorization/202309/shops"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(std::fs::read(state.join("tokens.json")).unwrap(), real);
    assert_eq!(network.connections_accepted(), 0);
}

/// `sandbox serve` on port 0 with the example config's profiles, and a client that signs by
/// itself (here: the library's signers, then tampered with) talking to it directly over TLS.
struct Served {
    addr: std::net::SocketAddr,
    config: Arc<signproxy::config::Config>,
    ca_pem: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let text = example_in_sandbox(7200)
            .replace("@STATE@", &dir.path().join("state").to_string_lossy())
            .replace("@CONNECT_TO@", "{}")
            .replace("ca_file = \"@CA_FILE@\"", "");
        let config = Arc::new(signproxy::config::Config::from_toml_str(&text, dir.path()).unwrap());
        let ca = signproxy::ca::CertificateAuthority::load_or_create(&config.mitm).unwrap();
        let ca_pem = ca.cert_pem().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sandbox = Arc::new(signproxy::sandbox::Sandbox::new(
            Arc::clone(&config),
            signproxy::clock::system(),
            Arc::new(signproxy::marketplace::stand_in::TokenBook::new()),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(signproxy::sandbox::serve(
            sandbox,
            Arc::new(ca),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Served {
            addr,
            config,
            ca_pem,
            _dir: dir,
            _stop: stop,
        }
    }

    fn client(&self) -> reqwest::Client {
        reqwest_direct(
            &self.ca_pem,
            &[
                (TIKTOK, self.addr),
                (EBAY, self.addr),
                ("api.ebay.com", self.addr),
            ],
        )
    }

    fn profile(&self, kind: &str) -> &signproxy::config::Profile {
        self.config
            .profiles
            .iter()
            .find(|p| p.kind == kind)
            .unwrap()
    }

    /// The head the profile's signer makes for this request as of `now`, with a token from
    /// elsewhere (which the sandbox cannot judge, and lets pass).
    fn signed(
        &self,
        kind: &str,
        method: http::Method,
        host: &str,
        path_and_query: &str,
        body: &[u8],
        now: u64,
    ) -> signproxy::signing::RequestHead {
        let mut headers = http::HeaderMap::new();
        if !body.is_empty() {
            headers.insert("content-type", "application/json".parse().unwrap());
        }
        let head = signproxy::request::prepare_head(
            method,
            host.to_owned(),
            path_and_query.to_owned(),
            headers,
            body.len(),
        )
        .unwrap();
        let token = signproxy::secret::Secret::new("my-token");
        self.profile(kind)
            .signer
            .sign(signproxy::marketplace::SignInput {
                head: &head,
                body,
                access_token: Some(&token),
                now: Timestamp::from_secs(now),
            })
            .unwrap()
    }

    async fn send(
        &self,
        head: &signproxy::signing::RequestHead,
        body: &'static [u8],
    ) -> (u16, Value) {
        let url = format!("https://{}{}", head.authority, head.path_and_query);
        let mut req = self.client().request(head.method.clone(), url).body(body);
        for (name, value) in &head.headers {
            if name != "host" && name != "content-length" {
                req = req.header(name.as_str(), value.as_bytes());
            }
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.headers()[SANDBOX_HEADER], "1");
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
        )
    }
}

fn now() -> u64 {
    signproxy::clock::SystemClock.now().secs()
}

#[tokio::test]
async fn sandbox_serve_verifies_tiktok_requests_signed_elsewhere_and_names_tampering_by_code() {
    let served = Served::start().await;
    let body: &'static [u8] = br#"{"order_status":"UNPAID"}"#;
    let path = "/order/202309/orders/search?page_size=20";
    let signed = |at: u64| served.signed("tiktok", http::Method::POST, TIKTOK, path, body, at);
    let code = |answer: &(u16, Value)| answer.1["code"].as_u64().unwrap();

    // One clock reading: a second signature from `now() - 1` read later could fall on the same
    // second as the first and be no forgery at all.
    let at = now();
    let good = signed(at);
    let answer = served.send(&good, body).await;
    assert_eq!((answer.0, code(&answer)), (200, 0), "{}", answer.1);

    // The body re-serialized after signing (spaces added, as json.dumps does).
    let answer = served.send(&good, br#"{"order_status": "UNPAID"}"#).await;
    assert_eq!((answer.0, code(&answer)), (401, 106001), "{}", answer.1);
    // A parameter added after signing.
    let mut extra = good.clone();
    extra.path_and_query.push_str("&page_token=abc");
    assert_eq!(code(&served.send(&extra, body).await), 106001);
    // Upper-case hex.
    let mut upper = good.clone();
    let sign = upper
        .path_and_query
        .split("sign=")
        .nth(1)
        .unwrap()
        .to_owned();
    upper.path_and_query = upper.path_and_query.replace(&sign, &sign.to_uppercase());
    assert_eq!(code(&served.send(&upper, body).await), 106001);
    // Stale: signed six minutes ago, correctly.
    let answer = served.send(&signed(now() - 360), body).await;
    assert_eq!(code(&answer), 36009004, "{}", answer.1);
    assert!(answer.1["message"].as_str().unwrap().contains("old"));
    // Milliseconds.
    let mut millis = good.clone();
    let ts = millis.path_and_query.split("timestamp=").nth(1).unwrap()[..10].to_owned();
    millis.path_and_query = millis.path_and_query.replace(&ts, &format!("{ts}000"));
    let answer = served.send(&millis, body).await;
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("milliseconds"),
        "{}",
        answer.1
    );
    // No access token.
    let mut tokenless = good.clone();
    tokenless.headers.remove("x-tts-access-token");
    assert_eq!(code(&served.send(&tokenless, body).await), 36009004);
}

#[tokio::test]
async fn sandbox_serve_verifies_ebay_requests_signed_elsewhere_and_names_tampering_by_error_id() {
    let served = Served::start().await;
    let body: &'static [u8] = br#"{"reasonForRefund":"BUYER_CANCEL"}"#;
    let path = "/sell/fulfillment/v1/order/12-34567-89012/issue_refund";
    let signed = |at: u64| served.signed("ebay", http::Method::POST, EBAY, path, body, at);
    let error_id = |answer: &(u16, Value)| answer.1["errors"][0]["errorId"].as_u64().unwrap_or(0);

    // One clock reading: a second signature from `now() - 1` read later could fall on the same
    // second as the first and be no forgery at all.
    let at = now();
    let good = signed(at);
    let answer = served.send(&good, body).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["sandbox"]["verified"], true);

    let answer = served.send(&good, br#"{"reasonForRefund":"OTHER"}"#).await;
    assert_eq!((answer.0, error_id(&answer)), (403, 215105), "{}", answer.1);
    let mut forged = good.clone();
    let other = signed(at - 1);
    forged
        .headers
        .insert("signature", other.headers["signature"].clone());
    assert_eq!(error_id(&served.send(&forged, body).await), 215120);
    let mut unsigned = good.clone();
    unsigned.headers.remove("signature");
    assert_eq!(error_id(&served.send(&unsigned, body).await), 215111);
    let mut wrong_key = good.clone();
    wrong_key
        .headers
        .insert("x-ebay-signature-key", "another-apps-jwe".parse().unwrap());
    assert_eq!(error_id(&served.send(&wrong_key, body).await), 215116);
    assert_eq!(
        error_id(&served.send(&signed(at - 400), body).await),
        215114
    );
    let mut tokenless = good.clone();
    tokenless.headers.remove("authorization");
    let answer = served.send(&tokenless, body).await;
    assert_eq!((answer.0, error_id(&answer)), (401, 1002));
}

#[tokio::test]
async fn sandbox_serve_grants_tokens_and_refuses_the_app_secret_of_another_app() {
    let served = Served::start().await;
    let client = served.client();
    let refresh = |secret: &str, token: &str| {
        format!("https://{TIKTOK}/api/v2/token/refresh?app_key=29a39d&app_secret={secret}&refresh_token={token}&grant_type=refresh_token")
    };
    let grant: Value = client
        .get(refresh("e59af819cc", "demo-refresh-token"))
        .send()
        .await
        .map(response_json)
        .unwrap()
        .await;
    assert_eq!(grant["code"], 0, "{grant}");
    let rotated = grant["data"]["refresh_token"].as_str().unwrap();
    assert!(grant["data"]["access_token_expire_in"].as_u64().unwrap() > now());
    let again: Value = client
        .get(refresh("e59af819cc", "demo-refresh-token"))
        .send()
        .await
        .map(response_json)
        .unwrap()
        .await;
    assert_eq!(again["code"], 36004005, "spent: {again}");
    let wrong: Value = client
        .get(refresh("not-the-secret", rotated))
        .send()
        .await
        .map(response_json)
        .unwrap()
        .await;
    assert_eq!(wrong["code"], 36009004, "{wrong}");
}

/// Lazada and AliExpress in the sandbox: the IOP stand-in verifies GETs and `/sync` forms
/// through both proxy modes, grants and rotates tokens (refreshed ahead of expiry), and answers
/// `IllegalAccessToken` once tokens are killed, which the proxy refreshes and retries.
#[tokio::test]
async fn iop_marketplaces_get_verified_answers_and_rotating_tokens() {
    const LAZADA: &str = "api.lazada.sg";
    const ALIEXPRESS: &str = "api-sg.aliexpress.com";
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let ca = TestCa::new();
    let network = TestUpstream::start(&ca, Verifier::None);
    let config = common::proxy::test_config(
        "",
        "",
        "[sandbox]\nenabled = true\ntoken_ttl_secs = 600\n\n\
         [lazada.default]\napp_key = \"100001\"\napp_secret = \"lz-demo-secret\"\nrefresh_token = \"lz-demo-rt\"\n\n\
         [aliexpress.default]\napp_key = \"500002\"\napp_secret = \"ae-demo-secret\"\nrefresh_token = \"ae-demo-rt\"\n\n\
         [tiktok.default]\napp_key = \"29a39d\"\napp_secret = \"e59af819cc\"\n",
    );
    let shared: SharedClock = clock.clone();
    let proxy = ProxyHarness::start_with_clock(&config, &ca, Some(&network), shared).await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let form: &'static [u8] = b"method=aliexpress.trade.seller.orderlist.get&page_size=20";
    let both = |scheme: &'static str| {
        let client = client.clone();
        async move {
            let (status, marker, orders) = call(
                &client,
                reqwest::Method::GET,
                &format!("{scheme}://{LAZADA}/rest/orders/get?limit=10"),
                None,
            )
            .await;
            assert_eq!((status, marker.as_deref()), (200, Some("1")), "{orders}");
            assert_eq!(orders["code"], "0", "{orders}");
            let echo = &orders["data"]["sandbox"];
            assert_eq!(echo["verified"], true);
            assert!(
                echo["query"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p[0] == "access_token" && p[1] == "(redacted)"),
                "{echo}"
            );
            let resp = client
                .post(format!("{scheme}://{ALIEXPRESS}/sync"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let sync: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(sync["code"], "0", "{sync}");
            assert_eq!(sync["data"]["sandbox"]["body_sha256"], sha256_hex(form));
        }
    };
    let refreshes = |profile: &str| {
        proxy.metric(&format!(
            "signproxy_token_refreshes_total{{profile=\"{profile}\",outcome=\"success\"}}"
        ))
    };
    both("http").await;
    both("https").await;
    assert_eq!(
        (refreshes("lazada.default"), refreshes("aliexpress.default")),
        (1.0, 1.0)
    );

    // Past the lifetime: refreshed before sending, with the rotated (single-use) refresh token.
    clock.advance_secs(601);
    both("https").await;
    assert_eq!(
        (refreshes("lazada.default"), refreshes("aliexpress.default")),
        (2.0, 2.0)
    );

    // Tokens killed early: IllegalAccessToken, one refresh, one retry; the client sees success.
    // The control is reached through the TikTok host: the IOP signer refuses paths that are not
    // gateway API paths (`/rest/<api>`, `/sync`) before the sandbox sees them.
    let expire = format!("http://{TIKTOK}/signproxy-sandbox/expire-tokens");
    let (status, _, answer) = call(&client, reqwest::Method::POST, &expire, None).await;
    assert_eq!(status, 200, "{answer}");
    both("http").await;
    assert_eq!(
        (refreshes("lazada.default"), refreshes("aliexpress.default")),
        (3.0, 3.0)
    );
    assert_eq!(network.connections_accepted(), 0, "the sandbox dialled out");
}

#[tokio::test]
async fn amazon_gets_lwa_tokens_and_rdts_from_the_stand_in_in_both_modes() {
    const AMAZON: &str = "sellingpartnerapi-na.amazon.com";
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let world = World::start(3600, clock.clone()).await;
    assert!(example_in_sandbox(3600).contains("[amazon.default]"));
    let client = world.client();
    for scheme in ["http", "https"] {
        let (status, marker, answer) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{AMAZON}/sellers/v1/marketplaceParticipations"),
            None,
        )
        .await;
        assert_eq!((status, marker.as_deref()), (200, Some("1")), "{answer}");
        assert_eq!(answer["payload"][0]["marketplace"]["id"], "ATVPDKIKX0DER");
        let echo = &answer["sandbox"];
        assert_eq!(echo["verified"], true);
        assert_eq!(echo["headers"]["x-amz-access-token"], "(redacted)");
        // A restricted operation: the stand-in accepts only an RDT for this exact path.
        let (status, _, answer) = call(
            &client,
            reqwest::Method::GET,
            &format!("{scheme}://{AMAZON}/orders/v0/orders/902-1845936-5435065/address"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["payload"]["AmazonOrderId"], "902-1845936-5435065");
    }
    assert_eq!(world.refreshes("amazon.default"), 1.0);

    // Every token the stand-in issued is now expired, RDTs included: the proxy re-mints (and,
    // told by the mint that its LWA token expired, refreshes it first), then retries once.
    let expire = format!("http://{AMAZON}/signproxy-sandbox/expire-tokens");
    let (status, _, answer) = call(&client, reqwest::Method::POST, &expire, None).await;
    assert_eq!(status, 200, "{answer}");
    let address = format!("http://{AMAZON}/orders/v0/orders/902-1845936-5435065/address");
    let (status, _, answer) = call(&client, reqwest::Method::GET, &address, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(world.refreshes("amazon.default"), 2.0);
    world.assert_nothing_left_the_machine();
}

/// `signproxy ebay create-key` under the sandbox: the stand-in makes the key (nothing leaves the
/// machine), and once the printed lines are in the profile its requests verify against the
/// stand-in, for both ciphers.
#[tokio::test]
async fn create_key_under_the_sandbox_makes_a_key_its_stand_in_then_verifies() {
    for cipher in ["ed25519", "rsa"] {
        let ca = TestCa::new();
        let network = TestUpstream::start(&ca, Verifier::None);
        let dir = tempfile::tempdir().unwrap();
        let ca_path = ca.write_ca_pem(dir.path());
        let config_path = dir.path().join("signproxy.toml");
        let base = format!(
            "[proxy]\nstate_dir = {:?}\n\n{}\n[sandbox]\nenabled = true\n\n\
             [ebay.default]\nclient_id = \"SandboxApp-PRD-1\"\nclient_secret = \"sandbox-secret-77\"\n",
            dir.path().join("state").to_string_lossy(),
            network.upstream_toml_section(&ca_path),
        );
        std::fs::write(&config_path, &base).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args([
                "ebay",
                "create-key",
                "--profile",
                "default",
                "--cipher",
                cipher,
            ])
            .arg("--config")
            .arg(&config_path)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cipher}: {stdout}\n{stderr}");
        let lines = common::printed_profile_lines(&stdout);
        assert_eq!(lines.lines().count(), 3, "{stdout}");
        assert!(!stdout.contains("sandbox-secret-77"), "{stdout}");

        // The proxy keeps its own state (and CA) in the harness's folder; the key files stay
        // where create-key wrote them.
        let state_line = format!(
            "state_dir = {:?}",
            dir.path().join("state").to_string_lossy()
        );
        let template = format!("{base}{lines}").replace(&state_line, "state_dir = \"@STATE@\"");
        let proxy = ProxyHarness::start(&template, &ca, Some(&network)).await;
        let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
        let (status, marker, body) = call(
            &client,
            reqwest::Method::GET,
            "https://api.ebay.com/sell/finances/v1/seller_funds_summary",
            None,
        )
        .await;
        assert_eq!(status, 200, "{cipher}: {body}");
        assert!(marker.is_some());
        assert_eq!(body["sandbox"]["verified"], true, "{cipher}: {body}");
        assert_eq!(network.connections_accepted(), 0, "the sandbox dialled out");
        proxy.stop().await;
    }
}
