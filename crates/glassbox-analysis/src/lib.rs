//! glassbox-analysis: causal experiments built on the runtime's hooks — activation and
//! attribution patching, steering, ablation — and the IOI dataset they are shown on.

pub mod ablation;
pub mod ioi;
pub mod metric;
pub mod patching;
pub mod sae_eval;
pub mod steering;
pub mod transcoders;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Dictionary(#[from] glassbox_sae::SaeError),
}

pub type Result<T> = std::result::Result<T, AnalysisError>;

pub(crate) fn bad(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::BadInput(msg.into())
}
