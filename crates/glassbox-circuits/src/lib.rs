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
//! - [`trace_prompt`]: all of it for one prompt (`glassbox trace`, Python's
//!   `glassbox.trace`), ending in the graph file ([`GraphJson`], circuit-tracer's shape).
//!
//! The whole path on the tiny llama fixture, with random transcoders standing in for
//! trained ones (the tiny model has no tokenizer, so the prompt is token ids):
//!
//! ```
//! # fn main() -> glassbox_circuits::Result<()> {
//! use glassbox_circuits::{
//!     attribute, intervene, prune, AttributionOptions, InterventionMode, PruneOptions,
//!     ReplacementState, TranscoderSet,
//! };
//! use glassbox_sae::testing::RandomTranscoder;
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let model = glassbox_model::load_model(dir.as_ref())?;
//! let cfg = model.config().clone();
//! // one TopK transcoder (48 latents, k = 6) per layer: ln2.hook_normalized → hook_mlp_out
//! let mut by_layer = Vec::new();
//! for l in 0..cfg.n_layers {
//!     let random = RandomTranscoder::new(l, cfg.d_model, 48, 7 + l as u64);
//!     by_layer.push(Some(RandomTranscoder { k: Some(6), ..random }.build()?));
//! }
//! let set = TranscoderSet::from_dictionaries(by_layer, &cfg)?;
//! let tokens = [1, 45, 300, 17, 99, 256, 3, 410];
//! let state = ReplacementState::new(&model.transformer, &set, &tokens, 10_000)?;
//!
//! // with its error nodes the frozen replacement model is the real one: nothing moves
//! let t = &model.transformer;
//! let unedited = intervene(t, &set, &state, &[], InterventionMode::Frozen, 5)?;
//! assert!(unedited.kl.abs() < 1e-6);
//!
//! let graph = attribute(t, &set, &state, &AttributionOptions::default())?;
//! // features, then an error node per (layer, position), a token per position, logits
//! let (n_layers, s) = (cfg.n_layers, tokens.len());
//! assert_eq!(graph.n(), graph.n_features + n_layers * s + s + graph.n_logits);
//! let pruned = prune(&graph, PruneOptions::default())?;
//! assert!(pruned.kept_influence >= 0.8);
//! assert!((0.0..=1.0).contains(&pruned.replacement_score));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

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

/// Why tracing, loading a set or an intervention failed.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    /// the input cannot be traced (a set that does not fit the model, a prompt too short
    /// or too long, a target that is not one token, an edit outside the prompt, an
    /// unsupported architecture); the message says what to change
    #[error("{0}")]
    BadInput(String),
    /// the model runtime failed (loading, a forward pass, the tokenizer)
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    /// a tensor operation failed
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// a transcoder could not be read or used
    #[error(transparent)]
    Dictionary(#[from] glassbox_sae::SaeError),
    /// a file could not be read: what was being done, and the OS error
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// An output file that could not be written whole (the old one is kept).
    #[error(transparent)]
    Write(#[from] glassbox_atomic::Error),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, CircuitError>;

pub(crate) fn bad(msg: impl Into<String>) -> CircuitError {
    CircuitError::BadInput(msg.into())
}
