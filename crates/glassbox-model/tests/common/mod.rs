#![allow(dead_code)]
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn load_reference(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("reference safetensors")
}

/// max |a − b| / max |b|
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}

/// The default model, if `glassbox fetch` has put it in the cache. Tests that need it
/// print a loud SKIPPED line when it is absent (CI fetches it first).
pub fn default_gguf() -> Option<PathBuf> {
    let home = std::env::var_os("GLASSBOX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glassbox")))?;
    let p = home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI must fetch the default model first (`glassbox fetch`): {} is missing",
                p.display()
            );
        }
        eprintln!(
            "SKIPPED: default model not fetched ({}); run `glassbox fetch`",
            p.display()
        );
        None
    }
}
