//! One error type for the runtime: every variant names the thing that was wrong and,
//! where there is one, what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong opening or running a model. The `Display` text is the
/// message users see (the CLI and the Python package print it as it is).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// a file or directory that cannot be read as what it should be (a checkpoint, a
    /// `config.json`, a tokenizer, a tokens file): missing, truncated, corrupt, or a
    /// config field that is refused
    #[error("{path}: {problem}")]
    BadFile {
        /// the file or directory
        path: PathBuf,
        /// what is wrong with it
        problem: String,
    },

    /// the checkpoint's `model_type` (GGUF: `general.architecture`) is not one glassbox runs
    #[error("unsupported architecture `{found}`; glassbox supports: {supported}")]
    UnsupportedArchitecture {
        /// the architecture the file names
        found: String,
        /// the supported ones, comma-separated
        supported: String,
    },

    /// a weight's shape is not the one `config.json` implies
    #[error("config.json and the weights disagree: tensor `{tensor}` has shape {actual:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// the tensor's name in the checkpoint
        tensor: String,
        /// the shape the config implies
        expected: Vec<usize>,
        /// the shape the file holds
        actual: Vec<usize>,
    },

    /// a tensor the architecture needs is not in the checkpoint (its name as asked for:
    /// in HF checkpoints without the `model.` / `transformer.` prefix)
    #[error("weights file has no tensor `{0}` (is this checkpoint complete, and the right architecture?)")]
    MissingTensor(String),

    /// an input token id is not below the vocabulary size
    #[error(
        "token id {id} at position {position} is out of range: the vocabulary has {vocab} entries"
    )]
    TokenOutOfRange {
        /// the token id
        id: u32,
        /// its index within its sequence
        position: usize,
        /// the vocabulary size (`d_vocab`)
        vocab: usize,
    },

    /// the input (with any KV-cached positions before it) is longer than the context
    #[error("input has {len} tokens but the model's context is {n_ctx}; shorten the prompt or split it into windows")]
    TooLong {
        /// positions needed: cached plus new tokens (or the largest position id + 1)
        len: usize,
        /// the model's context length (`n_ctx`)
        n_ctx: usize,
    },

    /// a hook name or pattern that matches no hook point of this model
    #[error("unknown hook point `{name}`{suggestion}; `glassbox inspect --model ...` lists every hook point")]
    UnknownHook {
        /// the name or glob pattern asked for
        name: String,
        /// ` (did you mean `…`?)` with the nearest hook name, or empty
        suggestion: String,
    },

    /// an intervention or hook function that does not fit the activation it edits
    /// (wrong shape, a position or head out of range, a head edit on a hook without heads)
    #[error("hook `{hook}`: {problem}")]
    BadIntervention {
        /// the hook point's name
        hook: String,
        /// what does not fit
        problem: String,
    },

    /// any other input, option or config value that cannot be used; the message says
    /// which and why
    #[error("{0}")]
    BadInput(String),

    /// the tokenizer cannot be built or cannot encode/decode, or the model has none
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// a tensor operation failed inside candle
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// A [`ModelError::BadFile`] for `path`, the problem written with `Display`.
    pub fn bad_file(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> Self {
        ModelError::BadFile {
            path: path.into(),
            problem: problem.to_string(),
        }
    }
}
