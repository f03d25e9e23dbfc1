//! `glassbox audit`: the run's audit report as REPORT.html and REPORT.json, judged
//! against a policy's thresholds (a failed criterion fails the exit status, so it can
//! gate a pipeline).

use anyhow::{Context, Result};
use glassbox_audit::cost::ModelShape;
use glassbox_audit::policy::Policy;
use glassbox_audit::AuditInput;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The run directory (metrics.json, features.sqlite, stages.jsonl, config.toml)
    #[arg(long)]
    run: PathBuf,
    /// Probe folders (`glassbox probe train --out DIR`) for the lie-detector section
    #[arg(long, num_args = 1..)]
    probes: Vec<PathBuf>,
    /// A transcoder set (its index.json): each layer's held-out evaluation joins coverage,
    /// and the prompt suite is traced through it (replacement and completeness scores,
    /// the error nodes' share of influence)
    #[arg(long)]
    transcoders: Option<PathBuf>,
    /// The prompt suite for --transcoders: one prompt per line (default: a built-in
    /// handful: IOI, a capital, a count, a date)
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// A thresholds file (`[thresholds]` with `min_METRIC` or `max_METRIC = value`); any failed
    /// criterion exits with status 3
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Output path without extension: writes REPORT.html and REPORT.json (default:
    /// RUN/audit)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Power draw assumed for energy, in watts (this machine: measure it, or use the
    /// CPU's TDP)
    #[arg(long, default_value_t = 65.0)]
    watts: f64,
    /// Detection score from which an explanation counts as good
    #[arg(long, default_value_t = 0.7)]
    explained_threshold: f64,
    /// Training tokens of the projected study (on Llama-3.2-1B's shape)
    #[arg(long, default_value_t = 1e9)]
    project_tokens: f64,
    /// p(true) below which the monitor flags a statement (`monitor --threshold`), for
    /// the false-flag rate
    #[arg(long, default_value_t = 0.2)]
    flag_threshold: f64,
}

impl Args {
    /// The defaults for `run` (what `quickstart` writes at its end).
    pub fn for_run(run: &Path) -> Self {
        Args {
            run: run.to_path_buf(),
            probes: Vec::new(),
            transcoders: None,
            prompts: None,
            policy: None,
            out: None,
            watts: 65.0,
            explained_threshold: 0.7,
            project_tokens: 1e9,
            flag_threshold: 0.2,
        }
    }
}

/// The exit status of a report whose policy failed (errors exit with 1).
pub const POLICY_FAILED: i32 = 3;

fn shape_of(model: &glassbox_model::Model, name: &str) -> ModelShape {
    let c = &model.transformer.config;
    ModelShape {
        name: name.to_string(),
        d_model: c.d_model,
        d_mlp: c.d_mlp,
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        d_head: c.d_head,
        d_vocab: c.d_vocab,
        gated_mlp: c.gated_mlp,
    }
}

/// The model file the run names, when it is on this machine.
fn model_path(spec: &str) -> Option<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        return Some(p.to_path_buf());
    }
    match spec {
        "default" | glassbox_hub::DEFAULT_MODEL_FILE => {
            Some(glassbox_hub::default_model_path()).filter(|p| p.is_file())
        }
        _ => None,
    }
}

