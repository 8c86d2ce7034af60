//! Test harness shared by the integration tests.
//!
//! - `ca`: `TestCa`, a CA made in the test (rcgen) that issues server leaves.
//! - `upstream`: `TestUpstream`, a real TLS (or plain) HTTP/1.1 server on 127.0.0.1 that records
//!   every request, checks its signature and answers with a JSON echo (or a set `Behaviour`).
//! - `verify`: `Verifier`, `verify_tiktok`, `verify_ebay`: signature checks written
//!   independently of signproxy's signers.
//! - `verify_shopee`: the Shopee Open Platform v2 verifier, apart from the signer.
//! - `verify_iop`: the same for the IOP gateway (Lazada, AliExpress), from the spec.
//! - `keys`: eBay test keys (RFC 9421 Ed25519, a fixed RSA key, fresh Ed25519) and PEM helpers.
//! - `client`: reqwest and curl pointed at the proxy.
//! - `readme`: README.md's fenced blocks, for tests that run its examples.
//!
//! Not every test uses every helper.
#![allow(dead_code, unused_imports)]

pub mod ca;
pub mod client;
pub mod keys;
pub mod proxy;
pub mod readme;
pub mod received;
pub mod upstream;
pub mod verify;
pub mod verify_iop;
pub mod verify_shopee;

pub use ca::{ring_provider, TestCa};
pub use client::{
    curl, curl_available, curl_via_proxy, require_curl, reqwest_builder, reqwest_direct,
    reqwest_via_proxy, response_json, send_json, CurlOutput,
};
pub use keys::{EbayPublicKey, EbayTestKey};
pub use received::{Received, Verdict};
pub use upstream::{
    echo_json, gate, pattern_bytes, Behaviour, Gate, StreamSpec, TestUpstream, UpstreamOptions,
    UPSTREAM_NAMES,
};
pub use verify::{content_digest, verify_ebay, verify_tiktok, Verifier};

/// The profile lines `signproxy ebay create-key` tells the user to add, as printed.
pub fn printed_profile_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| {
            ["private_key = ", "jwe = ", "key_expires_at = "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}
