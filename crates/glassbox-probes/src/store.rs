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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeMeta {
    /// the model's file or directory name
    pub model: String,
    pub architecture: String,
    pub d_model: usize,
    pub n_layers: usize,
    pub hook: String,
    pub layer: usize,
    pub position: Position,
    pub method: Method,
    /// how inputs are normalised before `weight`
    pub normalisation: String,
    pub data: String,
    pub data_hash: String,
    pub split: String,
    pub test_accuracy: f64,
    pub test_auroc: f64,
}

/// The model as probe files record it ([`Model::label`]).
pub fn model_name(model: &Model) -> String {
    model.label()
}

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
    // write both files beside their final names, then rename: never a half-written probe
    let (st, js) = (dir.join("probe.safetensors"), dir.join("probe.json"));
    candle_core::safetensors::save(&tensors, dir.join(".probe.safetensors.tmp"))?;
    std::fs::write(
        dir.join(".probe.json.tmp"),
        serde_json::to_string_pretty(meta).expect("serialisable"),
    )
    .map_err(|e| bad(format!("cannot write {}: {e}", js.display())))?;
    std::fs::rename(dir.join(".probe.safetensors.tmp"), &st)
        .map_err(|e| bad(format!("cannot write {}: {e}", st.display())))?;
    std::fs::rename(dir.join(".probe.json.tmp"), &js)
        .map_err(|e| bad(format!("cannot write {}: {e}", js.display())))?;
    Ok(())
}

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

/// Refuses a probe trained on another model, hook or width.
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
