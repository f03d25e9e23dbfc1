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

pub mod accumulate;
mod build;
pub mod describe;
pub mod effects;
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
    Feature,
    Neuron,
}

impl UnitKind {
    pub const ALL: [UnitKind; 2] = [UnitKind::Feature, UnitKind::Neuron];

    /// The name in the `kind` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Feature => "feature",
            UnitKind::Neuron => "neuron",
        }
    }

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

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("{0}")]
    BadInput(String),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("feature store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Sae(#[from] glassbox_sae::SaeError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

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
