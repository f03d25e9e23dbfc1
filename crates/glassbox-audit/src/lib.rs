//! glassbox-audit: the audit report of a run directory — how much of the model the
//! dictionary explains (**coverage**), what stays dark (**dark matter**), what the truth
//! probes read (**the lie detector**), what finding it out cost (**cost**), where every
//! number came from (**provenance**), pass or fail against a policy (**thresholds**), and
//! which report fields speak to which documentation requirement (**compliance**).
//!
//! [`gather`] reads what the other commands wrote (`metrics.json`, `config.toml`,
//! `features.sqlite` and its explanations, `stages.jsonl`, probe folders) and never
//! recomputes them, so the report's figures are the figures those commands printed. A
//! stage that is missing leaves its section empty and says so in [`Report::missing`];
//! the report is still written. [`html::render`] draws it; `REPORT.json` is the
//! [`Report`] itself (schema [`SCHEMA`], documented in `docs/audit-report.md`).

#![deny(missing_docs)]

pub mod compliance;
pub mod cost;
pub mod html;
pub mod ledger;
pub mod policy;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The report's schema name and version (in `REPORT.json`'s `schema`).
pub const SCHEMA: &str = "glassbox-audit-1";

/// glassbox's version and the commit it was built from.
pub fn version() -> String {
    format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("GLASSBOX_COMMIT")
    )
}

/// What the report is made from.
#[derive(Debug, Clone)]
pub struct AuditInput {
    /// the run directory
    pub run: PathBuf,
    /// probe folders (`glassbox probe train --out DIR`)
    pub probes: Vec<PathBuf>,
    /// a transcoder set's folder (its `index.json` and layer folders)
    pub transcoders: Option<PathBuf>,
    /// the model file or folder, to hash (`None`: not hashed)
    pub model_path: Option<PathBuf>,
    /// the model's shape, for FLOPs (`None`: FLOPs not counted)
    pub model_shape: Option<cost::ModelShape>,
    /// the power draw energy is counted at
    pub watts: f64,
    /// detection score from which an explanation counts as good
    pub explained_threshold: f64,
    /// the projection's target model and tokens
    pub target: cost::ModelShape,
    /// training tokens of the projected study
    pub target_tokens: f64,
    /// the probes read on every built-in dataset, computed by the caller (who runs the
    /// model); `None`: not computed
    pub generalisation: Option<Generalisation>,
    /// the prompt suite traced through the transcoder set, by the caller (`None`: not
    /// traced)
    pub traced: Option<Vec<TracedPrompt>>,
}

/// One prompt of the suite, traced through the transcoder set.
#[derive(Debug, Clone, Serialize)]
pub struct TracedPrompt {
    /// the prompt
    pub prompt: String,
    /// its tokens
    pub tokens: usize,
    /// fraction of token→logit influence that flows through features, not errors
    pub replacement_score: f64,
    /// influence-weighted fraction of nodes' inputs that do not come from errors
    pub completeness_score: f64,
    /// error nodes' share of all nodes' influence on the logits
    pub error_influence_share: f64,
    /// the error node with the most influence: (layer, position, the token there, its share)
    pub darkest: Option<(usize, usize, String, f64)>,
}

/// Each probe on each dataset, and the monitor's false flags on held-out true statements.
#[derive(Debug, Clone, Serialize)]
pub struct Generalisation {
    /// the datasets (columns)
    pub datasets: Vec<String>,
    /// the probes (rows), by folder
    pub probes: Vec<String>,
    /// `auroc[probe][dataset]` over the whole dataset, or over its held-out split for the
    /// probe's own dataset (`None`: one class)
    pub auroc: Vec<Vec<Option<f64>>>,
    /// per probe: its own dataset's held-out true statements the monitor would flag
    pub false_flags: Vec<FalseFlags>,
}

/// One probe's false flags.
#[derive(Debug, Clone, Serialize)]
pub struct FalseFlags {
    /// the probe's folder
    pub probe: String,
    /// the dataset whose held-out split was read
    pub dataset: String,
    /// p(true) below which the monitor flags (its `--threshold`)
    pub threshold: f64,
    /// held-out true statements
    pub true_statements: usize,
    /// of those, flagged
    pub flagged: usize,
    /// `flagged / true_statements`
    pub rate: f64,
}

