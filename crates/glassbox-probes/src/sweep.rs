//! Training and judging probes over layers and across datasets. One fixed, seeded,
//! stratified split: 25 % of each dataset held out (seed 0 unless asked otherwise).

use crate::activations::{collect, hook_name, Activations, Position};
use crate::dataset::{contrast_pair, Dataset};
use crate::metrics::{accuracy, auroc};
use crate::probe::{train_ccs, train_lr, train_mass_mean, CcsProbe, Method, Probe};
use crate::Result;
use glassbox_model::Model;
use serde::Serialize;
use std::path::PathBuf;

/// Where a probe reads and how it is trained and judged; [`ProbeSpec::new`] fills in
/// the defaults.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// hook name with `{L}` for the layer
    pub hook: String,
    /// which token's activation stands for a statement
    pub position: Position,
    /// how the probe is trained
    pub method: Method,
    /// seeds the train/test split and CCS's restarts
    pub seed: u64,
    /// share of each dataset (of each label) held out for testing (0.25)
    pub test_fraction: f64,
    /// where activations are cached between runs ([`collect`]); `None`: no cache
    pub cache_dir: Option<PathBuf>,
}

/// A dataset's activations, and for CCS those of its contrast pairs.
pub struct Features {
    /// the layers, in the order of the activations' first index
    pub layers: Vec<usize>,
    /// the statements' own activations
    pub plain: Activations,
    /// for [`Method::Ccs`], the activations of each statement's
    /// [`contrast_pair`]: (true completions, false completions); `None` otherwise
    pub pairs: Option<(Activations, Activations)>,
}

/// Runs the model over `data`'s statements (and, for CCS, their contrast pairs) at
/// `spec`'s hook and position for each of `layers`; see [`collect`].
pub fn features(
    model: &Model,
    data: &Dataset,
    spec: &ProbeSpec,
    layers: &[usize],
) -> Result<Features> {
    let texts: Vec<String> = data.statements.iter().map(|s| s.text.clone()).collect();
    let cache = spec.cache_dir.as_deref();
    let plain = collect(model, &texts, &spec.hook, layers, spec.position, cache)?;
    let pairs = if spec.method == Method::Ccs {
        let (p, n): (Vec<String>, Vec<String>) = texts.iter().map(|t| contrast_pair(t)).unzip();
        Some((
            collect(model, &p, &spec.hook, layers, spec.position, cache)?,
            collect(model, &n, &spec.hook, layers, spec.position, cache)?,
        ))
    } else {
        None
    };
    Ok(Features {
        layers: layers.to_vec(),
        plain,
        pairs,
    })
}

/// A trained probe as [`fit`] returns it.
pub enum Fitted {
    /// logistic regression or mass-mean: one linear map on a statement's activation
    Linear(Probe),
    /// CCS: reads a statement's two contrast completions
    Ccs(CcsProbe),
}

impl Fitted {
    /// The probe as one linear map on the plain statement's activation (CCS: its
    /// "true" completion map), for saving and monitoring.
    pub fn linear(&self) -> Probe {
        match self {
            Fitted::Linear(p) => p.clone(),
            Fitted::Ccs(c) => c.as_linear(),
        }
    }
}

fn rows<'a>(a: &'a [Vec<f32>], idx: &[usize]) -> Vec<&'a [f32]> {
    idx.iter().map(|&i| a[i].as_slice()).collect()
}

/// Trains `spec.method` on the statements `idx` (indices into the dataset, e.g. the
/// training half of [`Dataset::split`]) at layer position `li` of `f.layers`, with
/// the dataset's `labels`. The fixed settings: logistic regression with L2 1.0,
/// covariance-corrected mass-mean with ridge 0.1, CCS oriented by the labels of the
/// first 8 statements of `idx`. Panics for CCS when `f` has no contrast pairs.
pub fn fit(
    f: &Features,
    li: usize,
    idx: &[usize],
    labels: &[u8],
    spec: &ProbeSpec,
) -> Result<Fitted> {
    let y: Vec<u8> = idx.iter().map(|&i| labels[i]).collect();
    Ok(match spec.method {
        Method::Lr => Fitted::Linear(train_lr(&rows(&f.plain[li], idx), &y, 1.0)?),
        Method::MassMean => {
            Fitted::Linear(train_mass_mean(&rows(&f.plain[li], idx), &y, false, 0.0)?)
        }
        Method::MassMeanCov => {
            Fitted::Linear(train_mass_mean(&rows(&f.plain[li], idx), &y, true, 0.1)?)
        }
        Method::Ccs => {
            let (p, n) = f.pairs.as_ref().expect("CCS features carry pairs");
            // a handful of labels only orient the unsupervised direction
            let sign: Vec<(usize, u8)> = (0..idx.len().min(8)).map(|k| (k, y[k])).collect();
            Fitted::Ccs(train_ccs(
                &rows(&p[li], idx),
                &rows(&n[li], idx),
                &sign,
                spec.seed,
            )?)
        }
    })
}

