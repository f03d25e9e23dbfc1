//! glassbox-features: feature dashboards for a dictionary (SAE or transcoder).
//!
//! One streaming pass over held-out token windows gives, for every dictionary feature
//! and — as the polysemanticity baseline — every MLP neuron at the dictionary's layer:
//! density, maximum and mean activation, a histogram of positive activations over
//! log10 bins, the exact top-K activating examples with their context, seeded samples
//! from bands of the activation range, and an automatic label from the tokens its top
//! examples fire on. Features also get their direct logit effects and nearest
//! neighbours by decoder cosine. Everything is written to one SQLite file following
//! [`SCHEMA`] (`src/schema.sql`), atomically.
//!
//! The library never tokenises: callers give token windows and a token → text function
//! (the CLI uses the model's tokenizer; tests use tiny models that have none).
//!
//! Position 0 of every window (the attention sink) and the caller's excluded tokens
//! (BOS/EOS) are left out of every statistic; in example contexts they show 0.
//!
//! [`build`] is the whole job on given windows; [`build_held_out`] and [`build_for_run`]
//! pick the training run's held-out windows first (what `glassbox features build`
//! runs); [`store::FeatureStore`] reads the file back. On the tiny llama fixture with
//! the TopK SAE SAELens wrote for its `blocks.0.hook_resid_post`:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use glassbox_features::store::{FeatureStore, Order};
//! use glassbox_features::{build, BuildInput, BuildOptions, UnitKind};
//!
//! let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! let model = glassbox_model::load_model(format!("{fixtures}/tiny-llama").as_ref())?;
//! let dict = glassbox_sae::format::load(format!("{fixtures}/saelens/sae-topk").as_ref())?;
//! // 6 windows of 16 token ids, BOS (1) first: the tiny model has no tokenizer
//! let windows: Vec<Vec<u32>> = (0..6u32)
//!     .map(|w| std::iter::once(1).chain((1..16).map(|p| 3 + (w * 31 + p * 7) % 200)).collect())
//!     .collect();
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join(glassbox_features::STORE_FILE);
//! let input = BuildInput {
//!     model: &model.transformer,
//!     dict: &dict,
//!     hook: "blocks.0.hook_resid_post",
//!     windows: &windows,
//!     token_text: &|t| format!(" t{t}"),
//!     meta: vec![("model".into(), "tiny-llama".into())],
//! };
//! let opts = BuildOptions {
//!     rows: glassbox_model::RowRule::new([1, 2]), // BOS and EOS left out
//!     ..BuildOptions::default()
//! };
//! let report = build(&input, &opts, &path, |_windows_done| {})?;
//! assert_eq!(report.tokens, 6 * 15); // position 0 of each window is not a row
//!
//! let store = FeatureStore::open(&path)?;
//! assert_eq!(store.count(UnitKind::Feature)?, 256); // the SAE's d_sae
//! assert_eq!(store.count(UnitKind::Neuron)?, 176); // blocks.0.mlp.hook_post
//! // the densest feature: its strongest top example is its maximum
//! let densest = &store.units(UnitKind::Feature, Order::Density, true, 1, 0)?[0];
//! let detail = store.unit(UnitKind::Feature, densest.id)?.unwrap();
//! assert_eq!(detail.examples[0].band, -1);
//! assert_eq!(detail.examples[0].act, densest.max_act);
//! assert_eq!(detail.promoted.len(), 10); // logit effects: top 10 promoted tokens
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod accumulate;
mod build;
pub mod describe;
pub mod effects;
pub mod explanations;
pub mod held_out;
mod pass;
pub mod run_dir;
pub mod store;
mod write;

pub use accumulate::{Example, UnitGroup, UnitState};
pub use build::{build, BuildInput, BuildReport};
pub use held_out::{build_for_run, build_held_out, HeldOutStore};
pub use pass::{analyse, check_hooks, Analysis, Hooks};
pub use write::{write_store, StoreInput};

use std::path::PathBuf;

/// The feature store's schema: the contract with every reader (`glassbox serve`).
pub const SCHEMA: &str = include_str!("schema.sql");

/// Written to `meta.version`; bump when what the tables mean changes.
pub const STORE_VERSION: &str = "1";

/// The default file name inside a run directory.
pub const STORE_FILE: &str = "features.sqlite";

