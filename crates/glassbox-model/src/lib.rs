//! glassbox-model: open transformer checkpoints (HF directories, GGUF) and run them
//! with TransformerLens hook points — cache, edit, differentiate and generate.

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
pub use generate::SamplingOptions;
pub mod kernels;
pub mod logits;
