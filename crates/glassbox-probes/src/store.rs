//! Probes on disk: `probe.safetensors` (`weight [d]`, `bias [1]`, raw activation space)
//! and `probe.json` (what it was trained on and how it scored).

use crate::activations::Position;
use crate::probe::{Method, Probe};
use crate::{bad, Result};
use candle_core::{Device, Tensor};
use glassbox_model::{hook_points, Model};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// What `probe.json` records: the model and hook a probe reads (checked by
/// [`check_compatible`] before it is applied), how it was trained and how it scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeMeta {
    /// the model's file or directory name
    pub model: String,
    /// the model's HF `model_type` ([`glassbox_model::Architecture::name`]), e.g. `llama`
    pub architecture: String,
    /// the model's residual width
    pub d_model: usize,
    /// the model's number of blocks
    pub n_layers: usize,
    /// the exact hook read, e.g. `blocks.3.hook_resid_post`
    pub hook: String,
    /// the layer of `hook`
    pub layer: usize,
    /// which token's activation stands for a statement
    pub position: Position,
    /// how the probe was trained
    pub method: Method,
    /// how inputs are normalised before `weight`
    pub normalisation: String,
    /// the training dataset's name ([`Dataset::name`](crate::dataset::Dataset::name))
    pub data: String,
    /// [`Dataset::hash`](crate::dataset::Dataset::hash) of the training data
    pub data_hash: String,
    /// how the held-out split was drawn, e.g. `stratified 75/25, seed 0`
    pub split: String,
    /// accuracy on the held-out split, threshold 0.5
    pub test_accuracy: f64,
    /// AUROC on the held-out split (NaN when it held one class)
    pub test_auroc: f64,
}

/// The model as probe files record it ([`Model::label`]).
pub fn model_name(model: &Model) -> String {
    model.label()
}

/// Writes `probe` and `meta` to `dir` (created if missing) as `probe.safetensors`
/// (f32) and `probe.json`, each file atomically, the weights first.
pub fn save(dir: &Path, probe: &Probe, meta: &ProbeMeta) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    let w: Vec<f32> = probe.weight.iter().map(|&x| x as f32).collect();
    let n = w.len();
    let tensors = HashMap::from([
        ("weight".to_string(), Tensor::from_vec(w, n, &Device::Cpu)?),
        (
            "bias".to_string(),
            Tensor::from_vec(vec![probe.bias as f32], 1, &Device::Cpu)?,
        ),
    ]);
    // the pair is replaced together: a failed save leaves the old probe whole
    let text = serde_json::to_string_pretty(meta).expect("serialisable");
    let (weights, json) = (dir.join("probe.safetensors"), dir.join("probe.json"));
    glassbox_atomic::write_many(&[&weights, &json], |tmps| {
        candle_core::safetensors::save(&tensors, &tmps[0])?;
        std::fs::write(&tmps[1], &text)
            .map_err(|e| glassbox_atomic::Error::writing(&tmps[1], e))?;
        Ok::<_, crate::ProbeError>(())
    })
}

/// Reads a probe directory written by [`save`]. Errors name the file: no `probe.json`
/// (not a probe directory), JSON that is not a [`ProbeMeta`], no `weight` or `bias`
/// tensor, a `bias` that is not one value.
pub fn load(dir: &Path) -> Result<(Probe, ProbeMeta)> {
    let js = dir.join("probe.json");
    let text = std::fs::read_to_string(&js).map_err(|e| {
        bad(format!(
            "cannot read {}: {e} (is this a probe directory?)",
            js.display()
        ))
    })?;
    let meta: ProbeMeta = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{}: not a probe description: {e}", js.display())))?;
    let t = candle_core::safetensors::load(dir.join("probe.safetensors"), &Device::Cpu).map_err(
        |e| {
            bad(format!(
                "cannot read {}: {e}",
                dir.join("probe.safetensors").display()
            ))
        },
    )?;
    let get = |n: &str| {
        t.get(n)
            .ok_or_else(|| bad(format!("{}: no `{n}` tensor", dir.display())))
    };
    let weight: Vec<f64> = get("weight")?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let bias = match get("bias")?.to_vec1::<f32>()?[..] {
        [b] => b as f64,
        ref other => {
            return Err(bad(format!(
                "{}: `bias` must hold one value, it holds {}",
                dir.join("probe.safetensors").display(),
                other.len()
            )))
        }
    };
    Ok((
        Probe {
            method: meta.method,
            weight,
            bias,
        },
        meta,
    ))
}

/// Refuses a probe trained on another model shape (architecture, `d_model`, layers),
/// a hook `model` lacks, or a hook whose width is not the probe's. A probe from a
/// model of another name but the same shape is allowed, with a note on stderr.
pub fn check_compatible(meta: &ProbeMeta, probe: &Probe, model: &Model) -> Result<()> {
    let c = model.config();
    let name = model_name(model);
    if meta.d_model != c.d_model
        || meta.n_layers != c.n_layers
        || meta.architecture != c.architecture.name()
    {
        return Err(bad(format!(
            "this probe was trained on {} ({}, d_model {}, {} layers); {} is {}, d_model {}, {} layers",
            meta.model, meta.architecture, meta.d_model, meta.n_layers, name, c.architecture.name(), c.d_model, c.n_layers
        )));
    }
    let hooks = hook_points(c);
    let Some(info) = hooks.iter().find(|h| h.name == meta.hook) else {
        return Err(bad(format!(
            "the probe reads hook `{}`, which {name} does not have",
            meta.hook
        )));
    };
    let width = info.row_width().unwrap_or(0);
    if width != probe.weight.len() {
        return Err(bad(format!(
            "the probe has {} weights but `{}` is {width} wide",
            probe.weight.len(),
            meta.hook
        )));
    }
    if meta.model != name {
        eprintln!(
            "note: probe trained on {}, applied to {name} (same shape)",
            meta.model
        );
    }
    Ok(())
}
