//! Test support shared by the workspace's test suites: the reference fixtures in the
//! repository, the default model when it has been fetched, and tensor comparisons.
//!
//! [`tiny_dir`] finds a tiny HF checkpoint (`fixtures/tiny-llama`, `tiny-gpt2`, …: a
//! `config.json`, `model.safetensors` and a `reference.safetensors` of HF transformers'
//! `input_ids`, `logits` and activations under TransformerLens hook names), which
//! [`load_reference`] reads; [`max_abs_diff`] and [`rel_err`] compare glassbox's tensors
//! with it. [`default_gguf`] and [`gemma3_gguf`] find the fetched GGUF models, or skip.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use glassbox_fixtures::{load_reference, max_abs_diff, rel_err, tiny_dir};
//!
//! let r = load_reference(&tiny_dir("llama").join("reference.safetensors"));
//! let logits = &r["logits"]; // [batch, seq, d_vocab]
//! assert_eq!(logits.dims(), &[2, 16, 512]);
//! assert_eq!(r["blocks.1.hook_resid_post"].dims(), &[2, 16, 64]);
//! assert_eq!(max_abs_diff(logits, logits), 0.0);
//! // doubling every logit moves each by |x|: the largest move is max |x|, so rel_err is 1
//! let doubled = (logits * 2.0)?;
//! assert!((rel_err(&doubled, logits) - 1.0).abs() < 1e-6);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// `fixtures/tiny-{family}`
pub fn tiny_dir(family: &str) -> PathBuf {
    fixtures().join(format!("tiny-{family}"))
}

/// Every tensor of a safetensors file (a fixture's `reference.safetensors`), on the CPU,
/// by name. Panics when the file cannot be read.
pub fn load_reference(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference safetensors")
}

/// max |a − b| over all elements. Panics when the shapes differ or the tensors are not
/// f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| / max |b|: the largest error relative to the reference `b`'s scale (the
/// scale floored at 1e-12). Panics like [`max_abs_diff`].
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(a, b) / scale.max(1e-12)
}

/// The default model, if `glassbox fetch` has put it in the cache. Absent, tests print
/// a loud SKIPPED line — and fail under `CI`, which fetches it first.
pub fn default_gguf() -> Option<PathBuf> {
    fetched_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "the default model",
        "glassbox fetch",
    )
}

/// Gemma-3-270M (Q4_K_M), if `glassbox fetch --model gemma3-270m` has put it in the
/// cache; absent, a loud SKIPPED line, or a failure under `CI` (which fetches it).
pub fn gemma3_gguf() -> Option<PathBuf> {
    fetched_model(
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270M",
        "glassbox fetch --model gemma3-270m",
    )
}

/// `$GLASSBOX_HOME/models/{file}` (default `~/.cache/glassbox`) when it exists.
fn fetched_model(file: &str, what: &str, fetch: &str) -> Option<PathBuf> {
    let home = std::env::var_os("GLASSBOX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glassbox")))?;
    let p = home.join("models").join(file);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI must fetch {what} first (`{fetch}`): {} is missing",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {what} not fetched ({}); run `{fetch}`",
        p.display()
    );
    None
}
