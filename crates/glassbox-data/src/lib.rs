//! glassbox-data: text corpora (txt, JSON lines, Parquet: [`read_corpus`]), packing
//! them into fixed context windows ([`pack`]), harvesting hook activations over those
//! windows ([`harvest`], [`harvest_hooks`]), and the activation store that serves
//! shuffled rows to dictionary training ([`ActivationStore`], see [`store`] for its
//! design).
//!
//! This crate knows the model only as "give me the activations at hook H": it asks the
//! runtime for a forward pass with a cache filter and never looks at weights.
//!
//! ```
//! # fn main() -> glassbox_data::Result<()> {
//! use glassbox_data::{harvest, ActivationStore, StoreOptions};
//! use std::path::Path;
//!
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let fixture = Path::new(fixture);
//! let model = glassbox_model::load_model(fixture)?;
//! // HF transformers' input ids [2, 16] and activations [2, 16, 64] of the tiny Llama
//! let reference = candle_core::safetensors::load(
//!     fixture.join("reference.safetensors"),
//!     &candle_core::Device::Cpu,
//! )?;
//! let windows: Vec<Vec<u32>> = reference["input_ids"]
//!     .to_dtype(candle_core::DType::U32)?
//!     .to_vec2()?;
//! let hook = "blocks.1.hook_resid_post";
//!
//! // one row per token but position 0 (the attention sink) and BOS/EOS (none here):
//! // 2 × 15 rows of 64
//! let (rows, width) = harvest(&model, &windows, hook, 8, |_| {})?;
//! assert_eq!((width, rows.len() / width), (64, 2 * 15));
//! let want: Vec<f32> = reference[hook].narrow(1, 1, 15)?.flatten_all()?.to_vec1()?;
//! let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
//! let err = rows.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
//! assert!(err < 1e-4 * scale, "HF reference differs by {err}");
//!
//! // the store serves the same 30 rows, shuffled, in batches
//! let mut opts = StoreOptions::new(vec![hook.to_string()]);
//! opts.rows = glassbox_model::RowRule::for_model(&model);
//! let mut store = ActivationStore::new(&model, windows, opts)?;
//! assert_eq!(store.total_rows(), 30);
//! let mut batch = vec![Vec::new()]; // one buffer per hook
//! assert_eq!(store.next_batch(20, &mut batch)?, 20);
//! let mut served = batch[0].clone();
//! assert_eq!(store.next_batch(20, &mut batch)?, 10);
//! served.extend(&batch[0]);
//! let sorted = |v: &[f32]| {
//!     let mut r: Vec<&[f32]> = v.chunks(64).collect();
//!     r.sort_by(|a, b| a[0].total_cmp(&b[0]));
//!     r.concat()
//! };
//! assert_eq!(sorted(&served), sorted(&rows));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use glassbox_model::Model;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

mod corpus;
mod harvest;
mod parquet_guard;
pub mod store;

pub use corpus::{read_corpus, Corpus, CorpusReport};
pub use harvest::{
    calibrate_massive, harvest_hooks, harvest_with, Harvest, HarvestOptions, CALIBRATION_WINDOWS,
};
pub use store::{ActivationStore, StoreOptions};