/// One dictionary's coverage, as its `metrics.json` recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// the run or layer folder
    pub source: String,
    /// the hook read
    pub hook: String,
    /// the hook reconstructed (a transcoder's output)
    pub hook_out: String,
    /// the architecture
    pub architecture: String,
    /// features
    pub d_sae: u64,
    /// held-out tokens evaluated
    pub tokens: u64,
    /// the metrics by name (fvu, explained_variance, l0, dead_fraction, dense_fraction,
    /// ce_clean, ce_spliced, ce_recovered, kl_recovered)
    pub metrics: BTreeMap<String, Option<f64>>,
}

/// What `glassbox explain` found, from `features.sqlite`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanations {
    /// features in the store
    pub features: u64,
    /// features with a readable explanation
    pub explained: u64,
    /// features whose explainer gave none
    pub failed: u64,
    /// explained features with a detection score
    pub scored: u64,
    /// the detection score an explanation must reach to count
    pub threshold: f64,
    /// scored features at or over the threshold, over the scored ones
    pub explained_share: Option<f64>,
    /// median detection score
    pub detection_median: Option<f64>,
    /// median fuzzing score
    pub fuzzing_median: Option<f64>,
    /// every detection score (the report's histogram)
    pub detection_scores: Vec<f64>,
    /// the explainer models
    pub explainer_models: Vec<String>,
    /// prompt and completion tokens of every request
    pub prompt_tokens: u64,
    /// completion tokens of every request
    pub completion_tokens: u64,
    /// wall time summed over features (concurrent features overlap)
    pub seconds: f64,
}

/// One probe's scores, from its `probe.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeScore {
    /// the folder
    pub dir: String,
    /// the dataset it was trained on
    pub data: String,
    /// the hook it reads
    pub hook: String,
    /// held-out AUROC
    pub test_auroc: Option<f64>,
    /// held-out accuracy
    pub test_accuracy: Option<f64>,
}

/// One stage's cost.
#[derive(Debug, Clone, Serialize)]
pub struct StageCost {
    /// the stage
    pub stage: String,
    /// where the figures came from: `stages.jsonl`, or a file that records wall time only
    pub source: String,
    /// wall time
    pub wall_s: f64,
    /// CPU time (`None`: not recorded)
    pub cpu_s: Option<f64>,
    /// peak resident memory (`None`: not recorded)
    pub peak_rss_bytes: Option<u64>,
    /// tokens processed
    pub tokens: Option<u64>,
    /// FLOPs counted from the shapes
    pub flops: Option<f64>,
    /// energy at the report's watts
    pub watt_hours: f64,
}

/// The cost section.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// every stage
    pub stages: Vec<StageCost>,
    /// the power draw assumed
    pub watts: f64,
    /// sums over the stages
    pub total_wall_s: f64,
    /// summed energy
    pub total_watt_hours: f64,
    /// the same study (harvest + training) on a larger model
    pub projection: Option<Projection>,
}

/// A projection of the training study to a larger model.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    /// the target model's shape
    pub target: cost::ModelShape,
    /// training tokens of the projected study
    pub tokens: f64,
    /// features of the projected dictionary (the run's expansion factor × d_model)
    pub d_sae: u64,
    /// FLOPs per token measured here (model forward to the hook + dictionary training)
    pub flops_per_token_measured: f64,
    /// FLOPs per token of the target
    pub flops_per_token_target: f64,
    /// projected seconds on this machine
    pub seconds: f64,
    /// projected energy
    pub watt_hours: f64,
    /// how it was computed
    pub formula: String,
}

/// Where the run came from.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// glassbox's version and commit (this report's)
    pub glassbox: String,
    /// the model as the run names it
    pub model: Option<String>,
    /// sha256 of the model's file (or of its folder's files, in name order)
    pub model_sha256: Option<String>,
    /// the corpus path
    pub corpus: Option<String>,
    /// sha256 of the corpus file (or of its folder's files, in name order)
    pub corpus_sha256: Option<String>,
    /// the seeds: training, the feature store's split, explaining
    pub seeds: BTreeMap<String, Value>,
    /// `config.toml` as written
    pub config: Option<Value>,
    /// every command line the ledger recorded, in order, with its glassbox
    pub commands: Vec<(String, Vec<String>, String)>,
}

