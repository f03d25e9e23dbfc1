//! Checkpoints that resume bit-for-bit: parameters, Adam moments and step count,
//! dead-latent counters, normalisation and the caller's own state (e.g. how many
//! activation rows were consumed).
//!
//! Layout: `checkpoint.json` names the weights file `checkpoint-<step>.safetensors`.
//! Each is written to a temporary file and renamed, the JSON last, so at every moment
//! the JSON points at a complete weights file; a kill or a full disk mid-write leaves
//! the previous checkpoint usable.

use super::params::PARAM_NAMES;
use super::{TrainConfig, Trainer};
use crate::{Result, SaeError};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize)]
struct State {
    format: u32,
    step: usize,
    total_steps: usize,
    adam_t: i32,
    scale_in: f32,
    scale_out: f32,
    batch_topk_threshold: f32,
    weights: String,
    config: TrainConfig,
    extra: serde_json::Value,
}

fn bad(path: &Path, problem: impl Into<String>) -> SaeError {
    SaeError::BadFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Whether `dir` holds a checkpoint (its `checkpoint.json`), i.e. a run to resume.
pub fn exists(dir: &Path) -> bool {
    dir.join("checkpoint.json").is_file()
}

/// The step of the checkpoint in `dir`, from its `checkpoint.json` alone (`None`: no
/// readable checkpoint).
pub fn saved_step(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("checkpoint.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["step"].as_u64().map(|s| s as usize)
}

/// Writes a checkpoint into `dir` (created if needed) and removes older weights files.
pub fn save(t: &Trainer, dir: &Path, extra: serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut blobs: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = Vec::new();
    for (prefix, p) in [("p", &t.params), ("m", &t.opt.m), ("v", &t.opt.v)] {
        for (name, v) in PARAM_NAMES.iter().zip(p.tensors()) {
            if !v.is_empty() {
                blobs.push((
                    format!("{prefix}.{name}"),
                    bytes_f32(v),
                    vec![v.len()],
                    Dtype::F32,
                ));
            }
        }
    }
    blobs.push((
        "since_fired".into(),
        t.since_fired.iter().flat_map(|x| x.to_le_bytes()).collect(),
        vec![t.since_fired.len()],
        Dtype::U64,
    ));
    let views = blobs
        .iter()
        .map(|(n, b, s, dt)| {
            TensorView::new(*dt, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(dir, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = format!("checkpoint-{:09}.safetensors", t.step);
    glassbox_atomic::write_with(&dir.join(&weights), |tmp| {
        safetensors::serialize_to_file(views, None, tmp)
            .map_err(|e| bad(tmp, format!("cannot write the checkpoint: {e}")))?;
        super::kill_point::kill_point("checkpoint-weights");
        Ok::<_, crate::SaeError>(())
    })?;
    let state = State {
        format: 1,
        step: t.step,
        total_steps: t.total_steps,
        adam_t: t.opt.t,
        scale_in: t.scale_in,
        scale_out: t.scale_out,
        batch_topk_threshold: t.batch_topk_threshold,
        weights: weights.clone(),
        config: t.cfg.clone(),
        extra,
    };
    let json = dir.join("checkpoint.json");
    let text = serde_json::to_string_pretty(&state).map_err(|e| bad(&json, e.to_string()))?;
    glassbox_atomic::write_with(&json, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| glassbox_atomic::Error::writing(tmp, e))?;
        super::kill_point::kill_point("checkpoint-state");
        Ok::<_, crate::SaeError>(())
    })?;
    // older weights are now unreferenced
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("checkpoint-") && name.ends_with(".safetensors") && name != weights
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Restores a trainer (and the caller's `extra` state) from `dir`.
pub fn load(dir: &Path) -> Result<(Trainer, serde_json::Value)> {
    let json = dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&json).map_err(|e| bad(&json, e.to_string()))?;
    let state: State = serde_json::from_str(&text)
        .map_err(|e| bad(&json, format!("not a glassbox checkpoint: {e}")))?;
    let wpath = dir.join(&state.weights);
    let bytes = std::fs::read(&wpath).map_err(|e| bad(&wpath, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&wpath, format!("corrupt checkpoint weights: {e}")))?;
    let mut t =
        Trainer::new(state.config, state.total_steps).map_err(|e| bad(&json, e.to_string()))?;
    let read_into = |name: &str, out: &mut Vec<f32>| -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let v = st
            .tensor(name)
            .map_err(|_| bad(&wpath, format!("no tensor `{name}`")))?;
        if v.dtype() != Dtype::F32 || v.data().len() != out.len() * 4 {
            return Err(bad(&wpath, format!("`{name}` has the wrong type or size")));
        }
        for (o, c) in out.iter_mut().zip(v.data().chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    };
    for (prefix, p) in [
        ("p", &mut t.params),
        ("m", &mut t.opt.m),
        ("v", &mut t.opt.v),
    ] {
        for (name, v) in PARAM_NAMES.iter().zip(p.tensors_mut()) {
            read_into(&format!("{prefix}.{name}"), v)?;
        }
    }
    let sf = st
        .tensor("since_fired")
        .map_err(|_| bad(&wpath, "no tensor `since_fired`"))?;
    if sf.data().len() != t.since_fired.len() * 8 {
        return Err(bad(&wpath, "`since_fired` has the wrong size"));
    }
    for (o, c) in t.since_fired.iter_mut().zip(sf.data().chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *o = u64::from_le_bytes(a);
    }
    t.step = state.step;
    t.opt.t = state.adam_t;
    t.scale_in = state.scale_in;
    t.scale_out = state.scale_out;
    t.batch_topk_threshold = state.batch_topk_threshold;
    Ok((t, state.extra))
}