/// Why a corpus could not be read, packed or harvested.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Options, windows or hooks that cannot be used as they are (a context size
    /// outside 2..=n_ctx, too few windows, an unknown or pattern hook, …); the message
    /// says what to change.
    #[error("{0}")]
    BadInput(String),
    /// A corpus that cannot be used as it is; the message says what to change.
    #[error("{0}")]
    Corpus(String),
    /// A file or folder that could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// the file or folder
        path: PathBuf,
        /// the operating system's error
        source: std::io::Error,
    },
    /// Harvested activations that are NaN or infinite: training on them would
    /// silently poison a dictionary, so harvesting stops here.
    #[error(
        "the activations at `{hook}` hold NaN or Inf ({place}): the model overflowed or its \
         weights are broken; check the model file (run it on a short prompt) before training"
    )]
    NonFinite {
        /// the hook whose activations are not finite
        hook: String,
        /// where: the windows of the batch and the position within it
        place: String,
    },
    /// The activation cache folder cannot be used at all (single shards that fail are
    /// regenerated with a warning instead).
    #[error("activation cache {}: {message}", path.display())]
    Cache {
        /// the cache folder, or the shard file being written
        path: PathBuf,
        /// what went wrong, and what to do about it
        message: String,
    },
    /// An output file that could not be written whole (the old one is kept).
    #[error(transparent)]
    Write(#[from] glassbox_atomic::Error),
    /// The model could not run the windows (or has no tokenizer for [`pack`]).
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    /// A tensor operation on the activations failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with a [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn bad(m: impl Into<String>) -> DataError {
    DataError::BadInput(m.into())
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Token windows, each `context_size` long.
pub type Windows = Vec<Vec<u32>>;

/// Plain-text documents: one `.txt` file, or every `.txt` file in a folder (sorted).
/// Kept for callers that want exactly this; [`read_corpus`] also reads JSON lines and
/// Parquet, walks folders recursively and skips unreadable files with a report.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
    if path.is_file() {
        return Ok(vec![read(path)?]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(format!("{} holds no .txt files", path.display())));
    }
    files.iter().map(|p| read(p)).collect()
}

/// The share of a corpus's windows every stage holds out (training never sees them;
/// evaluation, the feature store and `eval-sae` read only them): one figure, so that
/// each stage's held-out set is the same windows for the same seed.
pub const HELD_OUT_FRACTION: f64 = 0.05;

/// Tokenises documents and packs them into windows of `context_size` tokens, each
/// beginning with `bos` when given; documents are joined by `bos` (or nothing).
/// Windows are shuffled with `seed`; the first `eval_fraction` become the held-out
/// set, so training and evaluation never share a window.
///
/// Because documents are joined by `bos`, BOS also appears inside windows: harvest
/// with the model's [`glassbox_model::RowRule`] (the default), which leaves it out.
pub fn pack(
    model: &Model,
    texts: &[String],
    context_size: usize,
    bos: Option<u32>,
    seed: u64,
    eval_fraction: f64,
) -> Result<(Windows, Windows)> {
    if context_size < 2 || context_size > model.config().n_ctx {
        return Err(bad(format!(
            "context size {context_size} must be between 2 and the model's context {}",
            model.config().n_ctx
        )));
    }
    let tok = model.tokenizer()?;
    let body = context_size - usize::from(bos.is_some());
    let mut stream: Vec<u32> = Vec::new();
    for t in texts {
        stream.extend(tok.encode(t)?);
        stream.extend(bos);
    }
    let mut windows: Vec<Vec<u32>> = stream
        .chunks_exact(body)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect();
    if windows.len() < 2 {
        return Err(bad(format!(
            "the corpus gives {} window(s) of {context_size} tokens; it needs at least 2",
            windows.len()
        )));
    }
    windows.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_eval =
        ((windows.len() as f64 * eval_fraction).ceil() as usize).clamp(1, windows.len() - 1);
    let train = windows.split_off(n_eval);
    Ok((train, windows))
}

/// Activations of `hook` over `windows` as rows `[n, width]`, leaving out the first
/// position of every window (the attention sink, whose norm dwarfs the rest) and every
/// position holding one of the model's special tokens ([`glassbox_model::RowRule`]: BOS/EOS,
/// which `pack` puts between documents), and stopping after the hook's block.
/// `on_batch` is called after each forward batch with the number of windows it held.
///
/// For other exclusions or several hooks at once, use [`harvest_with`] /
/// [`harvest_hooks`].
pub fn harvest(
    model: &Model,
    windows: &[Vec<u32>],
    hook: &str,
    batch_windows: usize,
    on_batch: impl FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let opts = HarvestOptions {
        batch_windows,
        rows: glassbox_model::RowRule::for_model(model),
    };
    harvest_with(model, windows, hook, &opts, on_batch)
}
