//! The long jobs from Python: training a dictionary ([`glassbox_train::train_sae`]) and
//! building its feature store ([`glassbox_features::build_for_run`]), with progress sent
//! to a Python object (the package's tqdm bars) and Ctrl-C stopping training after a
//! checkpoint.

use crate::{NativeDictionary, NativeModel};
use glassbox_train::{Progress, RunError, Stage};
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyKeyError, PyKeyboardInterrupt, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Harvest => "harvest",
        Stage::Train => "train",
        Stage::Evaluate => "evaluate",
        Stage::Export => "export",
    }
}

/// Forwards a job's progress to a Python object's `begin(stage, label, total, done)`,
/// `advance(stage, n)`, `status(stage, text)`, `note(text)` and `end(stage)`; an error
/// raised there is dropped (a broken progress bar must not stop a training run), except
/// a `KeyboardInterrupt`, which cancels the run.
struct PyProgress {
    sink: Option<Py<PyAny>>,
    interrupted: AtomicBool,
}

impl PyProgress {
    fn call<A: for<'py> pyo3::call::PyCallArgs<'py>>(&self, method: &str, args: A) {
        if let Some(sink) = &self.sink {
            Python::attach(|py| {
                if let Err(e) = sink.call_method1(py, method, args) {
                    // a Ctrl-C lands in whatever Python code runs: here, often
                    if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                        self.interrupted.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

impl Progress for PyProgress {
    fn begin(&self, stage: Stage, label: &str, total: u64, done: u64) {
        self.call("begin", (stage_name(stage), label.to_string(), total, done));
    }
    fn advance(&self, stage: Stage, n: u64) {
        self.call("advance", (stage_name(stage), n));
    }
    fn step(&self, l: &glassbox_train::MetricsLine) {
        let text = format!(
            "{:.0} tok/s, L0 {:.1}, FVU {:.3}, dead {:.1} %",
            l.tokens_per_s,
            l.l0,
            l.fvu,
            l.dead_fraction * 100.0
        );
        self.call("status", ("train", text));
    }
    fn status(&self, stage: Stage, text: &str) {
        self.call("status", (stage_name(stage), text.to_string()));
    }
    fn note(&self, text: &str) {
        self.call("note", (text.to_string(),));
    }
    fn end(&self, stage: Stage) {
        self.call("end", (stage_name(stage),));
    }
    fn cancelled(&self) -> bool {
        // a pending Ctrl-C in the notebook or the terminal
        if Python::attach(|py| py.check_signals().is_err()) {
            self.interrupted.store(true, Ordering::Relaxed);
        }
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// A run's error as the exception a Python user expects.
fn run_err(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    if let Some(r) = e.downcast_ref::<RunError>() {
        return match r {
            RunError::Invalid(_) => PyValueError::new_err(msg),
            RunError::AlreadyTrained(dir) => PyFileExistsError::new_err(format!(
                "{} already holds a training run; pass resume=True to continue it or choose another out",
                dir.display()
            )),
            RunError::Cancelled { .. } => PyKeyboardInterrupt::new_err(msg),
        };
    }
    let unknown_hook = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<glassbox_model::ModelError>(),
            Some(glassbox_model::ModelError::UnknownHook { .. })
        )
    });
    if unknown_hook || msg.contains("unknown hook") {
        return PyKeyError::new_err(msg);
    }
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::NotFound {
                return PyFileNotFoundError::new_err(msg);
            }
        }
        if let Some(d) = cause.downcast_ref::<glassbox_data::DataError>() {
            return if d.to_string().contains("does not exist") {
                PyFileNotFoundError::new_err(msg)
            } else {
                PyValueError::new_err(msg)
            };
        }
        if cause.downcast_ref::<glassbox_model::ModelError>().is_some() {
            return PyValueError::new_err(msg);
        }
    }
    PyRuntimeError::new_err(msg)
}

/// The run's options as JSON: `run` (the run's own: corpus, context_size, …) and
/// `train` (a [`glassbox_sae::train::TrainConfig`]'s fields, over the recommended
/// configuration of the architecture).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    arch: String,
    tokens: usize,
    batch: usize,
    corpus: Option<String>,
    text_field: Option<String>,
    context_size: Option<usize>,
    buffer_tokens: Option<usize>,
    cache_dir: Option<String>,
    checkpoint_every_tokens: Option<usize>,
    eval_tokens: Option<usize>,
    hook_out: Option<String>,
    resume: bool,
    #[serde(default)]
    train: serde_json::Map<String, serde_json::Value>,
}

/// Trains a dictionary on `model`'s activations at `hook` into the run directory `out`;
/// returns the dictionary and `metrics.json` (as JSON text).
#[pyfunction]
#[pyo3(signature = (model, hook, out, options, progress=None))]
pub fn train_sae(
    py: Python<'_>,
    model: &NativeModel,
    hook: String,
    out: String,
    options: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<(NativeDictionary, String)> {
    let o: Options = serde_json::from_str(options)
        .map_err(|e| PyValueError::new_err(format!("train_sae: {e}")))?;
    let arch = glassbox_sae::train::TrainArch::parse(&o.arch).ok_or_else(|| {
        PyValueError::new_err(format!(
            "arch {:?} is not one of: topk, batchtopk, standard, jumprelu, gated",
            o.arch
        ))
    })?;
    if o.batch == 0 || o.tokens < o.batch {
        return Err(PyValueError::new_err(format!(
            "tokens ({}) must be at least one batch ({})",
            o.tokens, o.batch
        )));
    }
    // the caller's fields over the recommended configuration; unknown names are refused
    let mut train = serde_json::to_value(glassbox_sae::train::TrainConfig::for_run(
        arch, o.tokens, o.batch,
    ))
    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    for (k, v) in o.train {
        train[k.as_str()] = v;
    }
    let train: glassbox_sae::train::TrainConfig = serde_json::from_value(train)
        .map_err(|e| PyValueError::new_err(format!("train_sae: {e}")))?;
    let mut opts = glassbox_train::SaeRunOptions::new(&hook, o.tokens, train);
    opts.hook_out = o.hook_out;
    opts.corpus = o.corpus.map(Into::into);
    if let Some(f) = o.text_field {
        opts.text_field = f;
    }
    opts.context_size = o.context_size.unwrap_or(opts.context_size);
    opts.buffer_tokens = o.buffer_tokens.unwrap_or(opts.buffer_tokens);
    opts.cache_dir = o.cache_dir.map(Into::into);
    opts.checkpoint_every_tokens = o
        .checkpoint_every_tokens
        .unwrap_or(opts.checkpoint_every_tokens);
    opts.eval_tokens = o.eval_tokens.unwrap_or(opts.eval_tokens);
    opts.resume = o.resume;
    let sink = PyProgress {
        sink: progress,
        interrupted: AtomicBool::new(false),
    };
    let m = Arc::clone(&model.model);
    let out_dir = std::path::PathBuf::from(&out);
    let run = py
        .detach(|| glassbox_train::train_sae(&m, &opts, &out_dir, &sink))
        .map_err(run_err)?;
    let metrics =
        serde_json::to_string(&run.metrics).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((
        NativeDictionary {
            dict: Arc::new(run.dictionary),
            dir: out,
        },
        metrics,
    ))
}

/// Builds `run_dir/features.sqlite` for a training run with `model` over `tokens`
/// held-out tokens (every held-out window when `None`); returns the build's summary as
/// JSON text.
#[pyfunction]
#[pyo3(signature = (model, run_dir, tokens=None, top_k=20, neurons=true, progress=None))]
pub fn build_features(
    py: Python<'_>,
    model: &NativeModel,
    run_dir: String,
    tokens: Option<usize>,
    top_k: usize,
    neurons: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    if top_k == 0 {
        return Err(PyValueError::new_err("top_k must be at least 1"));
    }
    let dir = std::path::PathBuf::from(&run_dir);
    if !dir.is_dir() {
        return Err(PyFileNotFoundError::new_err(format!(
            "the run directory {run_dir} does not exist"
        )));
    }
    let m = Arc::clone(&model.model);
    let sink = PyProgress {
        sink: progress,
        interrupted: AtomicBool::new(false),
    };
    let opts = glassbox_features::BuildOptions {
        top_k,
        neurons,
        ..Default::default()
    };
    let spec = m.source.display().to_string();
    let report = py
        .detach(|| {
            let started = std::cell::Cell::new(false);
            glassbox_features::build_for_run(
                &m,
                &spec,
                &dir,
                || {
                    glassbox_hub::fetch_default_corpus()
                        .ok()
                        .map(|c| c.join("data"))
                },
                tokens,
                &opts,
                &mut |line| sink.note(line),
                |n, total| {
                    if !started.replace(true) {
                        sink.begin(Stage::Evaluate, "features (windows)", total as u64, 0);
                    }
                    sink.advance(Stage::Evaluate, n as u64);
                },
            )
        })
        .map_err(|e| match &e {
            glassbox_features::FeaturesError::BadInput(_)
            | glassbox_features::FeaturesError::Model(_) => PyValueError::new_err(e.to_string()),
            _ => PyRuntimeError::new_err(e.to_string()),
        });
    sink.end(Stage::Evaluate);
    let report = report?;
    let summary = serde_json::json!({
        "path": report.path.display().to_string(),
        "tokens": report.tokens,
        "windows": report.windows,
        "seconds": report.seconds,
        "phases": report.phases.iter().map(|(p, s)| (p.to_string(), *s)).collect::<std::collections::BTreeMap<_, _>>(),
        "comparison": report.comparison.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    Ok(summary.to_string())
}

fn analysis_err(e: glassbox_analysis::AnalysisError) -> PyErr {
    match &e {
        glassbox_analysis::AnalysisError::BadInput(_) => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Activation patching of one prompt pair (`glassbox patch`); the report as JSON text,
/// equal to what `glassbox patch --json` writes.
#[pyfunction]
#[pyo3(signature = (model, clean, corrupt, answer, wrong, site="resid_pre", method="exact", compare=true))]
#[allow(clippy::too_many_arguments)]
pub fn patch(
    py: Python<'_>,
    model: &NativeModel,
    clean: String,
    corrupt: String,
    answer: String,
    wrong: String,
    site: &str,
    method: &str,
    compare: bool,
) -> PyResult<String> {
    use glassbox_analysis::patching::{patch_prompts, PatchMethod, PatchSite};
    let site = PatchSite::parse(site).map_err(analysis_err)?;
    let method = PatchMethod::parse(method, compare).map_err(analysis_err)?;
    let m = Arc::clone(&model.model);
    let report = py
        .detach(|| patch_prompts(&m, &clean, &corrupt, &answer, &wrong, site, method))
        .map_err(analysis_err)?;
    serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// An IOI study (`glassbox ioi`): exact patching averaged over `n` generated prompts;
/// the report as JSON text, equal to what `glassbox ioi --json` writes.
#[pyfunction]
#[pyo3(signature = (model, n=12, seed=0, site="attn_head", template=0))]
pub fn ioi(
    py: Python<'_>,
    model: &NativeModel,
    n: usize,
    seed: u64,
    site: &str,
    template: usize,
) -> PyResult<String> {
    use glassbox_analysis::patching::PatchSite;
    let site = PatchSite::parse(site).map_err(analysis_err)?;
    let m = Arc::clone(&model.model);
    let report = py
        .detach(|| glassbox_analysis::ioi::study(&m, n, seed, site, template, |_, _| {}))
        .map_err(analysis_err)?;
    serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn probe_err(e: glassbox_probes::ProbeError) -> PyErr {
    match &e {
        glassbox_probes::ProbeError::BadInput(m) if m.contains("does not exist") => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        glassbox_probes::ProbeError::BadInput(_) => PyValueError::new_err(e.to_string()),
        glassbox_probes::ProbeError::Model(glassbox_model::ModelError::UnknownHook { .. }) => {
            PyKeyError::new_err(e.to_string())
        }
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A truth-probe sweep over layers (`glassbox probe sweep`): the report as JSON text,
/// equal to what `glassbox probe sweep --json` prints. `data`: a built-in dataset's name
/// or a CSV file; `layers`: every layer when `None`.
#[pyfunction]
#[pyo3(signature = (model, data, hook="resid_post", position="last", method="lr", layers=None, seed=0, cache_dir=None))]
#[allow(clippy::too_many_arguments)]
pub fn probe_sweep(
    py: Python<'_>,
    model: &NativeModel,
    data: &str,
    hook: &str,
    position: &str,
    method: &str,
    layers: Option<Vec<usize>>,
    seed: u64,
    cache_dir: Option<String>,
) -> PyResult<String> {
    use glassbox_probes::sweep::{sweep_report, ProbeSpec};
    let spec = ProbeSpec::new(
        hook,
        glassbox_probes::activations::Position::parse(position).map_err(probe_err)?,
        glassbox_probes::probe::Method::parse(method).map_err(probe_err)?,
        seed,
        Some(
            cache_dir
                .map(Into::into)
                .unwrap_or_else(|| glassbox_hub::glassbox_home().join("activations")),
        ),
    );
    let data = glassbox_probes::dataset::Dataset::load(data).map_err(probe_err)?;
    let n_layers = model.model.config().n_layers;
    let layers = layers.unwrap_or_else(|| (0..n_layers).collect());
    if let Some(&l) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(PyValueError::new_err(format!(
            "layer {l} is beyond the model's {n_layers} layers"
        )));
    }
    let m = Arc::clone(&model.model);
    let report = py
        .detach(|| sweep_report(&m, &data, &spec, &layers))
        .map_err(probe_err)?;
    serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// The attribution graph of `prompt` through the transcoder set at `transcoders`
/// (`glassbox trace`): the pruned graph as JSON text, as `glassbox trace --out` writes
/// it, and the notes the CLI prints.
#[pyfunction]
#[pyo3(signature = (model, transcoders, prompt, targets=Vec::new(), max_feature_nodes=None, logit_probability=None, max_logits=None, node_threshold=None, edge_threshold=None, max_tokens=None))]
#[allow(clippy::too_many_arguments)]
pub fn trace(
    py: Python<'_>,
    model: &NativeModel,
    transcoders: String,
    prompt: String,
    targets: Vec<String>,
    max_feature_nodes: Option<usize>,
    logit_probability: Option<f32>,
    max_logits: Option<usize>,
    node_threshold: Option<f32>,
    edge_threshold: Option<f32>,
    max_tokens: Option<usize>,
) -> PyResult<(String, Vec<String>)> {
    use glassbox_circuits::{AttributionOptions, PruneOptions, TraceOptions, TranscoderSet};
    let circuit_err = |e: glassbox_circuits::CircuitError| match &e {
        glassbox_circuits::CircuitError::BadInput(_)
        | glassbox_circuits::CircuitError::Model(_) => PyValueError::new_err(e.to_string()),
        glassbox_circuits::CircuitError::Io(_, io) if io.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        _ => PyRuntimeError::new_err(e.to_string()),
    };
    let dir = std::path::PathBuf::from(&transcoders);
    if !dir.is_dir() {
        return Err(PyFileNotFoundError::new_err(format!(
            "no transcoder set at {transcoders}: train one with `glassbox train-transcoders --out DIR`"
        )));
    }
    let m = Arc::clone(&model.model);
    let a = AttributionOptions::default();
    let p = PruneOptions::default();
    let opts = TraceOptions {
        targets,
        attribution: AttributionOptions {
            max_feature_nodes: max_feature_nodes.unwrap_or(a.max_feature_nodes),
            logit_probability: logit_probability.unwrap_or(a.logit_probability),
            max_logits: max_logits.unwrap_or(a.max_logits),
            ..a
        },
        prune: PruneOptions {
            node_threshold: node_threshold.unwrap_or(p.node_threshold),
            edge_threshold: edge_threshold.unwrap_or(p.edge_threshold),
        },
        max_tokens: max_tokens.unwrap_or(glassbox_circuits::MAX_TRACE_TOKENS),
    };
    let spec = m.source.display().to_string();
    let trace = py
        .detach(|| {
            let set = TranscoderSet::load(&dir, m.config())?;
            glassbox_circuits::trace_prompt(&m, &spec, &set, &transcoders, &prompt, &opts)
        })
        .map_err(circuit_err)?;
    let json =
        serde_json::to_string(&trace.json).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((json, trace.notes))
}