/// The whole report (`REPORT.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA`]
    pub schema: String,
    /// unix seconds
    pub generated: i64,
    /// the run directory
    pub run: String,
    /// one entry per dictionary (the run's; a transcoder set's layers)
    pub coverage: Vec<Coverage>,
    /// explanations, when `glassbox explain` ran
    pub explanations: Option<Explanations>,
    /// what the dictionaries leave unexplained, per entry of `coverage`: FVU and the
    /// next-token loss gap (nats per token)
    pub dark_matter: Vec<BTreeMap<String, Value>>,
    /// the probes given
    pub lie_detector: Vec<ProbeScore>,
    /// the probes on every built-in dataset and their false flags (`None`: no probes, or
    /// not computed)
    pub generalisation: Option<Generalisation>,
    /// the prompt suite traced through the transcoder set, least explained first
    pub traced_prompts: Vec<TracedPrompt>,
    /// what each stage cost
    pub cost: Cost,
    /// where it came from
    pub provenance: Provenance,
    /// the policy's verdicts (`None`: no policy given)
    pub thresholds: Option<Vec<policy::Criterion>>,
    /// report fields against documentation requirements
    pub compliance: Vec<compliance::Row>,
    /// what the report could not fill, and how to fill it
    pub missing: Vec<String>,
}

impl Report {
    /// Every metric a policy can bound, by [`policy::METRICS`] name (`None`: not measured).
    pub fn metrics(&self) -> BTreeMap<String, Option<f64>> {
        let mut m: BTreeMap<String, Option<f64>> = policy::METRICS
            .iter()
            .map(|(k, _)| (k.to_string(), None))
            .collect();
        if let Some(c) = self.coverage.first() {
            for k in [
                "fvu",
                "explained_variance",
                "ce_recovered",
                "kl_recovered",
                "l0",
                "dead_fraction",
                "dense_fraction",
            ] {
                m.insert(k.into(), c.metrics.get(k).copied().flatten());
            }
        }
        if let Some(e) = &self.explanations {
            m.insert("explained_share".into(), e.explained_share);
            m.insert("detection_median".into(), e.detection_median);
            m.insert("fuzzing_median".into(), e.fuzzing_median);
        }
        let aurocs: Vec<f64> = self
            .lie_detector
            .iter()
            .filter_map(|p| p.test_auroc)
            .collect();
        if !aurocs.is_empty() && aurocs.len() == self.lie_detector.len() {
            m.insert(
                "probe_auroc_min".into(),
                aurocs.iter().copied().reduce(f64::min),
            );
        }
        if !self.traced_prompts.is_empty() {
            let n = self.traced_prompts.len() as f64;
            let mean = self
                .traced_prompts
                .iter()
                .map(|p| p.replacement_score)
                .sum::<f64>()
                / n;
            m.insert("replacement_score".into(), Some(mean));
        }
        if let Some(g) = self
            .generalisation
            .as_ref()
            .filter(|g| !g.false_flags.is_empty())
        {
            // the worst probe's rate
            let worst = g.false_flags.iter().map(|f| f.rate).fold(0.0, f64::max);
            m.insert("monitor_false_flag_rate".into(), Some(worst));
        }
        m
    }

    /// Why a metric has no value, for a failed threshold.
    pub fn why_missing(&self, metric: &str) -> String {
        match metric {
            "explained_share" | "detection_median" | "fuzzing_median" => {
                "no scored explanations: run glassbox explain on the run".into()
            }
            "probe_auroc_min" => "no probe with a held-out AUROC given: pass --probes DIR".into(),
            "monitor_false_flag_rate" => {
                "no probe trained on a built-in dataset given: pass --probes DIR".into()
            }
            "replacement_score" => {
                "no prompt suite traced: pass --transcoders SET (and --prompts FILE)".into()
            }
            _ => "the run has no held-out evaluation (metrics.json)".into(),
        }
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some((s[(n - 1) / 2] + s[n / 2]) / 2.0)
}

/// sha256 of a file, or of a folder's files in name order (names and contents).
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut files = Vec::new();
    if path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in
                std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
            {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    for f in files {
        if let Ok(rel) = f.strip_prefix(path) {
            h.update(rel.to_string_lossy().as_bytes());
        }
        let mut file =
            std::fs::File::open(&f).with_context(|| format!("cannot read {}", f.display()))?;
        std::io::copy(&mut file, &mut h).with_context(|| format!("cannot read {}", f.display()))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{} is not valid JSON", path.display())
    })?))
}