/// Writes the report; returns whether every criterion passed (true without a policy).
pub fn write_report(a: &Args) -> Result<bool> {
    // refuse a bad policy before any work
    let policy = a.policy.as_deref().map(Policy::read).transpose()?;
    anyhow::ensure!(a.watts > 0.0, "--watts must be positive");
    let config = glassbox_train::RunConfig::read(&a.run)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?
        .unwrap_or_default();
    let path = config.model.as_deref().and_then(model_path);
    // the model: its shape for FLOPs, and the probes' readings
    let model = match &path {
        Some(p) => match glassbox_model::load_model(p) {
            Ok(m) => Some(m),
            Err(e) => {
                // the report is still written; what needs the model says so under `missing`
                eprintln!("warning: cannot open the run's model {}: {e}", p.display());
                None
            }
        },
        None => None,
    };
    let shape = model
        .as_ref()
        .map(|m| shape_of(m, config.model.as_deref().unwrap_or("model")));
    let traced = match (&model, &a.transcoders) {
        (Some(m), Some(set)) => Some(trace_suite(
            m,
            config.model.as_deref().unwrap_or(""),
            set,
            a.prompts.as_deref(),
        )?),
        _ => None,
    };
    let generalisation = match &model {
        Some(m) if !a.probes.is_empty() => Some(generalisation(m, &a.probes, a.flag_threshold)?),
        _ => None,
    };
    let input = AuditInput {
        run: a.run.clone(),
        probes: a.probes.clone(),
        transcoders: a.transcoders.clone(),
        model_path: path,
        model_shape: shape,
        watts: a.watts,
        explained_threshold: a.explained_threshold,
        target: ModelShape::llama_3_2_1b(),
        target_tokens: a.project_tokens,
        generalisation,
        traced,
    };
    let mut report = glassbox_audit::gather(&input)?;
    let mut passed = true;
    if let Some(p) = &policy {
        let metrics = report.metrics();
        let verdicts = p.judge(&metrics, &|m| report.why_missing(m));
        passed = verdicts.iter().all(|c| c.pass);
        report.thresholds = Some(verdicts);
    }
    let out = a.out.clone().unwrap_or_else(|| a.run.join("audit"));
    let (html, json) = glassbox_audit::write(&report, &out)
        .with_context(|| format!("cannot write the report at {}", out.display()))?;
    println!("wrote {} and {}", html.display(), json.display());
    for c in &report.coverage {
        let m = |k: &str| c.metrics.get(k).copied().flatten();
        println!(
            "  coverage {}: FVU {}, CE recovered {}, L0 {}, dead {}",
            c.hook_out,
            fmt(m("fvu")),
            fmt(m("ce_recovered")),
            fmt(m("l0")),
            fmt(m("dead_fraction"))
        );
    }
    if let Some(e) = &report.explanations {
        println!(
            "  explanations: {} of {} features explained, median detection {}",
            e.explained,
            e.features,
            fmt(e.detection_median)
        );
    }
    println!(
        "  cost: {:.1} s over {} stages, {:.3} Wh at {} W",
        report.cost.total_wall_s,
        report.cost.stages.len(),
        report.cost.total_watt_hours,
        report.cost.watts
    );
    for m in &report.missing {
        println!("  not in the report: {m}");
    }
    if let Some(v) = &report.thresholds {
        for c in v {
            println!(
                "  {} {}: {} {} {} ({})",
                if c.pass { "PASS" } else { "FAIL" },
                c.key,
                fmt(c.value),
                if c.bound == "min" { "≥" } else { "≤" },
                c.limit,
                c.note.as_deref().unwrap_or("measured")
            );
        }
    }
    Ok(passed)
}

/// The prompt suite when none is given.
const DEFAULT_PROMPTS: [&str; 4] = [
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "One, two, three, four,",
    "The day after Monday is",
];

