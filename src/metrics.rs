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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    /// The `[inbound.NAME]` listener.
    pub listener: String,
    /// The profile whose route took the request ("-" when no route did).
    pub profile: String,
    pub outcome: &'static str,
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
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// How many series of each per-request metric a thread keeps handles to; past that (labels are
/// bounded, so rarely) the family is looked up each time.
const HOT_SERIES: usize = 64;

std::thread_local! {
    static HOT: std::cell::RefCell<HotSeries> = std::cell::RefCell::new(HotSeries::default());
}

/// This thread's handles to the series every request touches. Looking a series up in its family
/// hashes owned label strings under a lock shared by all threads; a handle is one atomic add
/// away. Handles share their series with the family, so `/metrics` sees every count.
#[derive(Default)]
struct HotSeries {
    /// The [`Metrics`] these handles belong to (a process holds one; tests build many).
    owner: u64,
    requests: Vec<(RequestLabels, Counter)>,
    latency: Vec<(String, Histogram)>,
}

impl HotSeries {
    fn for_owner(&mut self, owner: u64) -> &mut HotSeries {
        if self.owner != owner {
            *self = HotSeries {
                owner,
                ..HotSeries::default()
            };
        }
        self
    }
}

/// Every metric signproxy exports.
pub struct Metrics {
    /// Unique per instance (from 1), for [`HotSeries`].
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<ProfileLabels, Histogram>,
    signing_failures: Family<ReasonLabels, Counter>,
    token_refreshes: Family<RefreshLabels, Counter>,
    token_adoptions: Family<ProfileLabels, Counter>,
    token_lease_waits: Family<ProfileLabels, Counter>,
    token_store_conflicts: Family<ProfileLabels, Counter>,
    token_store_errors: Family<OperationLabels, Counter>,
    body_limit_rejections: Counter,
    config_reloads: Family<OutcomeLabels, Counter>,
    connections_refused: Counter,
    refusals: Family<CodeLabels, Counter>,
    signature_rejections: Family<RejectionLabels, Counter>,
    /// The marketplace's clock minus ours, in seconds, from the last answer's `Date`.
    pub upstream_clock_skew: Gauge,
    skew_warned: std::sync::atomic::AtomicBool,
    egress_denied: Family<ClassLabels, Counter>,
    inbound: Family<InboundLabels, Counter>,
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
        let token_adoptions = Family::<ProfileLabels, Counter>::default();
        registry.register(
            "token_adoptions",
            "Tokens taken from the shared store after another replica refreshed, by profile",
            token_adoptions.clone(),
        );
        let token_lease_waits = Family::<ProfileLabels, Counter>::default();
        registry.register(
            "token_lease_waits",
            "Refreshes that waited for another replica holding the shared store's lease",
            token_lease_waits.clone(),
        );
        let token_store_conflicts = Family::<ProfileLabels, Counter>::default();
        registry.register(
            "token_store_conflicts",
            "Refreshed tokens not stored because another replica stored newer ones first",
            token_store_conflicts.clone(),
        );
        let token_store_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "token_store_errors",
            "Token store operations that failed (store unreachable), by operation",
            token_store_errors.clone(),
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
        let inbound = Family::<InboundLabels, Counter>::default();
        registry.register(
            "inbound_webhooks",
            "Inbound webhook requests, by listener, profile and outcome (forwarded, app_refused, duplicate, unsigned, forged, malformed, timeout, ...)",
            inbound.clone(),
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
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Metrics {
            id: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            requests,
            upstream_seconds,
            signing_failures,
            token_refreshes,
            token_adoptions,
            token_lease_waits,
            token_store_conflicts,
            token_store_errors,
            body_limit_rejections,
            config_reloads,
            connections_refused,
            refusals,
            signature_rejections,
            upstream_clock_skew,
            skew_warned: std::sync::atomic::AtomicBool::new(false),
            egress_denied,
            inbound,
            open_connections,
            open_tunnels,
        }
    }