/// The coverage a `metrics.json` records.
fn coverage_of(dir: &Path) -> Result<Option<Coverage>> {
    let Some(m) = read_json(&dir.join(glassbox_train::run_dir::METRICS_FILE))? else {
        return Ok(None);
    };
    let e = &m["eval"];
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let metrics = [
        "fvu",
        "explained_variance",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "ce_clean",
        "ce_spliced",
        "ce_recovered",
        "kl_recovered",
    ]
    .iter()
    .map(|k| (k.to_string(), e[*k].as_f64()))
    .collect();
    Ok(Some(Coverage {
        source: dir.display().to_string(),
        hook: s("hook"),
        hook_out: s("hook_out"),
        architecture: s("architecture"),
        d_sae: e["d_sae"].as_u64().unwrap_or(0),
        tokens: e["tokens"].as_u64().unwrap_or(0),
        metrics,
    }))
}

/// Gathers the report of `input.run`. Only an unreadable run directory is an error; a
/// missing stage is named in [`Report::missing`].
pub fn gather(input: &AuditInput) -> Result<Report> {
    let run = &input.run;
    if !run.is_dir() {
        anyhow::bail!("the run directory {} does not exist", run.display());
    }
    let mut missing = Vec::new();
    let config = glassbox_train::RunConfig::read(run).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let config_json = config.as_ref().map(serde_json::to_value).transpose()?;

    // coverage: the run's dictionary, then a transcoder set's layers
    let mut coverage = Vec::new();
    match coverage_of(run)? {
        Some(c) => coverage.push(c),
        None => missing.push(format!(
            "coverage: {} has no metrics.json (the held-out evaluation `glassbox train-sae` writes)",
            run.display()
        )),
    }
    if let Some(set) = &input.transcoders {
        let index = read_json(&set.join("index.json"))?.with_context(|| {
            format!("{} has no index.json: not a transcoder set", set.display())
        })?;
        for l in index["layers"].as_array().into_iter().flatten() {
            let dir = set.join(l["path"].as_str().unwrap_or(""));
            match coverage_of(&dir)? {
                Some(c) => coverage.push(c),
                None => missing.push(format!(
                    "coverage: transcoder layer {} has no metrics.json",
                    dir.display()
                )),
            }
        }
        if input.traced.is_none() {
            missing.push("dark matter: the prompt suite was not traced (the run's model is not on this machine)".into());
        }
    }
    let dark_matter = coverage
        .iter()
        .map(|c| {
            let get = |k: &str| c.metrics.get(k).copied().flatten();
            let gap = match (get("ce_spliced"), get("ce_clean")) {
                (Some(s), Some(c)) => Some(s - c),
                _ => None,
            };
            BTreeMap::from([
                ("source".to_string(), Value::from(c.source.clone())),
                ("hook".to_string(), Value::from(c.hook_out.clone())),
                (
                    "unexplained_variance".to_string(),
                    serde_json::json!(get("fvu")),
                ),
                ("ce_gap_nats_per_token".to_string(), serde_json::json!(gap)),
                (
                    "ce_not_recovered".to_string(),
                    serde_json::json!(get("ce_recovered").map(|r| 1.0 - r)),
                ),
            ])
        })
        .collect();

    // explanations
    let store_path = run.join(glassbox_features::STORE_FILE);
    let store = if store_path.is_file() {
        Some(glassbox_features::store::FeatureStore::open(&store_path)?)
    } else {
        missing.push(format!(
            "explanations: {} has no feature store (glassbox features build)",
            run.display()
        ));
        None
    };
    let mut seeds = BTreeMap::new();
    if let Some(c) = &config {
        seeds.insert("train".to_string(), Value::from(c.seed()));
    }
    let store_meta = match &store {
        Some(s) => s.meta()?,
        None => BTreeMap::new(),
    };
    if let Some(s) = store_meta.get("split_seed") {
        seeds.insert("feature_store_split".into(), Value::from(s.clone()));
    }
    let explanations = match &store {
        Some(s) if s.has_explanations() => {
            let all = s.all_explanations()?;
            let best = glassbox_features::explanations::best_per_feature(&all);
            let detection: Vec<f64> = best
                .iter()
                .filter(|e| e.explanation.is_some())
                .filter_map(|e| e.detection)
                .collect();
            let fuzzing: Vec<f64> = best
                .iter()
                .filter(|e| e.explanation.is_some())
                .filter_map(|e| e.fuzzing)
                .collect();
            let mut models: Vec<String> = all.iter().map(|e| e.explainer_model.clone()).collect();
            models.sort();
            models.dedup();
            let explain_seeds: Vec<Value> = best
                .iter()
                .filter_map(|e| e.details.get("seed").cloned())
                .collect();
            if !explain_seeds.is_empty() {
                seeds.insert("explain_per_feature".into(), Value::from(explain_seeds));
            }
            let good = detection
                .iter()
                .filter(|&&d| d >= input.explained_threshold)
                .count();
            Some(Explanations {
                features: s.count(glassbox_features::UnitKind::Feature)?,
                explained: best.iter().filter(|e| e.explanation.is_some()).count() as u64,
                failed: best.iter().filter(|e| e.explanation.is_none()).count() as u64,
                scored: detection.len() as u64,
                threshold: input.explained_threshold,
                explained_share: (!detection.is_empty())
                    .then(|| good as f64 / detection.len() as f64),
                detection_median: median(&detection),
                fuzzing_median: median(&fuzzing),
                detection_scores: detection,
                explainer_models: models,
                prompt_tokens: all.iter().map(|e| e.prompt_tokens).sum(),
                completion_tokens: all.iter().map(|e| e.completion_tokens).sum(),
                seconds: all.iter().map(|e| e.seconds).sum(),
            })
        }
        Some(_) => {
            missing.push("explanations: none yet (glassbox explain --run DIR --sample N --explainer URL --explainer-model NAME)".into());
            None
        }
        None => None,
    };

    // the lie detector
    let mut lie_detector = Vec::new();
    for dir in &input.probes {
        let meta = read_json(&dir.join("probe.json"))?.with_context(|| {
            format!(
                "{} has no probe.json: not a probe folder (glassbox probe train --out DIR)",
                dir.display()
            )
        })?;
        lie_detector.push(ProbeScore {
            dir: dir.display().to_string(),
            data: meta["data"].as_str().unwrap_or("").into(),
            hook: meta["hook"].as_str().unwrap_or("").into(),
            test_auroc: meta["test_auroc"].as_f64().filter(|v| v.is_finite()),
            test_accuracy: meta["test_accuracy"].as_f64(),
        });
    }
    if input.probes.is_empty() {
        missing.push(
            "lie detector: no probes given (glassbox probe train … --out DIR, then --probes DIR)"
                .into(),
        );
    } else if input.generalisation.is_none() {
        missing.push("lie detector: the generalisation matrix and the false flags need the run's model on this machine".into());
    }

    // cost: the ledger, then what older files record
    let (records, torn) = ledger::read(run)?;
    if !torn.is_empty() {
        missing.push(format!(
            "cost: {} line(s) {:?} of stages.jsonl could not be read and are left out",
            torn.len(),
            torn
        ));
    }
    let mut stages: Vec<StageCost> = records
        .iter()
        .map(|r| StageCost {
            stage: r.stage.clone(),
            source: ledger::LEDGER_FILE.into(),
            wall_s: r.wall_s,
            cpu_s: Some(r.cpu_s),
            peak_rss_bytes: Some(r.peak_rss_bytes),
            tokens: Some(r.tokens),
            flops: (r.flops > 0.0).then_some(r.flops),
            watt_hours: cost::watt_hours(r.wall_s, input.watts),
        })
        .collect();
    let has = |stages: &[StageCost], s: &str| stages.iter().any(|c| c.stage == s);
    let metrics_json = read_json(&run.join(glassbox_train::run_dir::METRICS_FILE))?;
    if !has(&stages, "train") {
        if let Some(m) = &metrics_json {
            let wall = m["train_seconds_this_session"].as_f64().unwrap_or(0.0);
            stages.push(StageCost {
                stage: "train".into(),
                source: "metrics.json (wall time of the last session only)".into(),
                wall_s: wall,
                cpu_s: None,
                peak_rss_bytes: None,
                tokens: m["train_tokens"].as_u64(),
                flops: None,
                watt_hours: cost::watt_hours(wall, input.watts),
            });
        }
    }
    if !has(&stages, "features") {
        if let Some(w) = store_meta
            .get("built_seconds")
            .and_then(|s| s.parse::<f64>().ok())
        {
            stages.push(StageCost {
                stage: "features".into(),
                source: "features.sqlite meta".into(),
                wall_s: w,
                cpu_s: None,
                peak_rss_bytes: None,
                tokens: store_meta.get("tokens").and_then(|t| t.parse().ok()),
                flops: None,
                watt_hours: cost::watt_hours(w, input.watts),
            });
        }
    }
    if records.is_empty() {
        missing.push("cost: the run has no stages.jsonl (runs made before it existed): wall times from metrics.json and the store only, no CPU time, memory or FLOPs".into());
    }
    let projection = projection(input, &metrics_json, &stages);
    let total_wall_s = stages.iter().map(|s| s.wall_s).sum();
    let total_watt_hours = stages.iter().map(|s| s.watt_hours).sum();

    // provenance
    let model = config.as_ref().and_then(|c| c.model.clone());
    let model_sha256 = match &input.model_path {
        Some(p) => Some(sha256_of(p)?),
        None => None,
    };
    let corpus = config
        .as_ref()
        .and_then(|c| c.corpus.clone())
        .or_else(|| store_meta.get("corpus").cloned());
    let corpus_sha256 = match &corpus {
        Some(c) if Path::new(c).exists() => Some(sha256_of(Path::new(c))?),
        Some(c) => {
            missing.push(format!(
                "provenance: the corpus {c} is not on this machine: not hashed"
            ));
            None
        }
        None => None,
    };
    if input.model_path.is_none() {
        missing.push("provenance: the model was not found on this machine: not hashed".into());
    }
    let commands = records
        .iter()
        .map(|r| (r.stage.clone(), r.command.clone(), r.glassbox.clone()))
        .collect();

    let mut report = Report {
        schema: SCHEMA.into(),
        generated: ledger::unix_now(),
        run: run.display().to_string(),
        coverage,
        explanations,
        dark_matter,
        lie_detector,
        generalisation: input.generalisation.clone(),
        traced_prompts: {
            let mut t = input.traced.clone().unwrap_or_default();
            t.sort_by(|a, b| a.replacement_score.total_cmp(&b.replacement_score));
            t
        },
        cost: Cost {
            stages,
            watts: input.watts,
            total_wall_s,
            total_watt_hours,
            projection,
        },
        provenance: Provenance {
            glassbox: version(),
            model,
            model_sha256,
            corpus,
            corpus_sha256,
            seeds,
            config: config_json,
            commands,
        },
        thresholds: None,
        compliance: compliance::rows(),
        missing,
    };
    report.missing.sort();
    Ok(report)
}