/// What a unit is: a dictionary feature or an MLP neuron (the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// a latent of the dictionary
    Feature,
    /// an MLP neuron (`blocks.L.mlp.hook_post`) at the dictionary's layer
    Neuron,
}

impl UnitKind {
    /// Both kinds, features first.
    pub const ALL: [UnitKind; 2] = [UnitKind::Feature, UnitKind::Neuron];

    /// The name in the `kind` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Feature => "feature",
            UnitKind::Neuron => "neuron",
        }
    }

    /// The kind named by [`UnitKind::as_str`]; `None` for any other text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "feature" => Some(UnitKind::Feature),
            "neuron" => Some(UnitKind::Neuron),
            _ => None,
        }
    }
}

/// The options of one build. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// top activating examples kept per unit (exact)
    pub top_k: usize,
    /// tokens shown on each side of an example's token
    pub context_radius: usize,
    /// windows per forward pass
    pub batch_windows: usize,
    /// bands of the activation range, by fraction of the unit's maximum
    pub bands: usize,
    /// samples kept per band
    pub per_band: usize,
    /// seed of the band samples
    pub seed: u64,
    /// which positions count ([`glassbox_model::RowRule::for_model`]: position 0, BOS/EOS)
    pub rows: glassbox_model::RowRule,
    /// also analyse the MLP neurons (`mlp.hook_post`) at the dictionary's layer
    pub neurons: bool,
    /// promoted and suppressed tokens stored per feature
    pub logit_effects: usize,
    /// nearest features by decoder cosine stored per feature
    pub neighbours: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            top_k: 20,
            context_radius: 10,
            batch_windows: 8,
            bands: 5,
            per_band: 4,
            seed: 0,
            rows: glassbox_model::RowRule::default(),
            neurons: true,
            logit_effects: 10,
            neighbours: 10,
        }
    }
}

/// Histogram of positive activations: `HIST_BINS` equal bins of log10(activation) over
/// `[HIST_LOG10_MIN, HIST_LOG10_MAX]`; values outside fall into the end bins.
pub const HIST_LOG10_MIN: f64 = -4.0;
/// The upper end of the histogram, in log10 units ([`HIST_LOG10_MIN`]).
pub const HIST_LOG10_MAX: f64 = 4.0;
/// 10 bins a decade (4 were too coarse to see a distribution's shape)
pub const HIST_BINS: usize = 80;

/// The histogram bin of a positive activation.
pub fn hist_bin(a: f32) -> usize {
    let v = (a as f64).log10();
    let i = ((v - HIST_LOG10_MIN) / (HIST_LOG10_MAX - HIST_LOG10_MIN) * HIST_BINS as f64).floor();
    if i.is_nan() || i < 0.0 {
        0
    } else {
        (i as usize).min(HIST_BINS - 1)
    }
}

/// The `HIST_BINS + 1` bin edges in log10 units.
pub fn hist_edges() -> Vec<f64> {
    (0..=HIST_BINS)
        .map(|i| HIST_LOG10_MIN + (HIST_LOG10_MAX - HIST_LOG10_MIN) * i as f64 / HIST_BINS as f64)
        .collect()
}

/// Why a build, or reading a store, failed.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// the input cannot be used (windows of unequal length or past the model's context,
    /// a dictionary that does not fit the hook, a missing store or run directory, a file
    /// that is not a feature store); the message says what to change
    #[error("{0}")]
    BadInput(String),
    /// SQLite failed on a store being written or read
    #[error("feature store {}: {source}", path.display())]
    Sqlite {
        /// the store (while building: its temporary sibling)
        path: PathBuf,
        /// what SQLite said
        source: rusqlite::Error,
    },
    /// the model runtime failed (a forward pass, the tokenizer)
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    /// the dictionary could not be read or used
    #[error(transparent)]
    Sae(#[from] glassbox_sae::SaeError),
    /// a tensor operation failed
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// An output file that could not be written whole (the old one is kept).
    #[error(transparent)]
    Write(#[from] glassbox_atomic::Error),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, FeaturesError>;

pub(crate) fn bad(m: impl Into<String>) -> FeaturesError {
    FeaturesError::BadInput(m.into())
}

pub(crate) fn sql_err(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> FeaturesError + '_ {
    move |source| FeaturesError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}
