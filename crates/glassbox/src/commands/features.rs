use crate::open::{open_dictionary, open_model, warn_on_processing_mismatch, LateBar};
use anyhow::{Context, Result};
use glassbox_features::run_dir::{read_run, RunConfig};
use glassbox_features::store::{FeatureStore, Order};
use glassbox_features::{BuildOptions, UnitKind, STORE_FILE};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum What {
    /// Build DIR/features.sqlite: statistics, top and sampled contexts, logit effects and
    /// neighbours of every feature, and the MLP-neuron baseline, over held-out windows
    Build(BuildArgs),
    /// Print a feature store's summary and comparison, or one feature or neuron
    Show(ShowArgs),
    /// Write the dashboards as static HTML (list, every feature and neuron page, the
    /// comparison), readable from disk without a server
    Export(ExportArgs),
    /// Draw a feature's or neuron's activation histogram as a picture (.png or .svg)
    Plot(PlotArgs),
    /// List the explanations `glassbox explain` stored, best scored first, or export
    /// them in Neuronpedia's explanation JSON
    Explanations(ExplanationsArgs),
}

#[derive(clap::Args)]
pub struct ExplanationsArgs {
    /// A features.sqlite file, or the run directory that holds one
    path: PathBuf,
    /// Write every explanation as Neuronpedia's explanation export (a JSON list) here
    #[arg(long)]
    neuronpedia: Option<PathBuf>,
    /// Neuronpedia's `modelId` (default: the store's model)
    #[arg(long)]
    model_id: Option<String>,
    /// Neuronpedia's `layer`, the SAE's id there (default: LAYER-glassbox-HOOK, e.g.
    /// 15-glassbox-resid-pre)
    #[arg(long)]
    sae_id: Option<String>,
    /// Explanations listed (by detection score)
    #[arg(long, default_value_t = 20)]
    top: usize,
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A features.sqlite file, or the run directory that holds one
    #[arg(long)]
    run: PathBuf,
    #[arg(long, conflicts_with = "neuron", required_unless_present = "neuron", value_parser = crate::names::unit_id_u32)]
    feature: Option<u32>,
    #[arg(long, value_parser = crate::names::unit_id_u32)]
    neuron: Option<u32>,
    /// Output file: .png (rasterised at 2×) or .svg
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The run directory (features.sqlite and the dictionary)
    #[arg(long)]
    run: PathBuf,
    /// Output folder (new, empty, or an earlier export)
    #[arg(long)]
    html: PathBuf,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// A train-sae run directory: its dictionary and config.toml (model, hook, corpus)
    #[arg(long, conflicts_with = "sae", required_unless_present = "sae")]
    run: Option<PathBuf>,
    /// A dictionary directory (SAELens or sparsify) or hf:ORG/REPO[/SUB/FOLDER]; needs --model
    #[arg(long)]
    sae: Option<PathBuf>,
    /// The model (default with --run: the one config.toml names)
    #[arg(long)]
    model: Option<String>,
    /// The hook the dictionary reads (default: config.toml's, then the dictionary's)
    #[arg(long)]
    hook: Option<String>,
    /// Corpus file or folder (default: config.toml's, then the fetched State of the Union)
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// JSON-lines / Parquet text field (default: config.toml's, then `text`)
    #[arg(long)]
    text_field: Option<String>,
    /// Window length (default: config.toml's, then the dictionary's, then 128)
    #[arg(long)]
    context_size: Option<usize>,
    /// Seed of the window shuffle and held-out split (default: the run's, then 0)
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluated tokens (default: every held-out window)
    #[arg(long)]
    tokens: Option<usize>,
    /// Output file (default: DIR/features.sqlite; required for an hf: dictionary)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Top activating examples per unit
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Tokens of context on each side of an example
    #[arg(long, default_value_t = 10)]
    context_radius: usize,
    /// Windows per forward pass
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Skip the MLP-neuron baseline
    #[arg(long)]
    no_neurons: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A features.sqlite file, or the run directory that holds one
    path: PathBuf,
    /// Show one feature
    #[arg(long, conflicts_with = "neuron", value_parser = crate::names::unit_id_u32)]
    feature: Option<u32>,
    /// Show one MLP neuron
    #[arg(long, value_parser = crate::names::unit_id_u32)]
    neuron: Option<u32>,
    /// Units listed in the summary
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Build(a) => build(a),
        What::Show(a) => show(a),
        What::Plot(a) => plot(a),
        What::Export(a) => export(&a.run, &a.html),
        What::Explanations(a) => explanations(a),
    }
}

