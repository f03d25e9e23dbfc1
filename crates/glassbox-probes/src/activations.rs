//! Activations of statements at one hook per layer and one token position, batched,
//! with an optional on-disk cache so sweeps do not rerun the model.

use crate::{bad, Result};
use candle_core::{Device, Tensor};
use glassbox_model::{Batch, HookFilter, LogitsMode, Model, PaddingSide, Run};
use std::collections::HashMap;
use std::path::Path;

/// Which token's activation stands for a statement (`--position`; `"last"` / `"mean"`
/// in probe files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// the statement's last token
    Last,
    /// the mean over the statement's tokens (a BOS the tokenizer adds left out)
    Mean,
}

impl Position {
    /// `last` or `mean`; anything else is
    /// [`ProbeError::BadInput`](crate::ProbeError::BadInput).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Position::Last),
            "mean" => Ok(Position::Mean),
            other => Err(bad(format!("unknown position `{other}`; use last or mean"))),
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Position::Last => "last",
            Position::Mean => "mean",
        }
    }
}

/// The hook name at `layer`: `hook` with `{L}` replaced, e.g.
/// `blocks.{L}.hook_resid_post` at layer 3 is `blocks.3.hook_resid_post` (a name
/// without `{L}` is returned as it is).
pub fn hook_name(hook: &str, layer: usize) -> String {
    hook.replace("{L}", &layer.to_string())
}

/// `[layer][statement][width]` activations: one row per statement for each layer asked
/// for, in the order of the `layers` argument of [`collect`].
pub type Activations = Vec<Vec<Vec<f32>>>;

fn cache_key(
    model: &Model,
    hook: &str,
    layers: &[usize],
    pos: Position,
    texts: &[String],
) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    eat(model.source.to_string_lossy().as_bytes());
    eat(hook.as_bytes());
    eat(format!("{layers:?}{pos:?}").as_bytes());
    for t in texts {
        eat(t.as_bytes());
        eat(&[0]);
    }
    format!("{h:016x}")
}

/// Runs the model over `texts` and returns one row per statement at `hook` (a name with
/// `{L}`, see [`hook_name`]) for each of `layers`, at `position`. Statements are
/// encoded with the model's BOS rule, run in right-padded batches of 16, and the pass
/// stops after the deepest layer asked for.
///
/// With `cache_dir`, the rows are read from (or written to)
/// `cache_dir/acts-{key}.safetensors`, `key` a hash of the model's path, the hook, the
/// layers, the position and the texts: sweeps over the same data do not rerun the
/// model. Errors: a layer past the model's last, an empty statement, a statement
/// longer than the model's context, a model without a tokenizer.
pub fn collect(
    model: &Model,
    texts: &[String],
    hook: &str,
    layers: &[usize],
    position: Position,
    cache_dir: Option<&Path>,
) -> Result<Activations> {
    let cfg = model.config();
    if let Some(&l) = layers.iter().find(|&&l| l >= cfg.n_layers) {
        return Err(bad(format!(
            "layer {l} does not exist (the model has {} layers, 0..{})",
            cfg.n_layers,
            cfg.n_layers - 1
        )));
    }
    if texts.is_empty() {
        return Err(bad("no statements to read activations from"));
    }
    let names: Vec<String> = layers.iter().map(|&l| hook_name(hook, l)).collect();
    let filter = HookFilter::new(names.clone(), cfg)?;
    let key = cache_key(model, hook, layers, position, texts);
    let cache_file = cache_dir.map(|d| d.join(format!("acts-{key}.safetensors")));
    if let Some(f) = cache_file.as_ref().filter(|f| f.exists()) {
        let t = candle_core::safetensors::load(f, &Device::Cpu)?;
        return names
            .iter()
            .map(|n| {
                Ok(t.get(n)
                    .ok_or_else(|| bad(format!("{}: no {n}", f.display())))?
                    .to_vec2::<f32>()?)
            })
            .collect();
    }
    let tok = model.tokenizer()?;
    let mut encoded = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let ids = tok.encode(t)?;
        if ids.is_empty() {
            return Err(bad(format!("statement {i} is empty")));
        }
        // BOS first where the model wants it (Gemma); the mean leaves it out
        let body = ids.len();
        let ids = tok.with_bos(ids);
        if ids.len() > cfg.n_ctx {
            return Err(bad(format!(
                "statement {i} is {} tokens, longer than the model's context of {}: shorten it",
                ids.len(),
                cfg.n_ctx
            )));
        }
        encoded.push((ids.len() - body, ids));
    }
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let mut out: Activations = vec![Vec::with_capacity(texts.len()); layers.len()];
    for chunk in encoded.chunks(16) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
        let batch = Batch::padded(&rows, 0, PaddingSide::Right);
        let mut run = Run::new().cache(filter.clone()).logits(LogitsMode::None);
        if deepest + 1 < cfg.n_layers {
            run = run.stop_at_layer(deepest + 1);
        }
        let res = model.transformer.run(&batch, &mut run)?;
        for (li, name) in names.iter().enumerate() {
            let a = &res.cache[name];
            for (r, (start, ids)) in chunk.iter().enumerate() {
                let row = a.get(r)?.narrow(0, *start, ids.len() - start)?;
                let v = match position {
                    Position::Last => row.get(ids.len() - start - 1)?,
                    Position::Mean => row.mean(0)?,
                };
                out[li].push(v.flatten_all()?.to_vec1::<f32>()?);
            }
        }
    }
    if let Some(f) = cache_file {
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut map = HashMap::new();
        for (name, rows) in names.iter().zip(&out) {
            let d = rows[0].len();
            map.insert(
                name.clone(),
                Tensor::from_vec(
                    rows.iter().flatten().copied().collect::<Vec<f32>>(),
                    (rows.len(), d),
                    &Device::Cpu,
                )?,
            );
        }
        glassbox_atomic::write_with(&f, |tmp| {
            Ok::<_, crate::ProbeError>(candle_core::safetensors::save(&map, tmp)?)
        })?;
    }
    Ok(out)
}
