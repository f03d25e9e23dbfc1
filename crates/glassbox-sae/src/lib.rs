//! glassbox-sae: sparse dictionaries — SAEs and transcoders — in the formats the field
//! shares: SAELens v6 (read and write), legacy SAELens configs and EleutherAI sparsify
//! (read). Encoding and decoding follow SAELens' definitions exactly.
//!
//! A [`Dictionary`] holds the weights and does [`Dictionary::encode`] /
//! [`Dictionary::decode`]; [`format::load`] reads a dictionary folder in any supported
//! format and [`format::save_saelens`] writes one. [`train`] trains dictionaries on the
//! CPU ([`train::Trainer`]), and [`testing`] builds deterministic random transcoders for
//! tests. The model side (running hooks, harvesting activations) lives in other crates.
//!
//! ```
//! # fn main() -> glassbox_sae::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use std::path::Path;
//!
//! // a TopK SAE (k = 8) written by SAELens on tiny-llama's `blocks.0.hook_resid_post`
//! let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/saelens/sae-topk"));
//! let sae = glassbox_sae::format::load(dir)?;
//! assert_eq!((sae.d_in, sae.d_sae, sae.k), (64, 256, Some(8)));
//! assert_eq!(sae.hook_name.as_deref(), Some("blocks.0.hook_resid_post"));
//!
//! // SAELens' own outputs on 32 activation vectors: `x` [32, 64], `feature_acts`
//! // [32, 256], `sae_out` [32, 64]
//! let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
//! let max_abs = |t: &Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
//! let f = sae.encode(&r["x"])?;
//! assert_eq!(f.dims(), &[32, 256]);
//! assert!(max_abs(&(&f - &r["feature_acts"])?)? < 1e-5);
//! // at most k features active per token
//! let l0 = f.gt(0.0)?.to_dtype(DType::F32)?.sum(1)?;
//! assert!(l0.max_all()?.to_scalar::<f32>()? <= 8.0);
//!
//! let out = sae.decode(&f, None)?;
//! assert!(max_abs(&(&out - &r["sae_out"])?)? < 1e-5 * max_abs(&r["sae_out"])?);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod dictionary;
pub mod format;
pub mod testing;

pub use dictionary::{Architecture, Dictionary};

/// What can go wrong reading, writing, encoding or decoding a dictionary.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// a dictionary or checkpoint file that is missing, unreadable, or says something
    /// this crate does not support; the problem says which and what to change
    #[error("{path}: {problem}")]
    BadFile {
        /// the file or folder at fault
        path: std::path::PathBuf,
        /// what is wrong with it
        problem: String,
    },
    /// an argument that does not fit the dictionary (input width, feature index, a
    /// tensor the architecture needs but the dictionary lacks)
    #[error("{0}")]
    BadInput(String),
    /// a tensor operation failed (shapes, dtypes, a safetensors file candle cannot write)
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// An output file that could not be written whole (the old one is kept).
    #[error(transparent)]
    Write(#[from] glassbox_atomic::Error),
}

/// This crate's result, with [`SaeError`].
pub type Result<T> = std::result::Result<T, SaeError>;
pub mod train;
