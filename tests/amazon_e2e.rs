//! End to end, Amazon SP-API: real clients (reqwest) → the real proxy (absolute-form and CONNECT
//! interception) → a TLS test upstream playing LWA (`api.amazon.com`), the Tokens API and the
//! regional API host. The upstream's rules are written here, apart from the proxy's code: it
//! accepts only LWA tokens it granted and that have not expired by the test clock, and on a
//! restricted path only an RDT it minted for exactly that method and path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::proxy::{test_config, ProxyHarness};
use common::*;
use signproxy::clock::{Clock as _, ManualClock, SharedClock, Timestamp};

const HOST: &str = "sellingpartnerapi-na.amazon.com";
const CLIENT_ID: &str = "amzn1.application-oa2-client.e2e0123456789";
const CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.e2e-secret|x";
const REFRESH_TOKEN: &str = "Atzr|IwEBIE2E+refresh/token=";
const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";
const LIFETIME: u64 = 3600;

/// The test's own list of restricted paths (GET): `*` is one segment.
const RESTRICTED: &[&str] = &["/orders/v0/orders", "/orders/v0/orders/*/address"];

fn is_restricted(method: &str, path: &str) -> bool {
    method == "GET"
        && RESTRICTED.iter().any(|pattern| {
            let want: Vec<&str> = pattern.split('/').collect();
            let got: Vec<&str> = path.split('/').collect();
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| *w == *g || (*w == "*" && !g.is_empty()))
        })
}

/// What was minted, as the upstream recorded it.
#[derive(Debug, Clone)]
struct Mint {
    method: String,
    path: String,
    data_elements: Option<Vec<String>>,
    lwa: String,
}

#[derive(Default)]
struct Sim {
    /// LWA token → expires at (test clock seconds).
    lwa: HashMap<String, u64>,
    /// RDT → (method, path, expires at).
    rdt: HashMap<String, (String, String, u64)>,
    grants: usize,
    mints: Vec<Mint>,
    /// Answer every mint with this (status, body) instead.
    mint_failure: Option<(u16, String)>,
}

struct Amazon {
    ca: TestCa,
    upstream: TestUpstream,
    sim: Arc<Mutex<Sim>>,
    clock: Arc<ManualClock>,
}

fn errors(details: &str) -> Behaviour {
    Behaviour::json(
        403,
        &serde_json::json!({"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":details}]})
            .to_string(),
    )
}

impl Amazon {
    fn start() -> Amazon {
        let ca = TestCa::new();
        let upstream = TestUpstream::start(&ca, Verifier::None);
        let sim = Arc::new(Mutex::new(Sim::default()));
        let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
        let (s, c) = (Arc::clone(&sim), Arc::clone(&clock));
        upstream.set_handler(move |r| answer(&mut s.lock().unwrap(), c.now().secs(), r));
        Amazon {
            ca,
            upstream,
            sim,
            clock,
        }
    }

    async fn proxy(&self, extra: &str) -> ProxyHarness {
        self.proxy_with(&format!("refresh_token = \"{REFRESH_TOKEN}\"\n{extra}"))
            .await
    }

    async fn proxy_with(&self, grant: &str) -> ProxyHarness {
        let profile = format!(
            "[amazon.default]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n{grant}"
        );
        let shared: SharedClock = self.clock.clone();
        ProxyHarness::start_with_clock(
            &test_config("", "", &profile),
            &self.ca,
            Some(&self.upstream),
            shared,
        )
        .await
    }

    fn sim(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().unwrap()
    }

    /// The API calls that reached the regional host (not LWA, not the Tokens API).
    fn api_calls(&self) -> Vec<Received> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|r| r.host_name().as_deref() == Some(HOST) && r.path() != RDT_PATH)
            .collect()
    }
}