/// P(true) for each statement in `idx`, by `fitted` at layer position `li` of `f`.
pub fn predict(fitted: &Fitted, f: &Features, li: usize, idx: &[usize]) -> Vec<f64> {
    match fitted {
        Fitted::Linear(p) => idx.iter().map(|&i| p.prob(&f.plain[li][i])).collect(),
        Fitted::Ccs(c) => {
            let (p, n) = f.pairs.as_ref().expect("CCS features carry pairs");
            idx.iter().map(|&i| c.prob(&p[li][i], &n[li][i])).collect()
        }
    }
}

/// How well a probe's probabilities match the labels.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// share right at threshold 0.5
    pub accuracy: f64,
    /// [`auroc`]; NaN when the statements scored hold one class
    pub auroc: f64,
}

fn score(probs: &[f64], labels: &[u8], idx: &[usize]) -> Score {
    let y: Vec<u8> = idx.iter().map(|&i| labels[i]).collect();
    Score {
        accuracy: accuracy(probs, &y, 0.5),
        auroc: auroc(probs, &y).unwrap_or(f64::NAN),
    }
}

/// A probe trained at one layer, scored on both halves of the split.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// the layer
    pub layer: usize,
    /// the hook read there, e.g. `blocks.3.hook_resid_post`
    pub hook: String,
    /// on the statements it was trained on
    pub train: Score,
    /// on the held-out statements
    pub test: Score,
}

/// Trains a probe at each of `layers` on `data`'s training split and scores it on
/// both halves ([`Dataset::split`] with `spec`'s fraction and seed); one result per
/// layer, in order.
pub fn sweep(
    model: &Model,
    data: &Dataset,
    spec: &ProbeSpec,
    layers: &[usize],
) -> Result<Vec<LayerResult>> {
    let f = features(model, data, spec, layers)?;
    let labels = data.labels();
    let (train, test) = data.split(spec.test_fraction, spec.seed);
    let mut out = Vec::new();
    for (li, &layer) in layers.iter().enumerate() {
        let fitted = fit(&f, li, &train, &labels, spec)?;
        out.push(LayerResult {
            layer,
            hook: hook_name(&spec.hook, layer),
            train: score(&predict(&fitted, &f, li, &train), &labels, &train),
            test: score(&predict(&fitted, &f, li, &test), &labels, &test),
        });
    }
    Ok(out)
}

/// `matrix[a][b]`: a probe trained on dataset `a`'s training split, scored on dataset
/// `b`'s held-out split (the same split whether or not `a == b`).
pub fn generalisation(
    model: &Model,
    datasets: &[Dataset],
    spec: &ProbeSpec,
    layer: usize,
) -> Result<Vec<Vec<Score>>> {
    let feats: Vec<Features> = datasets
        .iter()
        .map(|d| features(model, d, spec, &[layer]))
        .collect::<Result<_>>()?;
    let splits: Vec<(Vec<usize>, Vec<usize>)> = datasets
        .iter()
        .map(|d| d.split(spec.test_fraction, spec.seed))
        .collect();
    let mut matrix = Vec::new();
    for (a, da) in datasets.iter().enumerate() {
        let fitted = fit(&feats[a], 0, &splits[a].0, &da.labels(), spec)?;
        let row = datasets
            .iter()
            .enumerate()
            .map(|(b, db)| {
                score(
                    &predict(&fitted, &feats[b], 0, &splits[b].1),
                    &db.labels(),
                    &splits[b].1,
                )
            })
            .collect();
        matrix.push(row);
    }
    Ok(matrix)
}

impl ProbeSpec {
    /// A probe read at `hook` — a hook name with `{L}` for the layer, or a site such as
    /// `resid_post` (read as `blocks.{L}.hook_resid_post`) — with 25 % of each dataset
    /// held out (stratified, seeded).
    pub fn new(
        hook: &str,
        position: Position,
        method: Method,
        seed: u64,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        let hook = if hook.contains("{L}") {
            hook.to_string()
        } else {
            format!("blocks.{{L}}.hook_{}", hook.trim_start_matches("hook_"))
        };
        ProbeSpec {
            hook,
            position,
            method,
            seed,
            test_fraction: 0.25,
            cache_dir,
        }
    }
}

/// A probe sweep over layers: what `glassbox probe sweep --json` prints and the Python
/// package's `probe_sweep` returns.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// the dataset's name
    pub data: String,
    /// its statements
    pub statements: usize,
    /// how the probes were trained
    pub method: Method,
    /// which token's activation stood for a statement
    pub position: Position,
    /// how the held-out split was drawn, e.g. `stratified 75/25, seed 0`
    pub split: String,
    /// one result per layer swept, in order
    pub layers: Vec<LayerResult>,
}

/// [`sweep`], with what it was run on.
pub fn sweep_report(
    model: &Model,
    data: &Dataset,
    spec: &ProbeSpec,
    layers: &[usize],
) -> Result<SweepReport> {
    Ok(SweepReport {
        data: data.name.clone(),
        statements: data.statements.len(),
        method: spec.method,
        position: spec.position,
        split: format!(
            "stratified {:.0}/{:.0}, seed {}",
            (1.0 - spec.test_fraction) * 100.0,
            spec.test_fraction * 100.0,
            spec.seed
        ),
        layers: sweep(model, data, spec, layers)?,
    })
}
