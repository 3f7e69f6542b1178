//! Prometheus series for requests, limits and module loads, in one registry the admin listener
//! (or `outpost run`'s log) reads. Label values are tenant and app names from configuration,
//! never anything a client sends, so series stay bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Failure;

/// One tenant's per-request series (`Metrics::tenant_series`).
pub struct TenantSeries {
    pub active: IntGauge,
    pub duration: Histogram,
    pub instantiate: Histogram,
    pub queue_wait: Histogram,
    pub fuel_used: IntCounter,
    pub memory_peak: Histogram,
    pub runs_pool: IntCounter,
    pub runs_inline: IntCounter,
    pub runs_moved: IntCounter,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub instantiate: HistogramVec,
    pub fuel_used: IntCounterVec,
    pub guest_runs: IntCounterVec,
    pub memory_peak: HistogramVec,
    pub limit_exceeded: IntCounterVec,
    pub failures: IntCounterVec,
    pub active: IntGaugeVec,
    pub queue_wait: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub module_loads: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub unrouted: prometheus::IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub quic_connections: prometheus::IntCounter,
    pub connections_refused: prometheus::IntCounter,
    pub connections_open: IntGaugeVec,
    pub sync_failures: IntCounterVec,
    pub sync_swaps: IntCounterVec,
    pub app_info: IntGaugeVec,
    pub registry_notifications: IntCounterVec,
    pub backend_requests: IntCounterVec,
    pub backend_latency: HistogramVec,
    pub backend_connections: IntCounterVec,
}

