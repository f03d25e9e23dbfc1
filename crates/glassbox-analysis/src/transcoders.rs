//! A set of transcoders standing in for a model's MLPs. `splice_all` replaces every
//! covered MLP output by its transcoder's prediction from the *spliced* model's own MLP
//! input, so errors compound through the layers as they would in a replacement model,
//! and reports how much of the next-token loss survives.

use crate::sae_eval::{kl_sum, Scored};
use crate::{bad, Result};
use candle_core::Tensor;
use glassbox_model::{Batch, HookFilter, ModelError, RowRule, Run, Transformer};
use glassbox_sae::Dictionary;
use serde::Serialize;
use std::collections::HashMap;

/// CE and KL with every transcoder spliced at once, against the clean model and against
/// zero-ablating the same MLP outputs, at the positions `rule` keeps (the others —
/// position 0, special tokens — keep their true activations and are not scored).
#[derive(Debug, Clone, Serialize)]
pub struct SpliceEval {
    /// transcoders spliced together
    pub transcoders: usize,
    /// windows evaluated
    pub windows: usize,
    /// predictions scored for CE: the kept positions that have a next token
    pub ce_tokens: u64,
    /// mean next-token cross-entropy of the clean model, in nats
    pub ce_clean: f64,
    /// the same with every covered MLP output replaced, at the kept positions, by its
    /// transcoder's prediction from the spliced model's own MLP input
    pub ce_spliced: f64,
    /// the same with every covered MLP output set to zero at the kept positions
    pub ce_zero_ablated: f64,
    /// (CE_zero − CE_spliced) / (CE_zero − CE_clean)
    pub ce_recovered: f64,
    /// mean over kept positions of KL(clean ‖ spliced)
    pub kl_spliced: f64,
    /// mean over kept positions of KL(clean ‖ zero-ablated)
    pub kl_zero_ablated: f64,
    /// 1 − KL_spliced / KL_zero
    pub kl_recovered: f64,
    /// always `false`: left-out positions keep their true activations
    pub first_position_spliced: bool,
}

fn hooks_of(d: &Dictionary) -> Result<(String, String)> {
    match (&d.hook_name, &d.hook_name_out) {
        (Some(i), Some(o)) => Ok((i.clone(), o.clone())),
        _ => Err(bad(
            "every dictionary of a transcoder set needs hook_name and hook_name_out",
        )),
    }
}

/// Evaluates the transcoders together on `windows` (equal length ≥ 3, each starting with
/// BOS), in batches of `batch_windows`; `rule` is the model's [`RowRule`], as in training
/// (its token rule only: no row is left out as massive here). Every dictionary of `set`
/// must name `hook_name` and `hook_name_out`. `on_batch` gets the number of windows of
/// each batch done. Three forward passes per batch: clean, spliced, zero-ablated.
pub fn splice_all(
    model: &Transformer,
    set: &[Dictionary],
    windows: &[Vec<u32>],
    rule: &RowRule,
    batch_windows: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<SpliceEval> {
    let s = windows.first().map(Vec::len).unwrap_or(0);
    if s < 3 || windows.iter().any(|w| w.len() != s) {
        return Err(bad("splice_all needs windows of equal length ≥ 3"));
    }
    let mut ins: HashMap<String, usize> = HashMap::new();
    let mut outs: HashMap<String, usize> = HashMap::new();
    for (i, d) in set.iter().enumerate() {
        let (hi, ho) = hooks_of(d)?;
        ins.insert(hi, i);
        outs.insert(ho, i);
    }
    let cfg = &model.config;
    let mut names: Vec<String> = ins.keys().chain(outs.keys()).cloned().collect();
    names.sort();
    let filter = HookFilter::new(names, cfg)?;
    let out_filter = HookFilter::new(outs.keys().cloned().collect(), cfg)?;
    let (mut ce, mut kl, mut ce_tokens, mut kl_tokens) = ([0f64; 3], [0f64; 2], 0u64, 0u64);
    for chunk in windows.chunks(batch_windows.max(1)) {
        // the all-layer splice scores the token rule's positions: each layer's massive
        // criterion reads its own residual hook, and one set of positions serves all
        let scored = Scored::new(chunk, s, rule, &[])?;
        if scored.n == 0 {
            on_batch(chunk.len());
            continue;
        }
        let batch = Batch::new(chunk.to_vec());
        let clean = model.run(&batch, &mut Run::new())?;
        let lp = scored.log_probs(clean.logits()?)?;
        drop(clean);
        let p = lp.exp()?;
        // the spliced pass: remember each MLP input, replace the matching output
        let mut inputs: HashMap<usize, Tensor> = HashMap::new();
        let to_model = |e: crate::AnalysisError| ModelError::BadInput(e.to_string());
        let splice = |name: &str, x: Tensor| -> glassbox_model::Result<Tensor> {
            if let Some(&i) = ins.get(name) {
                inputs.insert(i, x.clone());
                return Ok(x);
            }
            let Some(&i) = outs.get(name) else {
                return Ok(x);
            };
            let d = &set[i];
            let x_in = inputs.remove(&i).ok_or_else(|| {
                ModelError::BadInput(format!("{name} came before its transcoder's input hook"))
            })?;
            let rows = scored.rows_of(&x_in).map_err(to_model)?;
            let err = |e: glassbox_sae::SaeError| ModelError::BadInput(e.to_string());
            let recon = d
                .decode(&d.encode(&rows).map_err(err)?, Some(&rows))
                .map_err(err)?;
            scored.splice(&x, Some(&recon)).map_err(to_model)
        };
        let spliced = model.run(&batch, &mut Run::new().hook(filter.clone(), splice))?;
        let lq = scored.log_probs(spliced.logits()?)?;
        drop(spliced);
        let zero = |name: &str, x: Tensor| -> glassbox_model::Result<Tensor> {
            if outs.contains_key(name) {
                scored.splice(&x, None).map_err(to_model)
            } else {
                Ok(x)
            }
        };
        let zeroed = model.run(&batch, &mut Run::new().hook(out_filter.clone(), zero))?;
        let lz = scored.log_probs(zeroed.logits()?)?;
        drop(zeroed);
        ce[0] += scored.ce(&lp)?;
        ce[1] += scored.ce(&lq)?;
        ce[2] += scored.ce(&lz)?;
        kl[0] += kl_sum(&lp, &p, &lq)?;
        kl[1] += kl_sum(&lp, &p, &lz)?;
        ce_tokens += scored.m as u64;
        kl_tokens += scored.n as u64;
        on_batch(chunk.len());
    }
    let n = ce_tokens.max(1) as f64;
    let kl_n = kl_tokens.max(1) as f64;
    let (c0, c1, c2) = (ce[0] / n, ce[1] / n, ce[2] / n);
    let (k1, k2) = (kl[0] / kl_n, kl[1] / kl_n);
    Ok(SpliceEval {
        transcoders: set.len(),
        windows: windows.len(),
        ce_tokens,
        ce_clean: c0,
        ce_spliced: c1,
        ce_zero_ablated: c2,
        ce_recovered: (c2 - c1) / (c2 - c0),
        kl_spliced: k1,
        kl_zero_ablated: k2,
        kl_recovered: 1.0 - k1 / k2,
        first_position_spliced: false,
    })
}
