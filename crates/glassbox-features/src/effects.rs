//! What a feature's decoder direction does, read from the weights alone: its direct
//! effect on the logits and its nearest features by decoder cosine. Both are one GEMM
//! over all features, in chunks so memory stays bounded.

use crate::Result;
use candle_core::{DType, Tensor};
use glassbox_model::config::NormKind;
use glassbox_model::Transformer;
use glassbox_sae::Dictionary;
use rayon::prelude::*;

/// Entries of one result chunk (floats): bounds the memory of both GEMMs.
const CHUNK_ELEMS: usize = 1 << 23;

/// The most promoted and most suppressed tokens of one feature.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEffects {
    /// (token id, value), largest value first
    pub top: Vec<(u32, f32)>,
    /// (token id, value), most negative first
    pub bottom: Vec<(u32, f32)>,
}

/// The `n` largest entries of `row` as (index, value), largest first, ties to the
/// smaller index; with `largest = false`, the `n` smallest, smallest first. `skip`: an
/// index left out (a unit's own, among its neighbours).
pub fn extremes(row: &[f32], n: usize, largest: bool, skip: Option<usize>) -> Vec<(u32, f32)> {
    let better = |a: &usize, b: &usize| {
        let o = if largest {
            row[*b].total_cmp(&row[*a])
        } else {
            row[*a].total_cmp(&row[*b])
        };
        o.then(a.cmp(b))
    };
    let mut idx: Vec<usize> = (0..row.len()).filter(|&i| Some(i) != skip).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, better);
        idx.truncate(n);
    }
    idx.sort_by(better);
    idx.into_iter().map(|i| (i as u32, row[i])).collect()
}

/// Direct logit effects: for every feature `f`, the `n` largest and smallest entries of
/// `W_dec[f] ∘ g · W_Uᵀ`, with `g` the final norm's weight (for a LayerNorm model the
/// decoder row is centred first, as the norm centres its input). `None` when the
/// dictionary does not write vectors of the model's width (nothing to unembed).
pub fn logit_effects(
    model: &Transformer,
    dict: &Dictionary,
    n: usize,
) -> Result<Option<Vec<TokenEffects>>> {
    if dict.d_out != model.config.d_model || n == 0 {
        return Ok(None);
    }
    logit_effects_of(model, &dict.w_dec, n).map(Some)
}

/// [`logit_effects`] of any output directions `rows` `[units, d_model]`: a dictionary's
/// decoder rows, or MLP neurons' output weights ([`neuron_directions`]).
pub fn logit_effects_of(model: &Transformer, rows: &Tensor, n: usize) -> Result<Vec<TokenEffects>> {
    let units = rows.dim(0)?;
    let w_ut = model.weights.unembed_f32()?.t()?.contiguous()?;
    let vocab = w_ut.dim(1)?;
    let g = model.weights.ln_final.weight.to_dtype(DType::F32)?;
    let w_dec = rows.to_dtype(DType::F32)?;
    let centre = model.config.norm == NormKind::LayerNorm;
    let chunk = (CHUNK_ELEMS / vocab.max(1)).clamp(1, units.max(1));
    let mut out = Vec::with_capacity(units);
    let mut start = 0;
    while start < units {
        let c = chunk.min(units - start);
        let mut rows = w_dec.narrow(0, start, c)?;
        if centre {
            rows = rows.broadcast_sub(&rows.mean_keepdim(1)?)?;
        }
        let logits = rows.broadcast_mul(&g)?.matmul(&w_ut)?;
        let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        out.par_extend(v.par_chunks(vocab).map(|row| TokenEffects {
            top: extremes(row, n, true, None),
            bottom: extremes(row, n, false, None),
        }));
        start += c;
    }
    Ok(out)
}

/// What each MLP neuron of block `layer` (`mlp.hook_post`) writes to the residual
/// stream: the columns of the block's output matrix, as rows `[d_mlp, d_model]`.
pub fn neuron_directions(model: &Transformer, layer: usize) -> Result<Tensor> {
    let block = model
        .weights
        .blocks
        .get(layer)
        .ok_or_else(|| crate::bad(format!("the model has no block {layer}")))?
        .get()?;
    Ok(block
        .mlp_out
        .weight
        .to_dtype(DType::F32)?
        .t()?
        .contiguous()?)
}

/// For every feature, the `n` other features whose decoder rows have the largest
/// cosine with its own (largest first, ties to the smaller id). A zero row has cosine 0
/// with everything.
pub fn neighbours(dict: &Dictionary, n: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    neighbours_of(&dict.w_dec, n)
}

/// [`neighbours`] among any directions `rows` `[units, width]`.
pub fn neighbours_of(rows: &Tensor, n: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    let d = rows.dim(0)?;
    if n == 0 {
        return Ok(vec![Vec::new(); d]);
    }
    let w = rows.to_dtype(DType::F32)?;
    let norms = w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-30f32, f32::MAX)?;
    let wn = w.broadcast_div(&norms)?;
    let wt = wn.t()?.contiguous()?;
    let chunk = (CHUNK_ELEMS / d.max(1)).clamp(1, d.max(1));
    let mut out = Vec::with_capacity(d);
    let mut start = 0;
    while start < d {
        let c = chunk.min(d - start);
        let sims = wn.narrow(0, start, c)?.matmul(&wt)?;
        let v: Vec<f32> = sims.flatten_all()?.to_vec1()?;
        out.par_extend(
            v.par_chunks(d)
                .enumerate()
                .map(|(i, row)| extremes(row, n, true, Some(start + i))),
        );
        start += c;
    }
    Ok(out)
}
