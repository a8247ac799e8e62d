//! Hubble's flow metrics: counters per enabled spec (core decides what each flow adds), the lost
//! events, and a small HTTP server for `/metrics` that the agent also uses for its own registry.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::flow::Flow;
use sluice_core::flow::metrics::{LostSource, MetricKind, MetricSpec};

type Labels = Vec<(&'static str, String)>;

/// The two further metrics of `http` (its requests counter is the spec's own family).
struct HttpFamilies {
    responses: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

/// Prometheus' default buckets (seconds), as Hubble's request duration uses.
fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

pub struct FlowMetrics {
    specs: Vec<(MetricSpec, Family<Labels, Counter>)>,
    http: Option<HttpFamilies>,
    lost: Family<Labels, Counter>,
    registry: Registry,
}

impl FlowMetrics {
    pub fn new(specs: Vec<MetricSpec>) -> Self {
        let mut registry = Registry::with_prefix("hubble");
        let specs: Vec<_> = specs
            .into_iter()
            .map(|s| {
                let family = Family::<Labels, Counter>::default();
                registry.register(s.kind.metric(), s.kind.help(), family.clone());
                (s, family)
            })
            .collect();
        let http = specs.iter().any(|(s, _)| s.kind == MetricKind::Http).then(|| {
            let f = HttpFamilies {
                responses: Family::default(),
                duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            };
            registry.register("http_responses", "Count of HTTP responses", f.responses.clone());
            registry.register(
                "http_request_duration_seconds",
                "Quantiles of HTTP request duration",
                f.duration.clone(),
            );
            f
        });
        let lost = Family::<Labels, Counter>::default();
        registry.register("lost_events", "Number of lost events", lost.clone());
        FlowMetrics { specs, http, lost, registry }
    }

    /// The specs being counted (for status).
    pub fn enabled(&self) -> Vec<String> {
        self.specs.iter().map(|(s, _)| s.to_string()).collect()
    }

    pub fn observe(&self, f: &Flow) {
        for (spec, family) in &self.specs {
            for sample in spec.samples(f) {
                family.get_or_create(&sample.labels).inc();
            }
            if let (Some(h), Some(r)) = (&self.http, spec.http_response(f)) {
                h.responses.get_or_create(&r.responses).inc();
                h.duration.get_or_create(&r.duration).observe(r.seconds);
            }
        }
    }

    pub fn lost(&self, source: LostSource, n: u64) {
        self.lost.get_or_create(&vec![("source", source.label().to_string())]).inc_by(n);
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// A registry in the text exposition format (OpenMetrics, which Prometheus reads).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// The classic Prometheus text format (0.0.4) from OpenMetrics text, for clients that do not
/// ask for OpenMetrics (curl, `promtool check metrics`, older scrapers): a counter's HELP and
/// TYPE name the `_total` series, `# UNIT` and `# EOF` go.
pub fn to_classic(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out += renamed.as_deref().unwrap_or(line);
        out.push('\n');
    }
    out
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metrics endpoint serves: the text of the moment.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve `GET /metrics` on `addr` until the task is aborted. Binding errors name the address and
/// the config key (`key`) that set it.
pub async fn serve(addr: SocketAddr, key: &str, render: Render) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("listening on {key} {addr}: {e} (an address of this node and a free port, or unset it)")
    })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let render = render.clone();
            async move {
                // Prometheus asks for OpenMetrics; everything else gets the classic format.
                let om = headers
                    .get_all(axum::http::header::ACCEPT)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
                let text = render();
                if om {
                    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text)
                } else {
                    ([(axum::http::header::CONTENT_TYPE, CLASSIC)], to_classic(&text))
                }
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, %addr, "metrics server ended");
        }
    }))
}
