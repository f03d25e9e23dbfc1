//! One error type for the runtime: every variant names the thing that was wrong and,
//! where there is one, what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },

    #[error("unsupported architecture `{found}`; glassbox supports: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },

    #[error("config.json and the weights disagree: tensor `{tensor}` has shape {actual:?}, the config implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("weights file has no tensor `{0}` (is this checkpoint complete, and the right architecture?)")]
    MissingTensor(String),

    #[error(
        "token id {id} at position {position} is out of range: the vocabulary has {vocab} entries"
    )]
    TokenOutOfRange {
        id: u32,
        position: usize,
        vocab: usize,
    },

    #[error("input has {len} tokens but the model's context is {n_ctx}; shorten the prompt or split it into windows")]
    TooLong { len: usize, n_ctx: usize },

    #[error("unknown hook point `{name}`{suggestion}; `glassbox inspect --model ...` lists every hook point")]
    UnknownHook { name: String, suggestion: String },

    #[error("hook `{hook}`: {problem}")]
    BadIntervention { hook: String, problem: String },

    #[error("{0}")]
    BadInput(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn bad_file(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> Self {
        ModelError::BadFile {
            path: path.into(),
            problem: problem.to_string(),
        }
    }
}
