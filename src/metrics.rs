//! Prometheus metrics: what the proxy counts, and their text exposition for `/metrics`.
//!
//! One [`Metrics`] lives for the whole process (it survives config reloads). Labels are bounded:
//! `host` is only ever a host some profile or passthrough pattern serves, never an arbitrary
//! name a client typed.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub profile: String,
    pub host: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub profile: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl EncodeLabelValue for Outcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        let text = match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub profile: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// Every metric signproxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<ProfileLabels, Histogram>,
    signing_failures: Family<ReasonLabels, Counter>,
    token_refreshes: Family<RefreshLabels, Counter>,
    body_limit_rejections: Counter,
    config_reloads: Family<OutcomeLabels, Counter>,
    connections_refused: Counter,
    refusals: Family<CodeLabels, Counter>,
    signature_rejections: Family<RejectionLabels, Counter>,
    /// The marketplace's clock minus ours, in seconds, from the last answer's `Date`.
    pub upstream_clock_skew: Gauge,
    skew_warned: std::sync::atomic::AtomicBool,
    egress_denied: Family<ClassLabels, Counter>,
    pub open_connections: Gauge,
    pub open_tunnels: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~41 s: loopback test upstreams up to slow marketplace endpoints.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("signproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by profile (\"-\" when none), host and status",
            requests.clone(),
        );
        let upstream_seconds = Family::<ProfileLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head",
            upstream_seconds.clone(),
        );
        let signing_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "signing_failures",
            "Requests that could not be signed, by reason (an error code)",
            signing_failures.clone(),
        );
        let token_refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Calls to a token endpoint, by profile and outcome",
            token_refreshes.clone(),
        );
        let body_limit_rejections = Counter::default();
        registry.register(
            "body_limit_rejections",
            "Requests refused because the body exceeded [proxy] max_body_bytes",
            body_limit_rejections.clone(),
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "SIGHUP config reloads, by outcome",
            config_reloads.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections refused because [proxy] max_connections were open",
            connections_refused.clone(),
        );
        let refusals = Family::<CodeLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests signproxy answered itself with an error, by error code",
            refusals.clone(),
        );
        let signature_rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "signature_rejections",
            "Answers in which the marketplace rejected the signature, by profile and its code",
            signature_rejections.clone(),
        );
        let upstream_clock_skew = Gauge::default();
        registry.register(
            "upstream_clock_skew_seconds",
            "The marketplace's Date header minus the local clock, from the last answer",
            upstream_clock_skew.clone(),
        );
        let egress_denied = Family::<ClassLabels, Counter>::default();
        registry.register(
            "egress_denied",
            "Passthrough destinations refused by the egress guard, by address class",
            egress_denied.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now (tunnels included)",
            open_connections.clone(),
        );
        let open_tunnels = Gauge::default();
        registry.register(
            "open_tunnels",
            "CONNECT tunnels open now (intercepted or passthrough)",
            open_tunnels.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_seconds,
            signing_failures,
            token_refreshes,
            body_limit_rejections,
            config_reloads,
            connections_refused,
            refusals,
            signature_rejections,
            upstream_clock_skew,
            skew_warned: std::sync::atomic::AtomicBool::new(false),
            egress_denied,
            open_connections,
            open_tunnels,
        }
    }

    pub fn request(&self, profile: &str, host: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                profile: profile.to_owned(),
                host: host.to_owned(),
                status,
            })
            .inc();
    }

    pub fn upstream_latency(&self, profile: &str, seconds: f64) {
        self.upstream_seconds
            .get_or_create(&ProfileLabels {
                profile: profile.to_owned(),
            })
            .observe(seconds);
    }

    pub fn signing_failure(&self, reason: &'static str) {
        self.signing_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn token_refresh(&self, profile: &str, outcome: Outcome) {
        self.token_refreshes
            .get_or_create(&RefreshLabels {
                profile: profile.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn body_limit_rejection(&self) {
        self.body_limit_rejections.inc();
    }

    pub fn config_reload(&self, outcome: Outcome) {
        self.config_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// An error signproxy answered itself (the code of the error contract).
    pub fn refusal(&self, code: &'static str) {
        self.refusals.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn signature_rejection(&self, profile: &str, code: &str) {
        self.signature_rejections
            .get_or_create(&RejectionLabels {
                profile: profile.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Records the skew; true the first time it is over `limit_secs` (warn once per process).
    pub fn clock_skew(&self, skew_secs: i64, limit_secs: i64) -> bool {
        self.upstream_clock_skew.set(skew_secs);
        skew_secs.abs() > limit_secs
            && !self
                .skew_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn egress_denied(&self, class: &'static str) {
        self.egress_denied
            .get_or_create(&ClassLabels { class })
            .inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// The Prometheus text exposition format (OpenMetrics flavour, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.request("tiktok.default", "open-api.tiktokglobalshop.com", 200);
        m.request("tiktok.default", "open-api.tiktokglobalshop.com", 200);
        m.upstream_latency("tiktok.default", 0.012);
        m.signing_failure("signing_failed");
        m.token_refresh("ebay.default", Outcome::Failure);
        m.body_limit_rejection();
        m.open_connections.inc();
        let text = m.encode();
        assert!(text.contains(
            "signproxy_requests_total{profile=\"tiktok.default\",host=\"open-api.tiktokglobalshop.com\",status=\"200\"} 2"
        ), "{text}");
        assert!(
            text.contains(
                "signproxy_upstream_duration_seconds_count{profile=\"tiktok.default\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("signproxy_signing_failures_total{reason=\"signing_failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "signproxy_token_refreshes_total{profile=\"ebay.default\",outcome=\"failure\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("signproxy_body_limit_rejections_total 1"),
            "{text}"
        );
        assert!(text.contains("signproxy_open_connections 1"), "{text}");
        assert!(text.contains("signproxy_open_tunnels 0"), "{text}");
    }
}
