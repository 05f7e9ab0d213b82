//! The worker's metrics, in the Prometheus text format on `GET /metrics`
//! when `CANOTIFY_METRICS_LISTEN` is set: cases finished by status, retries,
//! dead letters, rate-limit answers, spent quotas, and whether the worker's
//! gate is shut. Counters only count; nothing here holds a case's data.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{Shutdown, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

pub struct Metrics {
    registry: Registry,
    cases: Family<StatusLabel, Counter>,
    retries: Counter,
    dead_letters: Counter,
    rate_limited: Counter,
    quota_exceeded: Counter,
    gate_shut: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canotify");
        let cases = Family::<StatusLabel, Counter>::default();
        let retries = Counter::default();
        let dead_letters = Counter::default();
        let rate_limited = Counter::default();
        let quota_exceeded = Counter::default();
        let gate_shut = Gauge::default();
        registry.register("cases", "Cases finished, by status", cases.clone());
        registry.register("retries", "Cases sent to a wait queue", retries.clone());
        registry.register(
            "dead_letters",
            "Messages given up to the dead-letter queue",
            dead_letters.clone(),
        );
        registry.register(
            "rate_limited",
            "Rate-limit answers from the verification server",
            rate_limited.clone(),
        );
        registry.register(
            "quota_exceeded",
            "Times the realm's daily quota was found spent",
            quota_exceeded.clone(),
        );
        registry.register(
            "gate_shut",
            "1 while the worker takes no work (quota spent or credentials refused)",
            gate_shut.clone(),
        );
        Self {
            registry,
            cases,
            retries,
            dead_letters,
            rate_limited,
            quota_exceeded,
            gate_shut,
        }
    }
}

impl Metrics {
    pub fn case_finished(&self, status: Status) {
        self.cases
            .get_or_create(&StatusLabel {
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn quota_exceeded(&self) {
        self.quota_exceeded.inc();
    }

    pub fn set_gate_shut(&self, shut: bool) {
        self.gate_shut.set(i64::from(shut));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` on `addr` until shutdown; answers where it listens.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.requested().await })
            .await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_format() {
        let metrics = Metrics::default();

        metrics.case_finished(Status::Sent);
        metrics.case_finished(Status::Sent);
        metrics.quota_exceeded();
        metrics.set_gate_shut(true);
        let text = metrics.render();

        assert!(
            text.contains("canotify_cases_total{status=\"sent\"} 2"),
            "{text}"
        );
        assert!(text.contains("canotify_quota_exceeded_total 1"), "{text}");
        assert!(text.contains("canotify_gate_shut 1"), "{text}");
    }

    #[tokio::test]
    async fn the_metrics_are_served_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.case_finished(Status::Failed);
        let (trigger, shutdown) = Shutdown::new();

        let addr = serve(metrics, ([127, 0, 0, 1], 0).into(), shutdown)
            .await
            .unwrap();
        let client = crate::http::client(std::time::Duration::from_secs(5)).unwrap();
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        trigger.trigger();

        assert!(
            body.contains("canotify_cases_total{status=\"failed\"} 1"),
            "{body}"
        );
    }
}
