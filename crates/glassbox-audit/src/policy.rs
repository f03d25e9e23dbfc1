//! Thresholds: a policy file names bounds on the report's metrics, `min_NAME = v` or
//! `max_NAME = v` under `[thresholds]`; each becomes a pass or a fail with the measured
//! value. A metric the report could not measure fails (a gate says yes only to what it
//! saw), with the reason.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Every metric a policy may bound, and what it is.
pub const METRICS: &[(&str, &str)] = &[
    ("fvu", "fraction of variance unexplained by the dictionary (held-out)"),
    ("explained_variance", "1 − FVU"),
    ("ce_recovered", "share of the next-token loss gap recovered when the dictionary's reconstruction replaces the activation"),
    ("kl_recovered", "the same for the KL divergence to the clean model"),
    ("l0", "mean active features per token"),
    ("dead_fraction", "share of features that never fired on the held-out text"),
    ("dense_fraction", "share of features firing on more than the dense threshold of tokens"),
    ("explained_share", "share of explained features whose detection score reaches the explanation threshold"),
    ("detection_median", "median detection score of the explained features"),
    ("fuzzing_median", "median fuzzing score of the explained features"),
    ("probe_auroc_min", "lowest held-out AUROC of the given probes"),
    ("replacement_score", "mean replacement score of the prompt suite traced through the transcoder set"),
    ("monitor_false_flag_rate", "the highest share, over the given probes, of their own dataset's held-out true statements the monitor would flag"),
];

/// One bound and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criterion {
    /// the policy key, e.g. `min_ce_recovered`
    pub key: String,
    /// the metric bounded
    pub metric: String,
    /// `min` or `max`
    pub bound: String,
    /// the limit
    pub limit: f64,
    /// the measured value (`None`: not measured)
    pub value: Option<f64>,
    /// whether the value is within the limit
    pub pass: bool,
    /// why a criterion without a value failed
    pub note: Option<String>,
}

/// A parsed policy: (key, metric, is_min, limit), in key order (TOML tables are maps).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    bounds: Vec<(String, String, bool, f64)>,
}

impl Policy {
    /// Reads a policy file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the policy {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("the policy {}", path.display()))
    }

    /// Parses a policy's TOML: `[thresholds]` with `min_METRIC` / `max_METRIC` numbers.
    pub fn parse(text: &str) -> Result<Self> {
        let v: toml::Table = text.parse().context("is not valid TOML")?;
        let known: Vec<&str> = METRICS.iter().map(|(m, _)| *m).collect();
        if let Some(k) = v.keys().find(|k| *k != "thresholds") {
            bail!("has a section or key `{k}`; bounds go under [thresholds]");
        }
        let table = v
            .get("thresholds")
            .and_then(|t| t.as_table())
            .context("has no [thresholds] table")?;
        let mut bounds = Vec::new();
        for (key, value) in table {
            let (is_min, metric) = match (key.strip_prefix("min_"), key.strip_prefix("max_")) {
                (Some(m), _) => (true, m),
                (_, Some(m)) => (false, m),
                _ => bail!(
                    "`{key}`: a bound is min_METRIC or max_METRIC (metrics: {})",
                    known.join(", ")
                ),
            };
            if !known.contains(&metric) {
                bail!(
                    "`{key}` names the unknown metric `{metric}`; known metrics: {}",
                    known.join(", ")
                );
            }
            let limit = value
                .as_float()
                .or_else(|| value.as_integer().map(|i| i as f64))
                .with_context(|| format!("`{key}` must be a number, not {value}"))?;
            bounds.push((key.clone(), metric.to_string(), is_min, limit));
        }
        if bounds.is_empty() {
            bail!("[thresholds] is empty");
        }
        Ok(Policy { bounds })
    }

    /// Each bound judged against `metrics` (`None`: not measured, with `why`).
    pub fn judge(
        &self,
        metrics: &BTreeMap<String, Option<f64>>,
        why_missing: &dyn Fn(&str) -> String,
    ) -> Vec<Criterion> {
        self.bounds
            .iter()
            .map(|(key, metric, is_min, limit)| {
                let value = metrics
                    .get(metric)
                    .copied()
                    .flatten()
                    .filter(|v| v.is_finite());
                let pass = value.is_some_and(|v| if *is_min { v >= *limit } else { v <= *limit });
                Criterion {
                    key: key.clone(),
                    metric: metric.clone(),
                    bound: if *is_min { "min" } else { "max" }.into(),
                    limit: *limit,
                    value,
                    pass,
                    note: value.is_none().then(|| why_missing(metric)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_pass_fail_and_unknown_metrics_are_refused() {
        let p = Policy::parse("[thresholds]\nmin_ce_recovered = 0.8\nmax_dead_fraction = 0.1\nmin_probe_auroc_min = 0.9\n").unwrap();
        let m = BTreeMap::from([
            ("ce_recovered".to_string(), Some(0.85)),
            ("dead_fraction".to_string(), Some(0.2)),
            ("probe_auroc_min".to_string(), None),
        ]);
        let c = p.judge(&m, &|_| "no probes given".into());
        let verdicts: Vec<(&str, bool)> = c.iter().map(|c| (c.key.as_str(), c.pass)).collect();
        assert_eq!(
            verdicts,
            [
                ("max_dead_fraction", false),
                ("min_ce_recovered", true),
                ("min_probe_auroc_min", false)
            ]
        );
        assert_eq!(c[1].note, None);
        assert_eq!(c[2].note.as_deref(), Some("no probes given"));
        let e = Policy::parse("[thresholds]\nmin_ce_recoverd = 0.8\n").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("unknown metric `ce_recoverd`") && e.contains("ce_recovered"),
            "{e}"
        );
        assert!(Policy::parse("min_fvu = 1").is_err());
        assert!(Policy::parse("[thresholds]\nmin_fvu = \"high\"").is_err());
        assert!(Policy::parse("[thresholds]\nfvu = 1").is_err());
    }
}