/// The upstream's rules (see the module comment).
fn answer(sim: &mut Sim, now: u64, r: &Received) -> Option<Behaviour> {
    let host = r.host_name().unwrap_or_default();
    if host == "api.amazon.com" {
        let form: HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str);
        assert_eq!(
            r.header_str("content-type"),
            Some("application/x-www-form-urlencoded;charset=UTF-8")
        );
        let grantless = field("grant_type") == Some("client_credentials")
            && field("scope") == Some("sellingpartnerapi::notifications")
            && field("refresh_token").is_none();
        let seller = field("grant_type") == Some("refresh_token")
            && field("refresh_token") == Some(REFRESH_TOKEN);
        if r.path() != "/auth/o2/token"
            || !(grantless || seller)
            || field("client_id") != Some(CLIENT_ID)
            || field("client_secret") != Some(CLIENT_SECRET)
        {
            return Some(Behaviour::json(
                400,
                r#"{"error":"invalid_grant","error_description":"The request has an invalid grant parameter"}"#,
            ));
        }
        sim.grants += 1;
        let token = match grantless {
            true => format!("Atc|grantless-{}", sim.grants),
            false => format!("Atza|lwa-{}", sim.grants),
        };
        sim.lwa.insert(token.clone(), now + LIFETIME);
        return Some(Behaviour::json(
            200,
            &serde_json::json!({"access_token": token, "refresh_token": REFRESH_TOKEN, "token_type": "bearer", "expires_in": LIFETIME}).to_string(),
        ));
    }
    let Some(token) = r.header_str("x-amz-access-token").map(str::to_owned) else {
        return Some(errors("Access token is missing in the request header."));
    };
    if r.has_header("x-signproxy-data-elements") {
        return Some(Behaviour::json(
            400,
            r#"{"errors":[{"code":"InvalidInput","message":"the proxy's own header arrived"}]}"#,
        ));
    }
    if r.method == "POST" && r.path() == RDT_PATH {
        match sim.lwa.get(&token) {
            Some(&exp) if now < exp => {}
            Some(_) => return Some(errors("The access token you provided has expired.")),
            None => {
                return Some(errors(
                    "The access token you provided is revoked, malformed or invalid.",
                ))
            }
        }
        if let Some((status, body)) = &sim.mint_failure {
            return Some(Behaviour::json(*status, body));
        }
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let resources = body["restrictedResources"].as_array().unwrap();
        assert_eq!(resources.len(), 1, "{body}");
        let method = resources[0]["method"].as_str().unwrap().to_owned();
        let path = resources[0]["path"].as_str().unwrap().to_owned();
        assert!(!path.contains('?') && path.starts_with('/'), "{path}");
        let data_elements = resources[0]["dataElements"].as_array().map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
        sim.mints.push(Mint {
            method: method.clone(),
            path: path.clone(),
            data_elements,
            lwa: token.clone(),
        });
        let rdt = format!("Atz.sprdt|rdt-{}", sim.mints.len());
        sim.rdt.insert(rdt.clone(), (method, path, now + LIFETIME));
        return Some(Behaviour::json(
            200,
            &serde_json::json!({"restrictedDataToken": rdt, "expiresIn": LIFETIME}).to_string(),
        ));
    }
    if is_restricted(&r.method, r.path()) {
        return match sim.rdt.get(&token) {
            Some((m, p, exp)) if *m == r.method && p == r.path() => {
                if now < *exp {
                    None
                } else {
                    Some(errors("The access token you provided has expired."))
                }
            }
            // A plain LWA token, or an RDT for another method or path.
            _ => Some(errors("")),
        };
    }
    match sim.lwa.get(&token) {
        Some(&exp) if now < exp => None,
        Some(_) => Some(errors("The access token you provided has expired.")),
        None => Some(errors(
            "The access token you provided is revoked, malformed or invalid.",
        )),
    }
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn absolute_form_gets_the_lwa_token_and_sigv4_leftovers_are_removed() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    let resp = get(
        &client,
        &format!("http://{HOST}/sellers/v1/marketplaceParticipations"),
        &[
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20240101/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123"),
            ("x-amz-security-token", "FwoGZXIvYXdzEJr//sts"),
            ("x-amz-date", "20240101T000000Z"),
            ("user-agent", "python-sp-api/1.0 (Language=Python)"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let calls = amazon.api_calls();
    assert_eq!(calls.len(), 1);
    let r = &calls[0];
    assert_eq!(r.tls_sni.as_deref(), Some(HOST));
    assert_eq!(r.header_str("x-amz-access-token"), Some("Atza|lwa-1"));
    assert!(!r.has_header("authorization"));
    assert!(!r.has_header("x-amz-security-token"));
    assert_eq!(r.header_str("x-amz-date"), Some("20240101T000000Z"));
    assert_eq!(
        r.header_str("user-agent"),
        Some("python-sp-api/1.0 (Language=Python)")
    );
    assert_eq!(amazon.sim().grants, 1);
    assert!(
        amazon.sim().mints.is_empty(),
        "no RDT for an unrestricted path"
    );
    // The LWA token is persisted like the other marketplaces' tokens.
    let stored = std::fs::read_to_string(proxy.dir.path().join("state/tokens.json")).unwrap();
    assert!(
        stored.contains("amazon.default") && stored.contains("Atza|lwa-1"),
        "{stored}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_restricted_operation_over_connect_gets_an_rdt_for_its_exact_path() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let path = "/orders/v0/orders/902-3159896-1390916/address";
    let resp = get(&client, &format!("https://{HOST}{path}?x=1"), &[]).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let calls = amazon.api_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header_str("x-amz-access-token"),
        Some("Atz.sprdt|rdt-1")
    );
    assert_eq!(calls[0].path_and_query, format!("{path}?x=1"));
    let mints = amazon.sim().mints.clone();
    assert_eq!(mints.len(), 1);
    assert_eq!(mints[0].method, "GET");
    assert_eq!(mints[0].path, path, "the specific path, no query");
    assert_eq!(
        mints[0].data_elements, None,
        "getOrderAddress takes no data elements"
    );
    assert_eq!(
        mints[0].lwa, "Atza|lwa-1",
        "minted with the seller's LWA token"
    );

    // getOrders: the spec's default data elements, then the app's choice by header.
    let resp = get(
        &client,
        &format!("https://{HOST}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER"),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = get(
        &client,
        &format!("https://{HOST}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER"),
        &[("x-signproxy-data-elements", "shippingAddress")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mints = amazon.sim().mints.clone();
    assert_eq!(mints.len(), 3, "different data elements, different RDT");
    assert_eq!(
        mints[1].data_elements,
        Some(vec!["buyerInfo".to_owned(), "shippingAddress".to_owned()])
    );
    assert_eq!(
        mints[2].data_elements,
        Some(vec!["shippingAddress".to_owned()])
    );
    let calls = amazon.api_calls();
    assert!(calls
        .iter()
        .all(|r| !r.has_header("x-signproxy-data-elements")));
    assert_eq!(amazon.sim().grants, 1, "one LWA token serves every mint");
    let stored = std::fs::read_to_string(proxy.dir.path().join("state/tokens.json")).unwrap();
    assert!(
        !stored.contains("Atz.sprdt"),
        "RDTs live in memory only: {stored}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn rdts_are_reused_until_five_minutes_before_expiry_then_minted_again() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    let url = format!("http://{HOST}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER");
    // Concurrent first requests share one mint.
    let mut firsts = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        firsts.spawn(async move { get(&client, &url, &[]).await.status() });
    }
    while let Some(status) = firsts.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(amazon.sim().mints.len(), 1, "one mint in flight per key");
    amazon.upstream.clear_requests();
    assert_eq!(get(&client, &url, &[]).await.status(), 200);
    amazon.clock.advance_secs(600);
    assert_eq!(get(&client, &url, &[]).await.status(), 200);
    assert_eq!(amazon.sim().mints.len(), 1, "cached for its lifetime");
    // Another order's path is another RDT.
    let other = format!("http://{HOST}/orders/v0/orders/1-2-3/address");
    assert_eq!(get(&client, &other, &[]).await.status(), 200);
    assert_eq!(amazon.sim().mints.len(), 2);
    // 4 min 50 s left of the first RDT: too little to use, a new one is minted.
    amazon.clock.advance_secs(LIFETIME - 600 - 290);
    assert_eq!(get(&client, &url, &[]).await.status(), 200);
    assert_eq!(amazon.sim().mints.len(), 3);
    let calls = amazon.api_calls();
    let tokens: Vec<&str> = calls
        .iter()
        .map(|r| r.header_str("x-amz-access-token").unwrap())
        .collect();
    assert_eq!(
        tokens,
        [
            "Atz.sprdt|rdt-1",
            "Atz.sprdt|rdt-1",
            "Atz.sprdt|rdt-2",
            "Atz.sprdt|rdt-3"
        ]
    );
    // The same operation in another region: minted by, and cached for, that host.
    let eu = "sellingpartnerapi-eu.amazon.com";
    let url = format!("http://{eu}/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9");
    assert_eq!(get(&client, &url, &[]).await.status(), 200);
    assert_eq!(
        amazon.sim().mints.len(),
        4,
        "an RDT serves the host that minted it"
    );
    let minted_by = amazon
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path() == RDT_PATH)
        .map(|r| r.host_name().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(minted_by.last().map(String::as_str), Some(eu));
    proxy.stop().await;
}

#[tokio::test]
async fn an_expired_lwa_token_or_rdt_is_renewed_once_and_the_request_retried_once() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    let plain = format!("http://{HOST}/sellers/v1/marketplaceParticipations");
    assert_eq!(get(&client, &plain, &[]).await.status(), 200);
    // Amazon ends the token early (the proxy still thinks it has an hour).
    amazon.sim().lwa.insert("Atza|lwa-1".into(), 0);
    let resp = get(&client, &plain, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(amazon.sim().grants, 2);
    let tokens: Vec<String> = amazon
        .api_calls()
        .iter()
        .map(|r| r.header_str("x-amz-access-token").unwrap().to_owned())
        .collect();
    assert_eq!(tokens, ["Atza|lwa-1", "Atza|lwa-1", "Atza|lwa-2"]);

    // The same for an RDT.
    let orders = format!("http://{HOST}/orders/v0/orders");
    assert_eq!(get(&client, &orders, &[]).await.status(), 200);
    amazon.sim().rdt.get_mut("Atz.sprdt|rdt-1").unwrap().2 = 0;
    assert_eq!(get(&client, &orders, &[]).await.status(), 200);
    assert_eq!(amazon.sim().mints.len(), 2);

    // Still expired after the refresh: the answer goes back, no third try.
    amazon.upstream.clear_requests();
    let always = Arc::clone(&amazon.sim);
    amazon.upstream.set_handler(move |r| {
        let mut sim = always.lock().unwrap();
        if r.host_name().as_deref() == Some(HOST)
            && r.path() == "/sellers/v1/marketplaceParticipations"
        {
            return Some(errors("The access token you provided has expired."));
        }
        answer(&mut sim, 0, r)
    });
    let resp = get(&client, &plain, &[]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(amazon.api_calls().len(), 2, "one retry only");
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_mint_is_a_503_naming_amazons_answer_and_nothing_reaches_the_api() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    amazon.sim().mint_failure = Some((
        400,
        r#"{"errors":[{"code":"InvalidInput","message":"Application does not have access to one or more requested data elements: [buyerTaxInformation]","details":""}]}"#.to_owned(),
    ));
    let resp = get(
        &client,
        &format!("https://{HOST}/orders/v0/orders/1-2-3"),
        &[("x-signproxy-data-elements", "buyerTaxInformation")],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-signproxy-error"], "token_unavailable");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("InvalidInput") && text.contains("buyerTaxInformation"),
        "{text}"
    );
    assert!(!text.contains("Atza|"), "no token in the answer: {text}");
    assert!(amazon.api_calls().is_empty(), "nothing was sent to the API");
    let mints = || {
        amazon
            .upstream
            .requests()
            .iter()
            .filter(|r| r.path() == RDT_PATH)
            .count()
    };
    assert_eq!(mints(), 1);

    // The same resource again at once: refused from memory, Amazon not asked (its rate limit).
    let again = |order: &'static str| {
        let client = client.clone();
        async move {
            get(
                &client,
                &format!("https://{HOST}/orders/v0/orders/{order}"),
                &[("x-signproxy-data-elements", "buyerTaxInformation")],
            )
            .await
        }
    };
    let resp = again("1-2-3").await;
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("InvalidInput") && text.contains("not asked again"),
        "{text}"
    );
    assert_eq!(mints(), 1, "no mint within the cooldown");
    // After the cooldown, Amazon is asked again.
    amazon.clock.advance_secs(11);
    assert_eq!(again("1-2-3").await.status(), 503);
    assert_eq!(mints(), 2);

    // A path no real operation has (an order id of 3,000 characters) is never minted for.
    let long = format!("https://{HOST}/orders/v0/orders/{}", "9".repeat(3000));
    let resp = get(&client, &long, &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("exceed"));
    assert_eq!(mints(), 2);
    assert!(amazon.api_calls().is_empty(), "nothing was sent to the API");
    proxy.stop().await;
}

#[tokio::test]
async fn an_apps_own_token_is_left_alone_and_unrestricted_paths_never_mint() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    amazon.sim().rdt.insert(
        "Atz.sprdt|apps-own".into(),
        ("GET".into(), "/orders/v0/orders".into(), u64::MAX),
    );
    let resp = get(
        &client,
        &format!("http://{HOST}/orders/v0/orders"),
        &[("x-amz-access-token", "Atz.sprdt|apps-own")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        amazon.api_calls()[0].header_str("x-amz-access-token"),
        Some("Atz.sprdt|apps-own")
    );
    assert_eq!(amazon.sim().grants, 0);
    assert!(amazon.sim().mints.is_empty());
    // Orders v2026-01-01 needs no RDT.
    let resp = get(
        &client,
        &format!("http://{HOST}/orders/2026-01-01/orders"),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(amazon.sim().mints.is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn the_test_upstream_refuses_a_plain_lwa_token_on_a_restricted_path() {
    // The upstream's rules hold on their own: without the proxy, an LWA token gets Amazon's 403.
    let amazon = Amazon::start();
    amazon.sim().lwa.insert("Atza|direct".into(), u64::MAX);
    let client = reqwest_direct(&amazon.ca.ca_pem(), &[(HOST, amazon.upstream.addr())]);
    let resp = client
        .get(format!(
            "https://{HOST}:{}/orders/v0/orders",
            amazon.upstream.port()
        ))
        .header("x-amz-access-token", "Atza|direct")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = response_json(resp).await;
    assert_eq!(body["errors"][0]["code"], "Unauthorized");
    let resp = client
        .get(format!(
            "https://{HOST}:{}/sellers/v1/marketplaceParticipations",
            amazon.upstream.port()
        ))
        .header("x-amz-access-token", "Atza|direct")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn the_readme_amazon_profiles_are_valid_config() {
    let blocks = common::readme::fenced_blocks(&common::readme::readme(), "toml amazon");
    assert_eq!(blocks.len(), 1);
    std::env::set_var("AMAZON_CLIENT_SECRET", "readme-amazon-secret");
    std::env::set_var("AMAZON_REFRESH_TOKEN", "Atzr|readme-amazon-rt");
    let dir = tempfile::tempdir().unwrap();
    let config = signproxy::config::Config::from_toml_str(&blocks[0], dir.path())
        .unwrap_or_else(|e| panic!("README Amazon block: {e}"));
    let names: Vec<String> = config.profiles.iter().map(|p| p.qualified_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"amazon.grantless".to_owned()), "{names:?}");
}

#[test]
fn doctor_names_a_plain_lwa_token_on_a_restricted_path_and_the_wrong_region() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args([
            "doctor",
            "--config",
            "config/signproxy.example.toml",
            "GET",
            "https://sellingpartnerapi-na.amazon.com/orders/v0/orders/902-1/address?MarketplaceIds=A1PA6795UKMFR9",
            "-H",
            "x-amz-access-token: Atza|doctor-secret-token",
            "-H",
            "authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature=00",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plain LWA token on a restricted operation"),
        "{text}"
    );
    assert!(text.contains("sellingpartnerapi-eu.amazon.com"), "{text}");
    assert!(text.contains("SigV4"), "{text}");
    assert!(!text.contains("doctor-secret-token"), "{text}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args([
            "doctor",
            "--config",
            "config/signproxy.example.toml",
            "GET",
            "https://sellingpartnerapi-na.amazon.com/sellers/v1/marketplaceParticipations",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no x-amz-access-token"), "{text}");
}

#[tokio::test]
async fn a_malformed_data_elements_header_is_a_400_before_any_token_is_fetched() {
    let amazon = Amazon::start();
    let proxy = amazon.proxy("").await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    let resp = get(
        &client,
        &format!("http://{HOST}/orders/v0/orders"),
        &[("x-signproxy-data-elements", "buyer info")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "bad_request");
    assert!(resp.text().await.unwrap().contains("buyer info"));
    assert!(
        amazon.upstream.requests().is_empty(),
        "no LWA grant, no mint, no API call"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_grantless_profile_gets_client_credentials_tokens_and_never_mints() {
    let amazon = Amazon::start();
    let proxy = amazon
        .proxy_with("scopes = [\"sellingpartnerapi::notifications\"]\n")
        .await;
    let client = reqwest_via_proxy(proxy.addr, &amazon.ca.ca_pem());
    let resp = get(
        &client,
        &format!("http://{HOST}/notifications/v1/destinations"),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let calls = amazon.api_calls();
    assert_eq!(
        calls[0].header_str("x-amz-access-token"),
        Some("Atc|grantless-1")
    );
    // A restricted path through a grantless profile: no RDT can be had, Amazon's 403 comes back.
    let resp = get(&client, &format!("http://{HOST}/orders/v0/orders"), &[]).await;
    assert_eq!(resp.status(), 403);
    assert!(amazon.sim().mints.is_empty());
    assert_eq!(amazon.sim().grants, 1);
    proxy.stop().await;
}