    pub fn request(&self, profile: &str, host: &str, status: u16) {
        let labels = || RequestLabels {
            profile: profile.to_owned(),
            host: host.to_owned(),
            status,
        };
        // A body dropped while its thread shuts down may count after the thread's handles are
        // gone: then the family directly (a panic in a drop would abort the process).
        let counted = HOT.try_with(|hot| {
            let Ok(mut hot) = hot.try_borrow_mut() else {
                return false;
            };
            let hot = hot.for_owner(self.id);
            let found = hot.requests.iter().find(|(labels, _)| {
                labels.status == status && labels.profile == profile && labels.host == host
            });
            if let Some((_, counter)) = found {
                counter.inc();
                return true;
            }
            let labels = labels();
            let counter = self.requests.get_or_create(&labels).clone();
            counter.inc();
            if hot.requests.len() < HOT_SERIES {
                hot.requests.push((labels, counter));
            }
            true
        });
        if counted != Ok(true) {
            self.requests.get_or_create(&labels()).inc();
        }
    }

    pub fn upstream_latency(&self, profile: &str, seconds: f64) {
        let labels = || ProfileLabels {
            profile: profile.to_owned(),
        };
        let observed = HOT.try_with(|hot| {
            let Ok(mut hot) = hot.try_borrow_mut() else {
                return false;
            };
            let hot = hot.for_owner(self.id);
            if let Some((_, histogram)) = hot.latency.iter().find(|(p, _)| p == profile) {
                histogram.observe(seconds);
                return true;
            }
            let labels = labels();
            let histogram = self.upstream_seconds.get_or_create(&labels).clone();
            histogram.observe(seconds);
            if hot.latency.len() < HOT_SERIES {
                hot.latency.push((labels.profile, histogram));
            }
            true
        });
        if observed != Ok(true) {
            self.upstream_seconds
                .get_or_create(&labels())
                .observe(seconds);
        }
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

    pub fn token_adopted(&self, profile: &str) {
        self.token_adoptions
            .get_or_create(&ProfileLabels {
                profile: profile.to_owned(),
            })
            .inc();
    }

    /// One inbound webhook request's outcome (`forwarded`, `forged`, `duplicate`, ...).
    pub fn inbound(&self, listener: &str, profile: &str, outcome: &'static str) {
        self.inbound
            .get_or_create(&InboundLabels {
                listener: listener.to_owned(),
                profile: profile.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn token_lease_wait(&self, profile: &str) {
        self.token_lease_waits
            .get_or_create(&ProfileLabels {
                profile: profile.to_owned(),
            })
            .inc();
    }

    pub fn token_store_conflict(&self, profile: &str) {
        self.token_store_conflicts
            .get_or_create(&ProfileLabels {
                profile: profile.to_owned(),
            })
            .inc();
    }

    pub fn token_store_error(&self, operation: &'static str) {
        self.token_store_errors
            .get_or_create(&OperationLabels { operation })
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
    fn each_instance_counts_its_own_requests_on_a_shared_thread() {
        let series = "signproxy_requests_total{profile=\"p\",host=\"h\",status=\"200\"}";
        let (a, b) = (Metrics::new(), Metrics::new());
        a.request("p", "h", 200);
        b.request("p", "h", 200);
        a.request("p", "h", 200);
        a.upstream_latency("p", 0.01);
        b.upstream_latency("p", 0.01);
        b.upstream_latency("p", 0.01);
        assert!(
            a.encode().contains(&format!("{series} 2")),
            "{}",
            a.encode()
        );
        assert!(
            b.encode().contains(&format!("{series} 1")),
            "{}",
            b.encode()
        );
        let latency = "signproxy_upstream_duration_seconds_count{profile=\"p\"}";
        assert!(a.encode().contains(&format!("{latency} 1")));
        assert!(b.encode().contains(&format!("{latency} 2")));
        // A series past the first stays counted from another thread too.
        std::thread::scope(|s| {
            s.spawn(|| a.request("p", "h", 200));
        });
        assert!(a.encode().contains(&format!("{series} 3")));
    }

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
