use crate::open::{atomic_write, open_model, with_spinner};
use anyhow::Result;
use glassbox_plot::LinePlot;
use glassbox_probes::activations::Position;
use glassbox_probes::dataset::Dataset;
use glassbox_probes::probe::Method;
use glassbox_probes::store::{self, ProbeMeta};
use glassbox_probes::sweep::{features, fit, generalisation, predict, sweep_report, ProbeSpec};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum What {
    /// Held-out accuracy and AUROC of a probe at each layer
    Sweep(SweepArgs),
    /// Train one probe and save it (safetensors + JSON metadata)
    Train(TrainArgs),
    /// Train on each dataset, test on every other: the generalisation matrix
    Matrix(MatrixArgs),
}

#[derive(clap::Args)]
pub struct Common {
    #[arg(long)]
    model: String,
    /// lr, mass-mean, mass-mean-cov or ccs
    #[arg(long, default_value = "lr")]
    method: String,
    /// Hook: a short name (resid_post, resid_pre, mlp_out, attn_out) or a template with {L}
    #[arg(long, default_value = "resid_post")]
    hook: String,
    /// Token position: last or mean
    #[arg(long, default_value = "last")]
    position: String,
    /// Seed of the stratified 75/25 train/test split (and of CCS)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Activation cache (default $GLASSBOX_HOME/activations)
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl Common {
    fn spec(&self) -> Result<ProbeSpec> {
        Ok(ProbeSpec::new(
            &self.hook,
            Position::parse(&self.position)?,
            Method::parse(&self.method)?,
            self.seed,
            Some(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(|| glassbox_hub::glassbox_home().join("activations")),
            ),
        ))
    }
}

#[derive(clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    common: Common,
    /// CSV file (statement,label) or builtin:NAME (capitals, capitals_neg, numbers, numbers_neg)
    #[arg(long)]
    data: String,
    /// Layers: `A..B` (B excluded: `0..30` is every layer of a 30-layer model), `A..=B`,
    /// a list `3,7,11`, or one layer (default: every layer)
    #[arg(long)]
    layers: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Write the accuracy/AUROC-by-layer plot here (SVG)
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    data: String,
    #[arg(long)]
    layer: usize,
    /// Output directory (probe.safetensors + probe.json)
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    common: Common,
    /// Comma-separated datasets (CSV paths or builtin:NAME)
    #[arg(long, value_delimiter = ',')]
    data: Vec<String>,
    #[arg(long)]
    layer: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Sweep(a) => run_sweep(a),
        What::Train(a) => run_train(a),
        What::Matrix(a) => run_matrix(a),
    }
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let model = open_model(&a.common.model)?;
    let spec = a.common.spec()?;
    let data = Dataset::load(&a.data)?;
    let layers = crate::names::parse_layers(a.layers.as_deref(), model.config().n_layers)?;
    let report = with_spinner(
        &format!("probing {} layers on {}", layers.len(), data.name),
        || Ok(sweep_report(&model, &data, &spec, &layers)?),
    )?;
    let results = &report.layers;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({} statements), {} probe on {} at position `{}`; held-out 25 % (stratified, seed {})",
            data.name, data.statements.len(), spec.method.name(), spec.hook, spec.position.name(), spec.seed
        );
        println!(
            "{:>5} {:>10} {:>9} {:>10}",
            "layer", "accuracy", "AUROC", "train acc"
        );
        for r in results {
            println!(
                "{:>5} {:>10.3} {:>9.3} {:>10.3}",
                r.layer, r.test.accuracy, r.test.auroc, r.train.accuracy
            );
        }
        // highest AUROC; among ties the shallowest layer, and the others named
        let top = results
            .iter()
            .map(|r| r.test.auroc)
            .fold(f64::NAN, f64::max);
        let tied: Vec<_> = results.iter().filter(|r| r.test.auroc == top).collect();
        if let Some(best) = tied.first() {
            let others: Vec<String> = tied[1..].iter().map(|r| r.layer.to_string()).collect();
            println!(
                "best: layer {} (accuracy {:.3}, AUROC {:.3}){}",
                best.layer,
                best.test.accuracy,
                best.test.auroc,
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; tied with layer {}", others.join(", "))
                }
            );
        }
    }
    if let Some(path) = &a.svg {
        let x: Vec<f64> = results.iter().map(|r| r.layer as f64).collect();
        let series = [
            (
                "held-out accuracy",
                results.iter().map(|r| r.test.accuracy).collect::<Vec<_>>(),
            ),
            (
                "held-out AUROC",
                results.iter().map(|r| r.test.auroc).collect(),
            ),
        ];
        let title = format!(
            "{} probe on {}: {}",
            spec.method.name(),
            data.name,
            spec.hook
        );
        let svg = LinePlot {
            title: &title,
            x_label: "layer",
            y_label: "score",
            x: &x,
            series: &series,
            y_range: (0.0, 1.0),
        }
        .to_svg();
        atomic_write(path, |tmp| Ok(std::fs::write(tmp, svg)?))?;
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let model = open_model(&a.common.model)?;
    let spec = a.common.spec()?;
    let data = Dataset::load(&a.data)?;
    crate::names::parse_layers(Some(&a.layer.to_string()), model.config().n_layers)?;
    let f = features(&model, &data, &spec, &[a.layer])?;
    let labels = data.labels();
    let (train, test) = data.split(spec.test_fraction, spec.seed);
    let fitted = fit(&f, 0, &train, &labels, &spec)?;
    let probs = predict(&fitted, &f, 0, &test);
    let y: Vec<u8> = test.iter().map(|&i| labels[i]).collect();
    let acc = glassbox_probes::metrics::accuracy(&probs, &y, 0.5);
    let auroc = glassbox_probes::metrics::auroc(&probs, &y).unwrap_or(f64::NAN);
    let c = model.config();
    let meta = ProbeMeta {
        model: store::model_name(&model),
        architecture: c.architecture.name().into(),
        d_model: c.d_model,
        n_layers: c.n_layers,
        hook: glassbox_probes::activations::hook_name(&spec.hook, a.layer),
        layer: a.layer,
        position: spec.position,
        method: spec.method,
        normalisation: "inputs standardised on the training split; the standardisation is folded into weight and bias, so score = weight·x + bias on raw activations".into(),
        data: data.name.clone(),
        data_hash: data.hash(),
        split: format!("stratified 75/25, seed {}", spec.seed),
        test_accuracy: acc,
        test_auroc: auroc,
    };
    store::save(&a.out, &fitted.linear(), &meta)?;
    println!(
        "{} probe at {}: held-out accuracy {acc:.3}, AUROC {auroc:.3}; saved to {}",
        spec.method.name(),
        meta.hook,
        a.out.display()
    );
    Ok(())
}

