//! Prometheus metrics: requests, latency histograms and body bytes in/out per route; the TLS
//! certificate's expiry and ACME failures; events and webhook deliveries.
//!
//! Every label takes its values from a fixed set, so no client can grow the series without
//! bound: methods outside the standard ones are `OTHER`, routes are the router's templates
//! (anything unmatched is `unmatched`), statuses are the ones the hub answers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// The `method` label: the standard methods by name, anything else (HTTP allows any token as
/// a method, and clients may send thousands) as `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
    ])
}

/// The hub's metric families and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub bytes_in: Family<RouteLabels, Counter>,
    pub bytes_out: Family<RouteLabels, Counter>,
    /// Expiry of the TLS certificate served, seconds since the epoch (0: none or a placeholder).
    pub tls_not_after: Gauge,
    /// ACME issuance or renewal attempts that failed.
    pub acme_failures: Counter,
    /// Events recorded in account feeds.
    pub events_recorded: Counter,
    /// Changes the provider confirmed whose event could not be recorded (see `crate::events`).
    pub event_record_failures: Counter,
    /// Webhook delivery attempts by result (`delivered`, `failed`).
    pub webhook_attempts: Family<ResultLabels, Counter>,
    /// From a notification's first event to its delivery, seconds.
    pub webhook_latency: Histogram,
    /// The webhook work queue (pushes, failed pushes, entries taken over from another hub).
    pub webhook_queue: crate::workqueue::QueueStats,
    /// Detector polls by service and outcome (`ok`, `error`).
    pub detect_polls: Family<PollLabels, Counter>,
    /// Provider requests one poll made (listing pages; folders read on `fs` and SFTP).
    pub detect_requests: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// Objects one poll listed.
    pub detect_objects: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// Wall time of one poll.
    pub detect_duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// Changes detectors recorded (the echoes of API changes excluded).
    pub detect_changes: Family<ServiceLabels, Counter>,
    /// Detector polls running on this hub.
    pub detect_running: Gauge,
    /// The detector work queue (polls handed, failed hand-overs, entries taken over).
    pub detect_queue: crate::workqueue::QueueStats,
}

/// A webhook attempt's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A detector poll's labels: the service (a fixed set) and the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub service: String,
    pub outcome: &'static str,
}

/// The service of a detector (one of `shared::storage::SERVICES`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

fn count_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 4.0, 12,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard_hub");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers",
            latency.clone(),
        );
        registry.register(
            "http_request_body_bytes",
            "Request body bytes read",
            bytes_in.clone(),
        );
        registry.register(
            "http_response_body_bytes",
            "Response body bytes sent",
            bytes_out.clone(),
        );
        let tls_not_after = Gauge::default();
        let acme_failures = Counter::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "Expiry of the served TLS certificate (0: none yet)",
            tls_not_after.clone(),
        );
        registry.register(
            "acme_failures",
            "ACME certificate issuance or renewal attempts that failed",
            acme_failures.clone(),
        );
        let events_recorded = Counter::default();
        let event_record_failures = Counter::default();
        registry.register(
            "events_recorded",
            "Events recorded in account feeds",
            events_recorded.clone(),
        );
        registry.register(
            "event_record_failures",
            "Changes made through the API whose event could not be recorded",
            event_record_failures.clone(),
        );
        let webhook_attempts = Family::<ResultLabels, Counter>::default();
        let webhook_latency = latency_histogram();
        let webhook_queue = crate::workqueue::QueueStats::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by result",
            webhook_attempts.clone(),
        );
        registry.register(
            "webhook_delivery_latency_seconds",
            "From a notification's first event to its delivery",
            webhook_latency.clone(),
        );
        registry.register(
            "webhook_queue_pushed",
            "Notifications handed to the work queue",
            webhook_queue.pushed.clone(),
        );
        registry.register(
            "webhook_queue_push_failures",
            "Notifications the work queue did not take (the reconciler hands them again)",
            webhook_queue.push_failures.clone(),
        );
        registry.register(
            "webhook_queue_claimed_over",
            "Queue entries taken over from a hub that left them unacknowledged",
            webhook_queue.claimed_over.clone(),
        );
        let detect_polls = Family::<PollLabels, Counter>::default();
        let detect_requests =
            Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                count_histogram,
            );
        let detect_objects =
            Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                count_histogram,
            );
        let detect_duration =
            Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let detect_changes = Family::<ServiceLabels, Counter>::default();
        let detect_running = Gauge::default();
        let detect_queue = crate::workqueue::QueueStats::default();
        registry.register(
            "detect_polls",
            "Polls of detectors of outside changes, by service and outcome",
            detect_polls.clone(),
        );
        registry.register(
            "detect_requests_per_poll",
            "Provider requests one detector poll made (listing pages; folders read on fs and SFTP)",
            detect_requests.clone(),
        );
        registry.register(
            "detect_objects_per_poll",
            "Objects one detector poll listed",
            detect_objects.clone(),
        );
        registry.register(
            "detect_poll_duration_seconds",
            "Wall time of one detector poll",
            detect_duration.clone(),
        );
        registry.register(
            "detect_changes",
            "Outside changes detectors recorded",
            detect_changes.clone(),
        );
        registry.register(
            "detect_polls_running",
            "Detector polls running on this hub",
            detect_running.clone(),
        );
        registry.register(
            "detect_queue_pushed",
            "Detector polls handed to the work queue",
            detect_queue.pushed.clone(),
        );
        registry.register(
            "detect_queue_push_failures",
            "Detector polls the work queue did not take (handed again after the lease)",
            detect_queue.push_failures.clone(),
        );
        registry.register(
            "detect_queue_claimed_over",
            "Detector queue entries taken over from a hub that left them unacknowledged",
            detect_queue.claimed_over.clone(),
        );
        Self {
            webhook_attempts,
            webhook_latency,
            webhook_queue,
            detect_polls,
            detect_requests,
            detect_objects,
            detect_duration,
            detect_changes,
            detect_running,
            detect_queue,
            events_recorded,
            event_record_failures,
            tls_not_after,
            acme_failures,
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
        }
    }
}

impl Metrics {
    /// Adds the database's per-pool call counters and the replica's lag.
    pub fn register_db(&mut self, stats: &crate::db::topology::DbStats) {
        self.registry.register(
            "db_calls",
            "Database calls by pool (primary, replica) and origin (request, background)",
            stats.calls.clone(),
        );
        self.registry.register(
            "db_replica_lag_bytes",
            "How far this region's replica's replay is behind the primary, in bytes",
            stats.lag_bytes.clone(),
        );
        self.registry.register(
            "db_replica_lag_ms",
            "How long ago the oldest primary position the replica has not replayed was current",
            stats.lag_ms.clone(),
        );
        self.registry.register(
            "db_replica_usable",
            "1 while replica-eligible reads go to this region's replica, 0 while they go to the primary",
            stats.usable.clone(),
        );
    }

    /// The provider budgets' counters (read at each scrape).
    pub fn register_budgets(&mut self, budgets: &shared::budget::Budgets) {
        self.registry
            .register_collector(Box::new(crate::budgets::BudgetMetrics(budgets.clone())));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