fn plain_counter(
    registry: &Registry,
    name: &str,
    help: &str,
) -> prometheus::Result<prometheus::IntCounter> {
    let c = prometheus::IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let seconds = vec![
            0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0,
        ];
        let bytes = prometheus::exponential_buckets(65536.0, 4.0, 8)?;
        let active = IntGaugeVec::new(
            Opts::new("outpost_active_instances", "Guest instances running now"),
            &["tenant"],
        )?;
        registry.register(Box::new(active.clone()))?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "outpost_queue_depth",
                "Requests waiting for one of their tenant's CPU slots (sampled when scraped)",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(queue_depth.clone()))?;
        let app_info = IntGaugeVec::new(
            Opts::new(
                "outpost_app_info",
                "The bundle version (manifest digest) each app serves: 1 per app",
            ),
            &["tenant", "app", "digest"],
        )?;
        registry.register(Box::new(app_info.clone()))?;
        Ok(Self {
            sync_failures: counter(
                &registry,
                "outpost_sync_failures_total",
                "Bundle versions not taken (the last good version kept serving), by reason",
                &["tenant", "app", "reason"],
            )?,
            sync_swaps: counter(
                &registry,
                "outpost_sync_swaps_total",
                "New bundle versions swapped in by the sync loop",
                &["tenant", "app"],
            )?,
            app_info,
            registry_notifications: counter(
                &registry,
                "outpost_registry_notifications_total",
                "Registry push notifications received, by result: ok, unauthorized, invalid",
                &["result"],
            )?,
            requests: counter(
                &registry,
                "outpost_requests_total",
                "Requests answered, by tenant, app, protocol and status",
                &["tenant", "app", "protocol", "status"],
            )?,
            duration: histogram(
                &registry,
                "outpost_request_duration_seconds",
                "Time from dispatch to the guest's end",
                &["tenant"],
                seconds.clone(),
            )?,
            instantiate: histogram(
                &registry,
                "outpost_instantiate_seconds",
                "Time to create a fresh instance",
                &["tenant"],
                seconds.clone(),
            )?,
            queue_wait: histogram(
                &registry,
                "outpost_queue_wait_seconds",
                "Time a request waited for one of its tenant's CPU slots before its guest started",
                &["tenant"],
                seconds.clone(),
            )?,
            backend_latency: histogram(
                &registry,
                "outpost_backend_request_seconds",
                "Time from sending a request to a backend to its response head (or failure)",
                &["tenant", "backend"],
                seconds,
            )?,
            backend_requests: counter(
                &registry,
                "outpost_backend_requests_total",
                "Requests sent to backends (pass-through and subrequests), by the origin's status, or 502/503/504 when it failed",
                &["tenant", "backend", "status"],
            )?,
            backend_connections: counter(
                &registry,
                "outpost_backend_connections_total",
                "Connections opened to backends' origins (requests reuse them while they are open)",
                &["tenant", "backend"],
            )?,
            queue_depth,
            fuel_used: counter(
                &registry,
                "outpost_fuel_used_total",
                "Fuel (Wasm operators) spent by guests",
                &["tenant"],
            )?,
            guest_runs: counter(
                &registry,
                "outpost_guest_runs_total",
                "Guests run, by where: inline (on the async thread that received the request), pool (a guest thread), moved (a pool thread, after an inline attempt that had to move)",
                &["tenant", "path"],
            )?,
            memory_peak: histogram(
                &registry,
                "outpost_memory_peak_bytes",
                "Peak linear memory of a request",
                &["tenant"],
                bytes,
            )?,
            limit_exceeded: counter(
                &registry,
                "outpost_limit_exceeded_total",
                "Requests stopped by a per-tenant limit",
                &["tenant", "limit"],
            )?,
            failures: counter(
                &registry,
                "outpost_request_failures_total",
                "Failed requests by kind (limits, traps, bad responses, ...)",
                &["tenant", "kind"],
            )?,
            active,
            module_loads: counter(
                &registry,
                "outpost_module_loads_total",
                "Modules made ready, by source: compiled or loaded from the artifact cache",
                &["source"],
            )?,
            config_reloads: counter(
                &registry,
                "outpost_config_reloads_total",
                "Configuration reloads, by result: ok or error (the old configuration kept serving)",
                &["result"],
            )?,
            unrouted: plain_counter(
                &registry,
                "outpost_unrouted_requests_total",
                "Requests for a host and path no route matches (404 from outpost)",
            )?,
            tls_handshakes: counter(
                &registry,
                "outpost_tls_handshakes_total",
                "TLS handshakes over TCP and QUIC, by result: ok, error, timeout",
                &["result"],
            )?,
            quic_connections: plain_counter(
                &registry,
                "outpost_quic_connections_total",
                "QUIC connections established",
            )?,
            connections_refused: plain_counter(
                &registry,
                "outpost_connections_refused_total",
                "Connections refused at the node's connection cap",
            )?,
            connections_open: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "outpost_connections_open",
                        "Connections open now under the node's connection cap, by transport: tcp, quic",
                    ),
                    &["transport"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            registry,
        })
    }

    /// The series every request of `tenant` updates, resolved now: a lookup by label values
    /// hashes them and takes the vector's lock, which a request should not pay seven times.
    pub fn tenant_series(&self, tenant: &str) -> TenantSeries {
        let runs = |path: &str| self.guest_runs.with_label_values(&[tenant, path]);
        TenantSeries {
            active: self.active.with_label_values(&[tenant]),
            duration: self.duration.with_label_values(&[tenant]),
            instantiate: self.instantiate.with_label_values(&[tenant]),
            queue_wait: self.queue_wait.with_label_values(&[tenant]),
            fuel_used: self.fuel_used.with_label_values(&[tenant]),
            memory_peak: self.memory_peak.with_label_values(&[tenant]),
            runs_pool: runs("pool"),
            runs_inline: runs("inline"),
            runs_moved: runs("moved"),
        }
    }

    pub fn record_failure(&self, tenant: &str, failure: &Failure) {
        self.failures
            .with_label_values(&[tenant, failure.kind()])
            .inc();
        if let Some(limit) = failure.limit() {
            self.limit_exceeded
                .with_label_values(&[tenant, limit.label()])
                .inc();
        }
    }

    /// Guest instances admitted and not yet finished (logged and counted), over every tenant.
    pub fn active_instances(&self) -> i64 {
        use prometheus::core::Collector;
        self.active
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// An app now serves `digest` (instead of `before`).
    pub fn app_version(&self, tenant: &str, app: &str, before: Option<&str>, digest: &str) {
        if let Some(before) = before.filter(|b| *b != digest) {
            let _ = self.app_info.remove_label_values(&[tenant, app, before]);
        }
        self.app_info
            .with_label_values(&[tenant, app, digest])
            .set(1);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
