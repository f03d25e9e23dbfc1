//! glassbox-analysis: causal experiments built on the runtime's hooks, and the IOI
//! dataset they are shown on. [`patching`] runs activation patching (exact, by rerunning)
//! and attribution patching (first order) over a grid of sites; [`steering`] adds a
//! direction or clamps a dictionary feature; [`ablation`] zero- or mean-ablates heads,
//! neurons and features; [`sae_eval`] scores a dictionary (L0, FVU, CE and KL recovered)
//! and [`transcoders`] a whole set of transcoders spliced in at once; [`metric`] holds
//! the logit metrics they share; [`ioi`] generates indirect-object prompts. The CLI's
//! `patch`, `ioi`, `steer`, `ablate` and `eval-sae` and the Python package call these.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use candle_core::{Device, IndexOp};
//! use glassbox_analysis::patching::{PatchProblem, PatchSite};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let dir = std::path::Path::new(dir);
//! let model = glassbox_model::load_model(dir)?;
//! // HF transformers' run of the fixture: input_ids [2, 16], logits [2, 16, 512]
//! let reference =
//!     candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
//! let ids = reference["input_ids"].i(0)?.to_vec1::<i64>()?;
//! let clean: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
//! // the corrupted prompt differs from the clean one at position 5 only
//! let mut corrupt = clean.clone();
//! corrupt[5] = (clean[5] + 1) % 512;
//! let problem = PatchProblem {
//!     model: &model.transformer,
//!     clean,
//!     corrupt,
//!     answer: 7,
//!     wrong: 100,
//!     context: Vec::new(),
//! };
//! let r = problem.exact(PatchSite::ResidPre)?;
//!
//! // the clean run's logit difference is HF transformers' own, at the last position
//! let last = reference["logits"].i((0, 15))?;
//! let hf = last.i(7)?.to_scalar::<f32>()? - last.i(100)?.to_scalar::<f32>()?;
//! assert!((r.logit_diff_clean - hf).abs() < 1e-3);
//! // grid[layer][position]: at layer 0 (the embeddings) patching the changed position
//! // restores the clean run, and patching any other position changes nothing
//! assert_eq!((r.grid.len(), r.grid[0].len()), (2, 16));
//! assert!((r.grid[0][5] - 1.0).abs() < 1e-3);
//! assert!(r.grid[0].iter().enumerate().all(|(p, v)| p == 5 || v.abs() < 1e-3));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod ablation;
pub mod ioi;
pub mod metric;
pub mod patching;
pub mod sae_eval;
pub mod steering;
pub mod transcoders;

/// Why an experiment did not run.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// the caller's input cannot be used (prompts of unequal length, a multi-token
    /// answer, an unknown site, a width mismatch, ...); the message says what to change
    #[error("{0}")]
    BadInput(String),
    /// the model refused the run (an unknown hook, a bad intervention, the tokenizer)
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    /// a tensor operation failed
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// the dictionary refused its input
    #[error(transparent)]
    Dictionary(#[from] glassbox_sae::SaeError),
}

/// This crate's result, failing with an [`AnalysisError`].
pub type Result<T> = std::result::Result<T, AnalysisError>;

pub(crate) fn bad(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::BadInput(msg.into())
}