/// Each prompt traced through the set as `glassbox trace` does by default: its scores,
/// and the error nodes' share of influence with the most influential one.
fn trace_suite(
    model: &glassbox_model::Model,
    model_spec: &str,
    set_dir: &Path,
    prompts: Option<&Path>,
) -> Result<Vec<glassbox_audit::TracedPrompt>> {
    use glassbox_circuits::NodeKind;
    let prompts: Vec<String> = match prompts {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the prompt suite {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect(),
    };
    anyhow::ensure!(!prompts.is_empty(), "the prompt suite is empty");
    let set = glassbox_circuits::TranscoderSet::load(set_dir, model.config())
        .with_context(|| format!("transcoder set {}", set_dir.display()))?;
    let opts = glassbox_circuits::TraceOptions {
        targets: Vec::new(),
        attribution: Default::default(),
        prune: Default::default(),
        max_tokens: glassbox_circuits::MAX_TRACE_TOKENS,
    };
    let tok = model.tokenizer()?;
    let bar = crate::open::progress(prompts.len(), "tracing the prompt suite");
    let mut out = Vec::new();
    for prompt in &prompts {
        let t = glassbox_circuits::trace_prompt(
            model,
            model_spec,
            &set,
            &set_dir.display().to_string(),
            prompt,
            &opts,
        )
        .with_context(|| format!("tracing {prompt:?}"))?;
        let (g, p) = (&t.graph, &t.pruned);
        let mut total = 0.0f64;
        let mut errors = 0.0f64;
        let mut darkest: Option<(usize, usize, f64)> = None;
        for (node, &inf) in g.nodes.iter().zip(&p.influence) {
            let inf = inf.abs() as f64;
            match node.kind {
                NodeKind::Logit { .. } => continue,
                NodeKind::Error {
                    layer, position, ..
                } => {
                    errors += inf;
                    if darkest.is_none_or(|d| inf > d.2) {
                        darkest = Some((layer, position, inf));
                    }
                }
                _ => {}
            }
            total += inf;
        }
        out.push(glassbox_audit::TracedPrompt {
            prompt: prompt.clone(),
            tokens: t.tokens.len(),
            replacement_score: p.replacement_score as f64,
            completeness_score: p.completeness_score as f64,
            error_influence_share: errors / total.max(1e-30),
            darkest: darkest.map(|(l, pos, inf)| {
                (
                    l,
                    pos,
                    tok.token_text(t.tokens[pos]),
                    inf / total.max(1e-30),
                )
            }),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Each probe read on every built-in dataset (AUROC), and on its own dataset's held-out
/// split (recomputed from the seed its `probe.json` records) the true statements the
/// monitor would flag.
fn generalisation(
    model: &glassbox_model::Model,
    dirs: &[PathBuf],
    threshold: f64,
) -> Result<glassbox_audit::Generalisation> {
    use glassbox_probes::dataset::{Dataset, BUILTIN};
    let datasets: Vec<Dataset> = BUILTIN
        .iter()
        .map(|b| Dataset::load(&format!("builtin:{b}")))
        .collect::<std::result::Result<_, _>>()?;
    let (mut probes, mut auroc, mut false_flags) = (Vec::new(), Vec::new(), Vec::new());
    for dir in dirs {
        let (probe, meta) = glassbox_probes::store::load(dir)?;
        glassbox_probes::store::check_compatible(&meta, &probe, model)
            .with_context(|| format!("the probe {} does not fit the run's model", dir.display()))?;
        let mut row = Vec::new();
        for d in &datasets {
            let texts: Vec<String> = d.statements.iter().map(|s| s.text.clone()).collect();
            let acts = glassbox_probes::activations::collect(
                model,
                &texts,
                &meta.hook,
                &[meta.layer],
                meta.position,
                None,
            )?;
            let scores: Vec<f64> = acts[0].iter().map(|x| probe.score(x)).collect();
            let labels = d.labels();
            if d.name != meta.data {
                row.push(glassbox_probes::metrics::auroc(&scores, &labels));
            } else {
                // its own dataset: the held-out split it was trained beside
                // ("stratified 75/25, seed S"), so the diagonal is probe.json's test_auroc
                let seed = meta
                    .split
                    .rsplit("seed ")
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let (_, test) = d.split(0.25, seed);
                let held: Vec<f64> = test.iter().map(|&i| scores[i]).collect();
                let held_labels: Vec<u8> = test.iter().map(|&i| labels[i]).collect();
                row.push(glassbox_probes::metrics::auroc(&held, &held_labels));
                let truths: Vec<usize> = test
                    .into_iter()
                    .filter(|&i| d.statements[i].label == 1)
                    .collect();
                let flagged = truths
                    .iter()
                    .filter(|&&i| probe.prob(&acts[0][i]) < threshold)
                    .count();
                false_flags.push(glassbox_audit::FalseFlags {
                    probe: dir.display().to_string(),
                    dataset: d.name.clone(),
                    threshold,
                    true_statements: truths.len(),
                    flagged,
                    rate: flagged as f64 / truths.len().max(1) as f64,
                });
            }
        }
        probes.push(dir.display().to_string());
        auroc.push(row);
    }
    Ok(glassbox_audit::Generalisation {
        datasets: datasets.iter().map(|d| d.name.clone()).collect(),
        probes,
        auroc,
        false_flags,
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

pub fn run(a: Args) -> Result<()> {
    if !write_report(&a)? {
        eprintln!("error: the run fails its policy (see FAIL lines above)");
        std::process::exit(POLICY_FAILED);
    }
    Ok(())
}

/// Appends a finished stage to the run's ledger (`stages.jsonl`); a ledger that cannot
/// be written costs the audit this stage's line, not the stage its result.
pub fn record_stage(dir: &Path, meter: glassbox_audit::ledger::Meter, tokens: u64, flops: f64) {
    let rec = meter.finish(tokens, flops);
    if let Err(e) = glassbox_audit::ledger::append(dir, &rec) {
        eprintln!(
            "warning: {e:#}: the audit report will not have the cost of this `{}` stage",
            rec.stage
        );
    }
}

/// FLOPs per token of `model`'s forward pass up to and through `hook`'s block, at
/// windows of `context` tokens.
pub fn forward_flops_to(model: &glassbox_model::Model, hook: &str, context: usize) -> f64 {
    let shape = shape_of(model, "");
    let layers = glassbox_model::hooks::layer_of(hook).map_or(shape.n_layers, |l| l + 1);
    shape.forward_flops(layers, context, hook.starts_with("ln_final"))
}
