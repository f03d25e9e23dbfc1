//! glassbox-probes: read a "truth direction" from a model's activations. Statement
//! datasets ([`dataset`]: CSV or built in), activations at a chosen hook and token
//! position ([`activations`], with a disk cache), three probes ([`probe`]: logistic
//! regression, mass-mean, CCS), the metrics to judge them ([`metrics`]: accuracy,
//! AUROC), layer sweeps and the cross-dataset generalisation matrix ([`sweep`]), and
//! probe files ([`store`]). `glassbox probe sweep|train`, `glassbox monitor` and the
//! Python package's `probe_sweep` are built on [`sweep::sweep_report`] and [`store`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use glassbox_probes::activations::Position;
//! use glassbox_probes::dataset::{Dataset, Statement};
//! use glassbox_probes::probe::Method;
//! use glassbox_probes::sweep::{sweep_report, ProbeSpec};
//!
//! // the tiny Llama fixture (2 layers, d_model 64) has no tokenizer: give it a
//! // word-level one
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let mut model = glassbox_model::load_model(fixture.as_ref())?;
//! # let words = ["the", "a", "cat", "dog", "sat", "ran", "yes", "no"];
//! # let mut vocab = serde_json::json!({"<unk>": 0, "<s>": 1, "</s>": 2});
//! # for (i, w) in words.iter().enumerate() {
//! #     vocab[*w] = serde_json::json!(i + 3);
//! # }
//! # let tok = serde_json::json!({
//! #     "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
//! #     "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
//! #     "post_processor": null, "decoder": null,
//! #     "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
//! # });
//! # let dir = tempfile::tempdir()?;
//! # let tokenizer_json = dir.path().join("tokenizer.json");
//! # std::fs::write(&tokenizer_json, tok.to_string())?;
//! model.tokenizer = Some(glassbox_model::TextTokenizer::from_file(&tokenizer_json)?);
//!
//! // 16 different statements whose truth is their last word ("yes" true, "no"
//! // false): a direction every probe should find
//! let statements = (0..16)
//!     .map(|i| Statement {
//!         text: format!(
//!             "{} {} {} {}",
//!             ["the", "a"][i / 8],
//!             ["cat", "dog"][i / 4 % 2],
//!             ["sat", "ran"][i / 2 % 2],
//!             ["yes", "no"][i % 2],
//!         ),
//!         label: u8::from(i % 2 == 0),
//!         extra: Vec::new(),
//!     })
//!     .collect();
//! let data = Dataset { name: "toy".into(), statements, extra_columns: Vec::new() };
//!
//! // `resid_post` is read as `blocks.{L}.hook_resid_post`
//! let spec = ProbeSpec::new("resid_post", Position::Last, Method::MassMean, 0, None);
//! let report = sweep_report(&model, &data, &spec, &[0, 1])?;
//! assert_eq!(report.split, "stratified 75/25, seed 0");
//! assert_eq!(report.layers[1].hook, "blocks.1.hook_resid_post");
//! for layer in &report.layers {
//!     assert_eq!(layer.test.accuracy, 1.0);
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod absorption;
pub mod activations;
pub mod dataset;
pub mod linalg;
pub mod metrics;
pub mod probe;
pub mod sparse;
pub mod store;
pub mod sweep;

/// Why a probe could not be trained, applied, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// a dataset, probe file, option or request that cannot be used as it is; the
    /// message says what is wrong (and usually what to change)
    #[error("{0}")]
    BadInput(String),
    /// the model could not be run (or has no tokenizer for text statements)
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    /// a built-in dataset's source data could not be fetched
    #[error(transparent)]
    Hub(#[from] glassbox_hub::HubError),
    /// a tensor operation, or reading/writing a safetensors file, failed
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// An output file that could not be written whole (the old one is kept).
    #[error(transparent)]
    Write(#[from] glassbox_atomic::Error),
}

/// `Result` with a [`ProbeError`].
pub type Result<T> = std::result::Result<T, ProbeError>;

pub(crate) fn bad(msg: impl Into<String>) -> ProbeError {
    ProbeError::BadInput(msg.into())
}
