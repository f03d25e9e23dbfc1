//! A transcoder set on disk: `index.json` plus one SAELens transcoder folder per layer
//! (what `glassbox train-transcoders` writes).

use crate::{bad, CircuitError, Result};
use glassbox_model::ModelConfig;
use glassbox_sae::Dictionary;
use std::path::{Path, PathBuf};

/// The set's index file, inside the set's folder ([`SetIndex`]).
pub const SET_INDEX: &str = "index.json";

/// What `index.json` says it is (`format`).
pub const SET_FORMAT: &str = "glassbox transcoder set 1";

/// A transcoder set's `index.json`, the one reader and writer of it: which folder holds
/// each layer's transcoder, and what training measured. Fields beyond `layers` are
/// optional so that sets written by hand (or by older versions) still read.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SetIndex {
    /// [`SET_FORMAT`] in sets glassbox writes
    #[serde(default)]
    pub format: Option<String>,
    /// the model label the set was trained on
    #[serde(default)]
    pub model: Option<String>,
    /// the transcoders' training architecture (`topk`, `standard`, …)
    #[serde(default)]
    pub arch: Option<String>,
    /// whether the transcoders have a linear skip connection (`W_skip`)
    #[serde(default)]
    pub skip: Option<bool>,
    /// one entry per layer that has a transcoder; sorted by layer once read
    pub layers: Vec<SetLayer>,
    /// training rows (tokens) each transcoder saw
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_tokens: Option<u64>,
    /// wall time of the whole training run
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// held-out rows the per-layer FVUs were measured on
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_tokens: Option<u64>,
    /// every transcoder spliced in at once (`glassbox_analysis::transcoders::splice_all`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splice_all: Option<serde_json::Value>,
    /// the set's one massive-activation rule (`glassbox_model::MassiveNorm::to_json`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub massive_norm: Option<serde_json::Value>,
    /// training rows the massive-activation rule left out
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_massive_rows_excluded: Option<u64>,
}

/// One layer's entry in [`SetIndex`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetLayer {
    /// the block whose MLP the transcoder replaces
    pub layer: usize,
    /// the transcoder's folder, relative to the set's
    pub path: String,
    /// the hook it reads (`blocks.L.ln2.hook_normalized`); informational, the loader
    /// checks the transcoder's own `cfg.json`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_in: Option<String>,
    /// the hook it predicts (`blocks.L.hook_mlp_out`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_out: Option<String>,
    /// number of latents
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_sae: Option<usize>,
    /// fraction of variance of `hook_out` left unexplained on held-out rows
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fvu: Option<f64>,
}

impl SetIndex {
    /// `dir/index.json`, parsed and checked: layers listed once each, with relative
    /// paths inside the set. `Ok(None)` when the folder has no index;
    /// [`CircuitError::BadInput`] when it is not JSON of this shape, lists a layer twice
    /// or has a path that leaves the folder.
    pub fn read(dir: &Path) -> Result<Option<SetIndex>> {
        let path = dir.join(SET_INDEX);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CircuitError::Io(format!("cannot read {}", path.display()), e))?;
        let mut index: SetIndex = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{} is not a transcoder set index ({e}); `glassbox train-transcoders --out DIR` writes one",
                path.display()
            ))
        })?;
        index.layers.sort_by_key(|l| l.layer);
        if let Some(w) = index.layers.windows(2).find(|w| w[0].layer == w[1].layer) {
            return Err(bad(format!(
                "{}: layer {} is listed twice",
                path.display(),
                w[0].layer
            )));
        }
        if let Some(l) = index.layers.iter().find(|l| {
            Path::new(&l.path).is_absolute()
                || Path::new(&l.path)
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        }) {
            return Err(bad(format!(
                "{}: layer {}'s path `{}` leaves the set's folder",
                path.display(),
                l.layer,
                l.path
            )));
        }
        Ok(Some(index))
    }

    /// Writes `dir/index.json` atomically (a temporary sibling, then a rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| bad(format!("cannot encode the set index: {e}")))?;
        Ok(glassbox_atomic::write(
            &dir.join(SET_INDEX),
            text.as_bytes(),
        )?)
    }
}

/// Transcoders by layer; a layer without one keeps its true MLP, which the graph shows as
/// that layer's error nodes.
pub struct TranscoderSet {
    /// the folder the set was read from (empty for [`TranscoderSet::from_dictionaries`])
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
        let index = SetIndex::read(dir)?.ok_or_else(|| {
            bad(format!(
                "{} is not a transcoder set (no {SET_INDEX}; `glassbox train-transcoders --out DIR` writes one)",
                dir.display()
            ))
        })?;
        let mut by_layer: Vec<Option<Dictionary>> = (0..cfg.n_layers).map(|_| None).collect();
        for entry in &index.layers {
            let l = entry.layer;
            if l >= cfg.n_layers {
                return Err(bad(format!(
                    "the transcoder set has a transcoder for layer {l}, but the model has layers 0..{}: it was trained on another model",
                    cfg.n_layers
                )));
            }
            let d = glassbox_sae::format::load(&dir.join(&entry.path))?;
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
            model: index.model,
        })
    }

    /// A set built in memory (tests, freshly trained transcoders): one slot per layer of
    /// `cfg`, each checked as [`TranscoderSet::load`] does.
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

    /// The layers that have a transcoder, ascending.
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
