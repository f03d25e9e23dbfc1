//! glassbox-circuits: attribution graphs through transcoders (Anthropic's "Circuit
//! Tracing", 2025; the open `circuit-tracer`).
//!
//! - [`TranscoderSet`]: one transcoder per layer (MLP input → `hook_mlp_out`), checked
//!   against the model it is used with.
//! - [`ReplacementState`]: one clean forward pass on a prompt, with everything the local
//!   replacement model freezes (attention patterns, norm denominators) and the error
//!   nodes (true MLP output − transcoder output) that keep it exact.
//! - [`attribute`]: the graph — active features, error nodes, token embeddings and output
//!   logits as nodes; direct linear effects as edges, from backward passes batched over
//!   targets through the frozen linear paths (residual stream and attention).
//! - [`prune`]: cumulative-influence pruning and the replacement / completeness scores.
//! - [`intervene`]: set or scale features and watch the output distribution move, in the
//!   frozen replacement model or in the real model through the transcoders.

mod attribution;
mod graph;
mod intervene;
mod prune;
mod replacement;
mod set;
pub mod trace;

pub use attribution::{attribute, Attribution, AttributionOptions, Node, NodeKind};
pub use graph::{
    graph_json, node_id, GraphContext, GraphJson, LinkJson, Metadata, NodeJson, GRAPH_FORMAT,
};
pub use intervene::{
    intervene, AppliedEdit, EditValue, FeatureEdit, InterventionMode, InterventionOutcome,
    TokenProb,
};
pub use prune::{node_influence, prune, PruneOptions, Pruned};
pub use replacement::{ActiveFeature, ReplacementState};
pub use set::{SetIndex, SetLayer, TranscoderSet, SET_FORMAT, SET_INDEX};
pub use trace::{trace_prompt, Trace, TraceOptions, MAX_TRACE_TOKENS};

#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Dictionary(#[from] glassbox_sae::SaeError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

pub type Result<T> = std::result::Result<T, CircuitError>;

pub(crate) fn bad(msg: impl Into<String>) -> CircuitError {
    CircuitError::BadInput(msg.into())
}