/// `config.toml` records the model's file name; the default model's resolves to its alias.
pub(crate) fn resolve_spec(spec: &str) -> String {
    if spec == glassbox_hub::DEFAULT_MODEL_FILE && !Path::new(spec).exists() {
        "default".into()
    } else {
        spec.into()
    }
}

fn build(a: BuildArgs) -> Result<()> {
    anyhow::ensure!(a.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(a.top_k > 0, "--top-k must be at least 1");
    let (source, cfg) = match (&a.run, &a.sae) {
        (Some(run), _) => (run.clone(), Some(read_run(run)?)),
        (None, Some(sae)) => (sae.clone(), None),
        (None, None) => anyhow::bail!("give --run DIR (a train-sae run) or --sae DIR --model M"),
    };
    let from_run = |f: fn(&RunConfig) -> Option<String>| cfg.as_ref().and_then(f);
    let (dict, dict_dir) = open_dictionary(&source)?;
    // a fetched dictionary's folder is the HF cache's: the store goes where --out says
    let fetched = dict_dir != source;
    anyhow::ensure!(
        !fetched || a.out.is_some(),
        "--sae {} was fetched into the HF cache ({}); give --out FILE.sqlite for its feature store",
        source.display(),
        dict_dir.display()
    );
    let spec = a
        .model
        .clone()
        .or_else(|| from_run(|c| c.model.clone()))
        .context("--model is required (the run's config.toml names none)")?;
    let model = open_model(&resolve_spec(&spec))?;
    warn_on_processing_mismatch(&dict_dir, &model);
    let hook = a
        .hook
        .clone()
        .or_else(|| from_run(|c| c.hook.clone()))
        .or_else(|| dict.hook_name.clone())
        .context("the dictionary names no hook (no hook_name in cfg.json): give --hook")?;
    // refuse a dictionary that does not fit before reading the corpus
    glassbox_features::check_hooks(&model.transformer, &dict, &hook, !a.no_neurons)?;
    let corpus = match a
        .corpus
        .clone()
        .or_else(|| from_run(|c| c.corpus.clone()).map(PathBuf::from))
    {
        Some(c) => c,
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let text_field = a
        .text_field
        .clone()
        .or_else(|| from_run(|c| c.text_field.clone()))
        .unwrap_or_else(|| "text".into());
    let context_size = a
        .context_size
        .or_else(|| cfg.as_ref().and_then(|c| c.context_size))
        .or_else(|| glassbox_features::held_out::dictionary_context_size(&dict))
        .unwrap_or(128);
    let seed = a
        .seed
        .or_else(|| cfg.as_ref().map(|c| c.seed()))
        .unwrap_or(0);
    let out = a.out.clone().unwrap_or_else(|| dict_dir.join(STORE_FILE));
    let opts = BuildOptions {
        top_k: a.top_k,
        context_radius: a.context_radius,
        batch_windows: a.batch,
        neurons: !a.no_neurons,
        ..BuildOptions::default()
    };
    // where a fetched dictionary came from, for a reader on another machine
    let meta = if fetched {
        vec![("sae_spec".to_string(), source.display().to_string())]
    } else {
        Vec::new()
    };
    let input = glassbox_features::HeldOutStore {
        model: &model,
        model_spec: spec.clone(),
        dict: &dict,
        dict_dir: dict_dir.clone(),
        hook,
        corpus,
        text_field,
        context_size,
        seed,
        tokens: a.tokens,
        meta,
    };
    let bar = LateBar::new("features (windows)");
    let meter = glassbox_audit::ledger::Meter::start("features");
    let report = glassbox_features::build_held_out(
        &input,
        &opts,
        &out,
        &mut |line| eprintln!("{line}"),
        |n, total| bar.advance(n, total),
    )?;
    bar.finish();
    // a run directory's store joins its ledger (a store written elsewhere has none)
    if out.parent() == Some(dict_dir.as_path()) && !fetched {
        let per_token = crate::commands::audit::forward_flops_to(&model, &input.hook, context_size)
            + glassbox_audit::cost::dictionary_forward_flops(dict.d_in, dict.d_sae, dict.d_out);
        crate::commands::audit::record_stage(
            &dict_dir,
            meter,
            report.tokens,
            per_token * report.tokens as f64,
        );
    }
    let pass = report
        .phases
        .iter()
        .find(|(p, _)| *p == "pass")
        .map_or(report.seconds, |p| p.1);
    println!(
        "wrote {}: {} tokens in {} windows, {:.1} s ({:.0} tokens/s in the pass)",
        report.path.display(),
        report.tokens,
        report.windows,
        report.seconds,
        report.tokens as f64 / pass.max(1e-9)
    );
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|(p, s)| format!("{p} {s:.1} s"))
        .collect();
    println!("  {}", phases.join(", "));
    if let Some(m) = glassbox_model::MassiveNorm::from_cfg(&dict.extra_cfg) {
        println!(
            "  {} massive-activation rows left out ({} norm over {:.1}, as in training)",
            report.analysis.massive_excluded, m.hook, m.threshold
        );
    }
    print_comparison(&report.comparison, opts.top_k);
    Ok(())
}

fn print_comparison(c: &[(String, f64)], top_k: usize) {
    let get = |k: &str| c.iter().find(|(n, _)| n == k).map(|p| p.1);
    if get("neuron_units").is_none() {
        return;
    }
    println!("are features more monosemantic than neurons? (over units that fired; top-{top_k} examples)");
    println!("  {:<44} {:>10} {:>10}", "", "features", "neurons");
    let rows = [
        ("units", "units", 0),
        ("alive (fired at least once)", "alive", 0),
        ("dead fraction", "dead_fraction", 4),
        ("mean density", "mean_density", 5),
        (
            "mean concentration (top token share)",
            "mean_concentration",
            3,
        ),
        ("mean distinct tokens in top-K", "mean_distinct_tokens", 2),
        ("units with a full top-K", "full_topk_units", 0),
        (
            "  their mean concentration",
            "mean_concentration_full_topk",
            3,
        ),
        (
            "  their mean distinct tokens",
            "mean_distinct_tokens_full_topk",
            2,
        ),
    ];
    for (name, key, prec) in rows {
        let f = get(&format!("feature_{key}")).unwrap_or(f64::NAN);
        let n = get(&format!("neuron_{key}")).unwrap_or(f64::NAN);
        println!("  {name:<44} {f:>10.prec$} {n:>10.prec$}");
    }
}

fn show(a: ShowArgs) -> Result<()> {
    let store = FeatureStore::open(&a.path)?;
    let unit = match (a.feature, a.neuron) {
        (Some(f), _) => Some((UnitKind::Feature, f)),
        (_, Some(n)) => Some((UnitKind::Neuron, n)),
        _ => None,
    };
    if let Some((kind, id)) = unit {
        return show_unit(&store, kind, id);
    }
    let meta = store.meta()?;
    let m = |k: &str| meta.get(k).map(String::as_str).unwrap_or("?");
    println!(
        "{}: {} features at {} (+ {} neurons at {}) on {}, {} held-out tokens, built in {} s",
        store.path.display(),
        m("d_sae"),
        m("hook"),
        m("d_mlp"),
        m("neuron_hook"),
        m("model"),
        m("tokens"),
        m("built_seconds"),
    );
    let top_k = m("top_k").parse().unwrap_or(0);
    print_comparison(&store.comparison()?, top_k);
    for kind in [UnitKind::Feature, UnitKind::Neuron] {
        let units = store.units(kind, Order::Density, true, a.top, 0)?;
        if units.is_empty() {
            continue;
        }
        println!("densest {}s:", kind.as_str());
        for u in units {
            println!(
                "  {:>6}  density {:.5}  max {:>8.3}  concentration {:.2}  {}",
                u.id, u.density, u.max_act, u.concentration, u.label
            );
        }
    }
    Ok(())
}

fn show_unit(store: &FeatureStore, kind: UnitKind, id: u32) -> Result<()> {
    let d = store
        .unit(kind, id)?
        .with_context(|| format!("{} has no {} {id}", store.path.display(), kind.as_str()))?;
    let u = &d.unit;
    println!("{} {id}: {}", kind.as_str(), u.label);
    println!(
        "  density {:.6}, max {:.4}, mean {:.4}, concentration {:.2}",
        u.density, u.max_act, u.mean_act, u.concentration
    );
    let toks: Vec<String> = u
        .top_tokens
        .iter()
        .take(8)
        .map(|(t, c)| format!("{t:?}×{c}"))
        .collect();
    println!("  top tokens: {}", toks.join(", "));
    let mut band = i64::MIN;
    for e in &d.examples {
        if e.band != band {
            band = e.band;
            if band < 0 {
                println!("  top activations:");
            } else {
                println!("  band {band} samples:");
            }
        }
        let at = (e.position - e.context_start) as usize;
        let text: String = e
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i == at {
                    format!("[[{t}]]")
                } else {
                    t.clone()
                }
            })
            .collect();
        println!("    {:>9.3}  {}", e.act, text.replace('\n', "⏎"));
    }
    if !d.promoted.is_empty() {
        let fmt = |v: &[(String, f64)]| {
            v.iter()
                .map(|(t, x)| format!("{t:?} {x:+.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  promotes: {}", fmt(&d.promoted));
        println!("  suppresses: {}", fmt(&d.suppressed));
    }
    for e in &d.explanations {
        let score = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        match &e.explanation {
            Some(text) => println!(
                "  explanation ({}, detection {}, fuzzing {}): {text}",
                e.explainer_model,
                score(e.detection),
                score(e.fuzzing)
            ),
            None => println!(
                "  explanation ({}): failed: {}",
                e.explainer_model,
                e.failure.as_deref().unwrap_or("?")
            ),
        }
    }
    if !d.neighbours.is_empty() {
        let n: Vec<String> = d
            .neighbours
            .iter()
            .map(|n| format!("{} ({:.2})", n.id, n.cosine))
            .collect();
        println!("  nearest features: {}", n.join(", "));
    }
    Ok(())
}

/// Neuronpedia's SAE id for a hook: `15-glassbox-resid-pre` for
/// `blocks.15.hook_resid_pre`, the form its ids take (`6-res-jb`).
fn neuronpedia_sae_id(hook: &str) -> String {
    let layer = glassbox_model::hooks::layer_of(hook).map_or("0".to_string(), |l| l.to_string());
    let site = hook
        .rsplit('.')
        .next()
        .unwrap_or(hook)
        .trim_start_matches("hook_")
        .replace('_', "-");
    format!("{layer}-glassbox-{site}")
}

fn explanations(a: ExplanationsArgs) -> Result<()> {
    let store = FeatureStore::open(&a.path)?;
    let all = store.all_explanations()?;
    if all.is_empty() {
        anyhow::bail!(
            "{} holds no explanations yet: `glassbox explain --run {} --sample 20 --explainer URL --explainer-model NAME` writes them",
            store.path.display(),
            a.path.display()
        );
    }
    let meta = store.meta()?;
    if let Some(out) = &a.neuronpedia {
        let model_id = a
            .model_id
            .clone()
            .or_else(|| meta.get("model").cloned())
            .unwrap_or_else(|| "unknown".into());
        let sae_id = a
            .sae_id
            .clone()
            .unwrap_or_else(|| neuronpedia_sae_id(meta.get("hook").map_or("", String::as_str)));
        // one entry per explanation that exists; the scores ride along under their names
        let rows: Vec<serde_json::Value> = all
            .iter()
            .filter_map(|e| {
                let text = e.explanation.as_ref()?;
                Some(serde_json::json!({
                    "modelId": model_id,
                    "layer": sae_id,
                    "index": e.feature.to_string(),
                    "description": text,
                    "explanationModelName": e.explainer_model,
                    "typeName": e.prompt_version,
                    "scores": [
                        {"scorerModel": e.scorer_model, "scorerType": "detection", "value": e.detection},
                        {"scorerModel": e.scorer_model, "scorerType": "fuzzing", "value": e.fuzzing},
                    ],
                }))
            })
            .collect();
        let body = serde_json::to_string_pretty(&rows)?;
        crate::open::atomic_write(out, |tmp| Ok(std::fs::write(tmp, &body)?))?;
        println!(
            "wrote {} explanations to {} (Neuronpedia: modelId {model_id}, layer {sae_id})",
            rows.len(),
            out.display()
        );
        return Ok(());
    }
    // each feature's best, best detection first
    let mut best = glassbox_features::explanations::best_per_feature(&all);
    let failed = best.iter().filter(|e| e.explanation.is_none()).count();
    best.retain(|e| e.explanation.is_some());
    best.sort_by(|x, y| {
        y.detection
            .unwrap_or(-1.0)
            .total_cmp(&x.detection.unwrap_or(-1.0))
            .then(x.feature.cmp(&y.feature))
    });
    let score = |v: Option<f64>| v.map_or("  -  ".to_string(), |v| format!("{v:.3}"));
    println!(
        "{} features explained ({failed} failed) in {}",
        best.len(),
        store.path.display()
    );
    println!("feature  detection  fuzzing  explainer  explanation");
    for e in best.iter().take(a.top) {
        println!(
            "#{:<7} {:>9}  {:>7}  {}  {}",
            e.feature,
            score(e.detection),
            score(e.fuzzing),
            e.explainer_model,
            e.explanation.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    let (kind, id) = match (a.feature, a.neuron) {
        (Some(f), _) => (UnitKind::Feature, f),
        (None, Some(n)) => (UnitKind::Neuron, n),
        (None, None) => anyhow::bail!("pass --feature F or --neuron N"),
    };
    let store = FeatureStore::open(&a.run)?;
    let unit = store
        .unit(kind, id)?
        .with_context(|| format!("{} {id} is not in {}", kind.as_str(), a.run.display()))?
        .unit;
    let counts: Vec<f64> = unit.histogram.iter().map(|&c| c as f64).collect();
    let svg = glassbox_server::histogram_svg(
        &glassbox_features::hist_edges(),
        &counts,
        &format!("{} {id} activation (log scale)", kind.as_str()),
        true,
    );
    let png = a
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let bytes = if png {
        glassbox_plot::png_from_svg(&svg, 2.0).map_err(anyhow::Error::msg)?
    } else {
        svg.into_bytes()
    };
    crate::open::atomic_write(&a.out, |tmp| Ok(std::fs::write(tmp, &bytes)?))?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// Writes the static HTML pages of a run and says where they are.
pub fn export(run: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let s = glassbox_server::export_static(run, out)?;
    println!(
        "wrote {} files to {}: {} feature pages, {} neuron pages; open {}",
        s.files,
        s.out_dir.display(),
        s.features,
        s.neurons,
        s.out_dir.join("index.html").display()
    );
    Ok(())
}
