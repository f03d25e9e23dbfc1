//! glassbox-sae: sparse dictionaries — SAEs and transcoders — in the formats the field
//! shares: SAELens v6 (read and write), legacy SAELens configs and EleutherAI sparsify
//! (read). Encoding and decoding follow SAELens' definitions exactly.

pub mod dictionary;
pub mod format;
pub mod testing;

pub use dictionary::{Architecture, Dictionary};

#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    #[error("{path}: {problem}")]
    BadFile {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, SaeError>;
pub mod train;