fn projection(
    input: &AuditInput,
    metrics: &Option<Value>,
    stages: &[StageCost],
) -> Option<Projection> {
    let shape = input.model_shape.as_ref()?;
    let m = metrics.as_ref()?;
    let (d_in, d_sae, d_out) = (
        m["d_in"].as_u64()? as usize,
        m["d_sae"].as_u64()? as usize,
        m["d_out"].as_u64()? as usize,
    );
    let hook = m["hook"].as_str()?;
    let layer = hook
        .split('.')
        .nth(1)
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(shape.n_layers);
    let context = input_context(m);
    let here = shape.forward_flops(layer + 1, context, false)
        + cost::dictionary_train_flops(d_in, d_sae, d_out);
    let expansion = d_sae as f64 / d_in.max(1) as f64;
    let t = &input.target;
    let t_sae = (expansion * t.d_model as f64).round() as usize;
    // the same relative depth in the target
    let t_layer =
        ((layer + 1) as f64 / shape.n_layers.max(1) as f64 * t.n_layers as f64).ceil() as usize;
    let there = t.forward_flops(t_layer, context, false)
        + cost::dictionary_train_flops(t.d_model, t_sae, t.d_model);
    let train = stages.iter().find(|s| s.stage == "train")?;
    let seconds = cost::project(
        train.wall_s,
        train.tokens? as f64,
        here,
        input.target_tokens,
        there,
    )?;
    Some(Projection {
        target: t.clone(),
        tokens: input.target_tokens,
        d_sae: t_sae as u64,
        flops_per_token_measured: here,
        flops_per_token_target: there,
        seconds,
        watt_hours: cost::watt_hours(seconds, input.watts),
        formula: cost::PROJECTION_FORMULA.into(),
    })
}

fn input_context(m: &Value) -> usize {
    m["eval"]["context_size"].as_u64().unwrap_or(128) as usize
}

/// Writes `out.html` and `out.json` (each atomically).
pub fn write(report: &Report, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let html = out.with_extension("html");
    let json = out.with_extension("json");
    let body = serde_json::to_string_pretty(report)?;
    glassbox_atomic::write(&json, body.as_bytes())?;
    glassbox_atomic::write(&html, html::render(report).as_bytes())?;
    Ok((html, json))
}
