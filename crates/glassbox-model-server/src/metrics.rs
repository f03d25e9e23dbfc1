//! `/metrics` in Prometheus' text format: requests by endpoint and status, tokens,
//! queue depth, active sequences, latency and time-to-first-token histograms, and
//! verdicts per monitor.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Histogram bucket bounds in seconds (CPU decoding: from a token to minutes).
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.n += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, &b) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.n);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.n);
    }
}

/// The server's counters, shared by the HTTP handlers and the engine.
#[derive(Default)]
pub struct Metrics {
    /// requests waiting for the engine
    pub queue_depth: AtomicU64,
    /// sequences decoding now
    pub active: AtomicU64,
    /// tokens generated since start
    pub tokens: AtomicU64,
    /// prompt tokens read since start
    pub prompt_tokens: AtomicU64,
    labelled: Mutex<Labelled>,
}

#[derive(Default)]
struct Labelled {
    requests: BTreeMap<(String, u16), u64>,
    verdicts: BTreeMap<(String, &'static str), u64>,
    latency: BTreeMap<String, Histogram>,
    first_token: Histogram,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        let mut l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        *l.requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        l.latency
            .entry(endpoint.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Records a time to first token.
    pub fn first_token(&self, seconds: f64) {
        let mut l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        l.first_token.observe(seconds);
    }

    /// Counts a monitor's verdict on one completion.
    pub fn verdict(&self, monitor: &str, verdict: &'static str) {
        let mut l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        *l.verdicts
            .entry((monitor.to_string(), verdict))
            .or_default() += 1;
    }

    /// The text Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP glassbox_requests_total Requests answered, by endpoint and HTTP status.\n# TYPE glassbox_requests_total counter\n");
        for ((e, s), n) in &l.requests {
            let _ = writeln!(
                out,
                "glassbox_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
            );
        }
        for (name, help, v) in [
            (
                "glassbox_generated_tokens_total",
                "Tokens generated.",
                &self.tokens,
            ),
            (
                "glassbox_prompt_tokens_total",
                "Prompt tokens read.",
                &self.prompt_tokens,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "glassbox_queue_depth",
                "Requests waiting for the engine.",
                &self.queue_depth,
            ),
            (
                "glassbox_active_sequences",
                "Sequences decoding in the current batch.",
                &self.active,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP glassbox_request_duration_seconds Time from request to last byte.\n# TYPE glassbox_request_duration_seconds histogram\n");
        for (e, h) in &l.latency {
            h.write(
                &mut out,
                "glassbox_request_duration_seconds",
                &format!("endpoint=\"{e}\""),
            );
        }
        out.push_str("# HELP glassbox_time_to_first_token_seconds Time from queueing to the first token.\n# TYPE glassbox_time_to_first_token_seconds histogram\n");
        l.first_token
            .write(&mut out, "glassbox_time_to_first_token_seconds", "");
        out.push_str("# HELP glassbox_monitor_verdicts_total Completions per monitor and verdict.\n# TYPE glassbox_monitor_verdicts_total counter\n");
        for ((m, v), n) in &l.verdicts {
            let _ = writeln!(
                out,
                "glassbox_monitor_verdicts_total{{monitor=\"{m}\",verdict=\"{v}\"}} {n}"
            );
        }
        out
    }
}
