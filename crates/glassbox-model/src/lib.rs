//! glassbox-model: open transformer checkpoints (HF directories, GGUF) and run them
//! with TransformerLens hook points — cache, edit, differentiate and generate.
//!
//! [`load_model`] opens a checkpoint as a [`Model`]: a [`Transformer`] (its
//! [`ModelConfig`] and weights, held in their stored precision and expanded to f32 a
//! layer at a time) and, when the checkpoint has one, a [`TextTokenizer`]. A forward pass
//! is [`Transformer::run`] on a [`Batch`] of token ids with a [`Run`] saying what to
//! cache ([`HookFilter`] globs over [`hook_points`]), which hooks or [`Intervention`]s
//! edit activations, where to take gradients and where to stop; it returns a
//! [`RunOutput`]. [`Transformer::generate`] samples with a KV cache,
//! [`apply_tl_processing`] rewrites the weights as TransformerLens does, and [`RowRule`]
//! is the one rule for which token positions every statistic counts.
//!
//! ```
//! # fn main() -> glassbox_model::Result<()> {
//! use glassbox_model::{load_model, Batch, HookFilter, Run};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let dir = std::path::Path::new(dir);
//! let model = load_model(dir)?;
//! // token ids `[2, 16]` and the activations HF transformers computed for them
//! let reference = candle_core::safetensors::load(
//!     dir.join("reference.safetensors"),
//!     &candle_core::Device::Cpu,
//! )?;
//! let batch = Batch::from_tensor(&reference["input_ids"])?;
//!
//! let filter = HookFilter::parse("blocks.*.hook_resid_post", model.config())?;
//! let out = model.transformer.run(&batch, &mut Run::new().cache(filter))?;
//! let resid = &out.cache["blocks.1.hook_resid_post"];
//! assert_eq!(resid.dims(), [2, 16, model.config().d_model]);
//!
//! // the same numbers as HF: the logits `[2, 16, 512]` agree to 1e-4 of their largest
//! // |value| (the bound tests/hf_reference.rs holds every family to)
//! let want = &reference["logits"];
//! let diff = (out.logits()? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-4 * scale, "logits differ from HF by {diff}");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod gguf;
pub mod hooks;
pub mod process;
pub mod rows;
pub mod run;
pub mod stored;
pub mod transformer;
pub mod weights;

pub use config::{Architecture, ModelConfig, NormKind};
pub use error::{ModelError, Result};
pub use hooks::{hook_points, layer_of, Edit, HookFilter, HookPointInfo, Intervention};
pub use rows::{Exclusion, MassiveNorm, RowRule, MASSIVE_FACTOR, MASSIVE_QUANTILE};
pub use run::{ActivationCache, Batch, LogitsMode, PaddingSide, Run, RunOutput};
pub use transformer::{KvCache, Transformer};
pub mod loader;
pub mod tokenizer;
pub use loader::{load_model, load_model_with, LoadOptions, Model};
pub use process::{apply_tl_processing, TlProcessing};
pub use tokenizer::TextTokenizer;
pub mod chat;
pub mod generate;
pub use generate::{Sampler, SamplingOptions};
pub mod kernels;
pub mod logits;
