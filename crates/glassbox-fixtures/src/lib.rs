//! Test support shared by the workspace's test suites: the reference fixtures in the
//! repository, the default model when it has been fetched, and tensor comparisons.

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

pub fn load_reference(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference safetensors")
}

/// max |a − b|
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

/// max |a − b| / max |b|
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
