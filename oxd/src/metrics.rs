//! Prometheus metrics (`OpenMetrics` text on `GET /metrics`), on an address the operator names:
//! decisions by operation and result, ring buffer losses, and the policy in force per target.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use anyhow::{anyhow, Context as _, Result};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::audit::Record;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    op: String,
    decision: String,
    enforced: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    target: String,
    policy: String,
    sha256: String,
}

/// The metrics one oxd process keeps.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    decisions: Family<DecisionLabels, Counter>,
    lost: Gauge<u64, AtomicU64>,
    submitted: Gauge<u64, AtomicU64>,
    generation: Family<PolicyLabels, Gauge>,
    /// The labels of each target's series in `generation`, so a replacement or a release
    /// removes the old series.
    current: Arc<Mutex<HashMap<String, PolicyLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let lost = Gauge::<u64, AtomicU64>::default();
        let submitted = Gauge::<u64, AtomicU64>::default();
        let generation = Family::<PolicyLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("oxd");
        registry.register(
            "decisions",
            "Decisions made in the kernel, by operation and result",
            decisions.clone(),
        );
        registry.register(
            "ringbuf_lost",
            "Decisions made but not recorded because the ring buffer was full",
            lost.clone(),
        );
        registry.register(
            "ringbuf_submitted",
            "Decisions the kernel put into the ring buffer (each one a record to read)",
            submitted.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the policy in force, per confined target",
            generation.clone(),
        );
        Self {
            registry: Arc::new(registry),
            decisions,
            lost,
            submitted,
            generation,
            current: Arc::default(),
        }
    }

    /// Counts one decision.
    pub fn record(&self, record: &Record) {
        self.record_many(record, 1);
    }

    /// Counts `n` decisions like `record` (a tally the kernel counted).
    pub fn record_many(&self, record: &Record, n: u64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                op: record.op.clone(),
                decision: record.decision.clone(),
                enforced: record.enforced.to_string(),
            })
            .inc_by(n);
    }

    pub fn set_lost(&self, lost: u64) {
        self.lost.set(lost);
    }

    pub fn set_submitted(&self, submitted: u64) {
        self.submitted.set(submitted);
    }

    /// Sets the generation of the policy in force for `target` (one series per target).
    pub fn set_policy(&self, target: &str, policy: &str, sha256: &str, generation: u64) {
        let labels = PolicyLabels {
            target: target.to_owned(),
            policy: policy.to_owned(),
            sha256: sha256.to_owned(),
        };
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = current.insert(target.to_owned(), labels.clone()) {
            if old != labels {
                self.generation.remove(&old);
            }
        }
        self.generation
            .get_or_create(&labels)
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Removes `target`'s policy series (it is no longer confined).
    pub fn clear_policy(&self, target: &str) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = current.remove(target) {
            self.generation.remove(&old);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        encode(&mut out, &self.registry).context("cannot encode metrics")?;
        Ok(out)
    }

    /// Serves `GET /metrics` on `addr` from a background thread, for the life of the process.
    pub fn serve(&self, addr: SocketAddr) -> Result<()> {
        let server = tiny_http::Server::http(addr)
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let content_type = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
        )
        .map_err(|()| anyhow!("cannot build the Content-Type header"))?;
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("oxd-metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = if request.url() == "/metrics" {
                        match metrics.render() {
                            Ok(text) => tiny_http::Response::from_string(text)
                                .with_header(content_type.clone()),
                            Err(e) => tiny_http::Response::from_string(e.to_string())
                                .with_status_code(500),
                        }
                    } else {
                        tiny_http::Response::from_string("oxd: metrics are at /metrics\n")
                            .with_status_code(404)
                    };
                    if let Err(e) = request.respond(response) {
                        tracing::warn!("metrics client: {e}");
                    }
                }
            })
            .context("cannot start the metrics thread")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_decisions_losses_and_policy() {
        let metrics = Metrics::new();
        let record: Record = serde_json::from_value(serde_json::json!({
            "time": "t", "policy": "p", "policy_sha256": "s", "op": "exec", "target": "/x",
            "decision": "deny", "enforced": true, "rule": "default", "reason": "default",
            "pid": 1, "tid": 1, "uid": 0, "gid": 0, "comm": "c", "cgroup_id": 1
        }))
        .unwrap();
        metrics.record(&record);
        metrics.record(&record);
        metrics.set_lost(3);
        metrics.set_policy("/sys/fs/cgroup/oxd/run-1", "p", "s", 1);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"oxd_decisions_total{op="exec",decision="deny",enforced="true"} 2"#),
            "{text}"
        );
        assert!(text.contains("oxd_ringbuf_lost 3"), "{text}");
        assert!(
            text.contains(r#"oxd_policy_generation{target="/sys/fs/cgroup/oxd/run-1",policy="p",sha256="s"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_replaced_or_released_policy_leaves_one_series_or_none() {
        let metrics = Metrics::new();
        metrics.set_policy("/cg/a", "p", "s1", 1);
        metrics.set_policy("/cg/b", "p", "s1", 1);
        metrics.set_policy("/cg/a", "p", "s2", 2);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"oxd_policy_generation{target="/cg/a",policy="p",sha256="s2"} 2"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"target="/cg/a",policy="p",sha256="s1""#),
            "{text}"
        );
        metrics.clear_policy("/cg/b");
        let text = metrics.render().unwrap();
        assert!(!text.contains(r#"target="/cg/b""#), "{text}");
    }
}
