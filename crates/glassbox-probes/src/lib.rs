//! glassbox-probes: read a "truth direction" from a model's activations. Statement
//! datasets (CSV or built in), activations at a chosen hook and token position, three
//! probes (logistic regression, mass-mean, CCS), and the metrics to judge them.

pub mod activations;
pub mod dataset;
pub mod linalg;
pub mod metrics;
pub mod probe;
pub mod store;
pub mod sweep;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Hub(#[from] glassbox_hub::HubError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ProbeError>;

pub(crate) fn bad(msg: impl Into<String>) -> ProbeError {
    ProbeError::BadInput(msg.into())
}