fn run_matrix(a: MatrixArgs) -> Result<()> {
    let model = open_model(&a.common.model)?;
    let spec = a.common.spec()?;
    anyhow::ensure!(!a.data.is_empty(), "--data needs at least one dataset");
    let datasets: Vec<Dataset> = a
        .data
        .iter()
        .map(|d| Dataset::load(d))
        .collect::<Result<_, _>>()?;
    crate::names::parse_layers(Some(&a.layer.to_string()), model.config().n_layers)?;
    let m = with_spinner("training and testing across datasets", || {
        Ok(generalisation(&model, &datasets, &spec, a.layer)?)
    })?;
    let names: Vec<&str> = datasets.iter().map(|d| d.name.as_str()).collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"layer": a.layer, "method": spec.method, "datasets": names, "matrix": m})
            )?
        );
        return Ok(());
    }
    println!(
        "held-out accuracy / AUROC, layer {} ({}); rows: trained on, columns: tested on",
        a.layer,
        spec.method.name()
    );
    print!("{:>14}", "");
    for n in &names {
        print!(" {n:>14}");
    }
    println!();
    for (n, row) in names.iter().zip(&m) {
        print!("{n:>14}");
        for s in row {
            print!(" {:>6.2} / {:>5.2}", s.accuracy, s.auroc);
        }
        println!();
    }
    Ok(())
}
