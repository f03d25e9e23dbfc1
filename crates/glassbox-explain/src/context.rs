//! A context: a window of token texts and a feature's activation at each, rendered for a
//! language model with chosen tokens marked `<<like this>>`.

use serde::{Deserialize, Serialize};

/// One window of text with the feature's activation per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// the tokens' texts, in order (leading spaces kept)
    pub tokens: Vec<String>,
    /// the feature's activation at each token
    pub acts: Vec<f32>,
}

impl Context {
    /// A context; `acts` is cut or padded with zeros to the tokens' length.
    pub fn new(tokens: Vec<String>, mut acts: Vec<f32>) -> Self {
        acts.resize(tokens.len(), 0.0);
        Context { tokens, acts }
    }

    /// The largest activation in the context (0 when empty).
    pub fn max_act(&self) -> f32 {
        self.acts.iter().copied().fold(0.0, f32::max)
    }

    /// Which tokens activate above `fraction` × the context's largest activation.
    pub fn marks(&self, fraction: f32) -> Vec<bool> {
        self.active(fraction * self.max_act())
    }

    /// Which tokens activate above `threshold`.
    pub fn active(&self, threshold: f32) -> Vec<bool> {
        self.acts.iter().map(|&a| a > threshold).collect()
    }

    /// The text with each run of `marks`-ed tokens wrapped in `<<` and `>>` (a run of
    /// adjacent marked tokens is one span, as delphi writes them).
    pub fn marked(&self, marks: &[bool]) -> String {
        let mut out = String::new();
        let mut open = false;
        for (i, t) in self.tokens.iter().enumerate() {
            let m = marks.get(i).copied().unwrap_or(false);
            if m && !open {
                out.push_str("<<");
            } else if !m && open {
                out.push_str(">>");
            }
            open = m;
            out.push_str(t);
        }
        if open {
            out.push_str(">>");
        }
        out
    }

    /// The plain text, nothing marked.
    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}
