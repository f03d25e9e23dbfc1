//! A transcoder set on disk: `index.json` plus one SAELens transcoder folder per layer
//! (what `glassbox train-transcoders` writes).

use crate::{bad, CircuitError, Result};
use glassbox_model::ModelConfig;
use glassbox_sae::Dictionary;
use std::path::{Path, PathBuf};

pub const SET_INDEX: &str = "index.json";

/// Transcoders by layer; a layer without one keeps its true MLP, which the graph shows as
/// that layer's error nodes.
pub struct TranscoderSet {
    pub dir: PathBuf,
    /// `by_layer[l]`: the transcoder standing in for block `l`'s MLP
    pub by_layer: Vec<Option<Dictionary>>,
    /// the model label the set was trained on (index.json's `model`)
    pub model: Option<String>,
}

fn input_hook(l: usize) -> String {
    format!("blocks.{l}.ln2.hook_normalized")
}
fn output_hook(l: usize) -> String {
    format!("blocks.{l}.hook_mlp_out")
}

impl TranscoderSet {
    /// Reads `dir/index.json` and every layer it lists, and checks each transcoder
    /// against `cfg`: its layer exists, it reads `blocks.L.ln2.hook_normalized` and
    /// predicts `blocks.L.hook_mlp_out`, and both widths are the model's d_model.
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let index_path = dir.join(SET_INDEX);
        let text = std::fs::read_to_string(&index_path).map_err(|e| {
            CircuitError::Io(
                format!(
                    "{} is not a transcoder set (no readable {SET_INDEX}; `glassbox train-transcoders --out DIR` writes one)",
                    dir.display()
                ),
                e,
            )
        })?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{}: not JSON ({e})", index_path.display())))?;
        let layers = index
            .get("layers")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad(format!("{}: no `layers` array", index_path.display())))?;
        let mut by_layer: Vec<Option<Dictionary>> = (0..cfg.n_layers).map(|_| None).collect();
        for entry in layers {
            let l = entry.get("layer").and_then(|v| v.as_u64()).ok_or_else(|| {
                bad(format!(
                    "{}: a layer entry has no `layer`",
                    index_path.display()
                ))
            })? as usize;
            let rel = entry
                .get("path")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(format!("{}: layer {l} has no `path`", index_path.display())))?;
            if l >= cfg.n_layers {
                return Err(bad(format!(
                    "the transcoder set has a transcoder for layer {l}, but the model has layers 0..{}: it was trained on another model",
                    cfg.n_layers
                )));
            }
            if by_layer[l].is_some() {
                return Err(bad(format!(
                    "{}: layer {l} is listed twice",
                    index_path.display()
                )));
            }
            let d = glassbox_sae::format::load(&dir.join(rel))?;
            check(&d, l, cfg)?;
            by_layer[l] = Some(d);
        }
        if by_layer.iter().all(Option::is_none) {
            return Err(bad(format!(
                "{}: the set lists no transcoders",
                index_path.display()
            )));
        }
        Ok(TranscoderSet {
            dir: dir.to_path_buf(),
            by_layer,
            model: index
                .get("model")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// A set built in memory (tests, freshly trained transcoders).
    pub fn from_dictionaries(by_layer: Vec<Option<Dictionary>>, cfg: &ModelConfig) -> Result<Self> {
        if by_layer.len() != cfg.n_layers {
            return Err(bad(format!(
                "{} layer slots for a model with {} layers",
                by_layer.len(),
                cfg.n_layers
            )));
        }
        for (l, d) in by_layer.iter().enumerate() {
            if let Some(d) = d {
                check(d, l, cfg)?;
            }
        }
        Ok(TranscoderSet {
            dir: PathBuf::new(),
            by_layer,
            model: None,
        })
    }

    pub fn layers_covered(&self) -> Vec<usize> {
        (0..self.by_layer.len())
            .filter(|&l| self.by_layer[l].is_some())
            .collect()
    }

    /// The transcoder of `layer`, or an error naming the layers that have one.
    pub fn get(&self, layer: usize) -> Result<&Dictionary> {
        self.by_layer
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                bad(format!(
                    "no transcoder for layer {layer}; this set covers layers {:?}",
                    self.layers_covered()
                ))
            })
    }
}

fn check(d: &Dictionary, l: usize, cfg: &ModelConfig) -> Result<()> {
    let (want_in, want_out) = (input_hook(l), output_hook(l));
    if d.hook_name.as_deref() != Some(want_in.as_str())
        || d.hook_name_out.as_deref() != Some(want_out.as_str())
    {
        return Err(bad(format!(
            "layer {l}'s transcoder maps {} → {}; the replacement model needs {want_in} → {want_out}",
            d.hook_name.as_deref().unwrap_or("(no hook_name)"),
            d.hook_name_out.as_deref().unwrap_or("(no hook_name_out)"),
        )));
    }
    if d.d_in != cfg.d_model || d.d_out != cfg.d_model {
        return Err(bad(format!(
            "layer {l}'s transcoder maps width {} → {}, but the model's d_model is {}: it was trained on another model",
            d.d_in, d.d_out, cfg.d_model
        )));
    }
    Ok(())
}
