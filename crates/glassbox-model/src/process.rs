//! TransformerLens' weight processing (`HookedTransformer.from_pretrained`'s defaults),
//! opt-in: the model computes the same log-probabilities, but its weights and some
//! activations are rewritten into the forms TL users' numbers refer to.
//!
//! - `fold_ln`: each norm's weight (and LayerNorm bias) moves into the matrices that read
//!   its output; the norm keeps only centring and scaling. For LayerNorm models the
//!   reading matrices are then centred over d_model (their input has mean zero).
//! - `center_writing_weights` (LayerNorm models only, as in TL): every matrix and bias
//!   that writes to the residual stream has its mean over d_model removed, so each
//!   residual stream equals the unprocessed one minus its mean.
//! - `center_unembed`: the unembedding (and its bias) has its mean over the vocabulary
//!   removed: logits shift by a constant per position, log-probabilities do not change.
//! - `fold_value_biases`: `b_O += Σ_h b_V,h · W_O,h`, `b_V = 0` (softmax rows sum to one).

use crate::config::{ModelConfig, NormKind};
use crate::error::{ModelError, Result};
use crate::stored::StoredTensor;
use crate::transformer::Transformer;
use crate::weights::{Block, BlockWeights, Linear, Norm};
use candle_core::{Tensor, D};
use serde::Serialize;

/// Which of TL's processing steps to apply (`TlProcessing::default()`: all four, TL's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlProcessing {
    /// fold each norm's weight (and bias) into the matrices reading its output
    pub fold_ln: bool,
    /// centre what writes to the residual stream over d_model (LayerNorm models only)
    pub center_writing_weights: bool,
    /// centre the unembedding over the vocabulary
    pub center_unembed: bool,
    /// fold the value biases into the attention output bias
    pub fold_value_biases: bool,
}

impl Default for TlProcessing {
    fn default() -> Self {
        TlProcessing {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl TlProcessing {
    /// None of the steps (`from_pretrained_no_processing`).
    pub fn none() -> Self {
        TlProcessing {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
        }
    }

    /// The steps as `model_from_pretrained_kwargs` in a SAELens `cfg.json` names them.
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Self {
        let get = |k: &str| kwargs.get(k).and_then(|v| v.as_bool()).unwrap_or(true);
        TlProcessing {
            fold_ln: get("fold_ln"),
            center_writing_weights: get("center_writing_weights"),
            center_unembed: get("center_unembed"),
            fold_value_biases: get("fold_value_biases"),
        }
    }

    /// Whether the steps that actually change something on `cfg` agree (TL skips
    /// centring the writing weights of RMSNorm models, so that flag is moot there).
    pub fn same_effect(&self, other: &TlProcessing, cfg: &ModelConfig) -> bool {
        let centring_matters = cfg.norm == NormKind::LayerNorm;
        self.fold_ln == other.fold_ln
            && self.center_unembed == other.center_unembed
            && self.fold_value_biases == other.fold_value_biases
            && (!centring_matters || self.center_writing_weights == other.center_writing_weights)
    }

    /// `fold_ln=…, center_writing_weights=…` for messages.
    pub fn describe(&self) -> String {
        format!(
            "fold_ln={}, center_writing_weights={}, center_unembed={}, fold_value_biases={}",
            self.fold_ln, self.center_writing_weights, self.center_unembed, self.fold_value_biases
        )
    }
}

fn refuse(cfg: &ModelConfig, why: &str) -> ModelError {
    ModelError::BadInput(format!(
        "TransformerLens weight processing (--process tl) cannot be applied to {}: {why}",
        cfg.architecture.name()
    ))
}

/// Rewrites `model`'s weights in place. Stored (bf16, quantized) blocks are expanded to
/// f32 for good: processed weights are new weights.
pub fn apply_tl_processing(model: &mut Transformer, p: &TlProcessing) -> Result<()> {
    let cfg = model.config.clone();
    if p.fold_ln && !cfg.pre_norms {
        return Err(refuse(
            &cfg,
            "it has no norms before attention and the MLP to fold (it normalises their outputs)",
        ));
    }
    if p.center_unembed && cfg.final_softcap.is_some() {
        return Err(refuse(
            &cfg,
            "final_logit_softcapping is not linear, so centring the unembedding would change its log-probabilities",
        ));
    }
    let layer_norm = cfg.norm == NormKind::LayerNorm;
    // TL centres writing weights only for LayerNorm models: RMSNorm does not remove the mean.
    let centre_writes = p.center_writing_weights && layer_norm;
    let w = &mut model.weights;
    let mut blocks = Vec::with_capacity(w.blocks.len());
    for block in &w.blocks {
        let mut b: BlockWeights = block.get()?.into_owned();
        if p.fold_ln {
            if let Some(n) = b.ln1.take() {
                b.qkv = fold_norm_into(&b.qkv, &n, layer_norm)?;
                b.ln1 = Some(unit_norm(&n, layer_norm)?);
            }
            if let Some(n) = b.ln2.take() {
                b.mlp_in = fold_norm_into(&b.mlp_in, &n, layer_norm)?;
                b.ln2 = Some(unit_norm(&n, layer_norm)?);
            }
        }
        if p.fold_value_biases {
            fold_value_biases(&mut b, &cfg)?;
        }
        if centre_writes && b.ln1_post.is_none() {
            b.o = centre_rows(&b.o)?;
            b.mlp_out = centre_rows(&b.mlp_out)?;
        }
        blocks.push(Block::Ready(b));
    }
    w.blocks = blocks;
    if centre_writes {
        let e = w.embed.expand()?;
        w.embed = StoredTensor::Dense(e.broadcast_sub(&e.mean_keepdim(D::Minus1)?)?);
        if let Some(pos) = &w.pos_embed {
            w.pos_embed = Some(pos.broadcast_sub(&pos.mean_keepdim(D::Minus1)?)?);
        }
    }
    let mut unembed = Linear {
        weight: w.unembed.expand()?,
        bias: w.unembed_bias.clone(),
    };
    if p.fold_ln {
        unembed = fold_norm_into(&unembed, &w.ln_final, layer_norm)?;
        w.ln_final = unit_norm(&w.ln_final, layer_norm)?;
    }
    if p.center_unembed {
        unembed.weight = unembed
            .weight
            .broadcast_sub(&unembed.weight.mean_keepdim(0)?)?;
        if let Some(b) = &unembed.bias {
            unembed.bias = Some(b.broadcast_sub(&b.mean_keepdim(0)?)?);
        }
    }
    w.unembed = StoredTensor::Dense(unembed.weight);
    w.unembed_bias = unembed.bias;
    Ok(())
}

/// `W · diag(g)` (and `b + W · β` for LayerNorm), then, for LayerNorm, `W` centred over
/// its input dimension: the normalised input has mean zero, so the mean is never read.
fn fold_norm_into(l: &Linear, n: &Norm, layer_norm: bool) -> Result<Linear> {
    let mut weight = l.weight.broadcast_mul(&n.weight.unsqueeze(0)?)?;
    let mut bias = l.bias.clone();
    if let Some(beta) = &n.bias {
        let shift = l.weight.matmul(&beta.unsqueeze(1)?)?.squeeze(1)?;
        bias = Some(match bias {
            Some(b) => (b + shift)?,
            None => shift,
        });
    }
    if layer_norm {
        weight = weight.broadcast_sub(&weight.mean_keepdim(1)?)?;
    }
    Ok(Linear { weight, bias })
}

/// The norm after folding: weight one, no bias (TL's LNPre / RMSPre).
fn unit_norm(n: &Norm, layer_norm: bool) -> Result<Norm> {
    Ok(Norm {
        weight: n.weight.ones_like()?,
        bias: if layer_norm {
            Some(n.weight.zeros_like()?)
        } else {
            None
        },
    })
}

/// A residual writer `[d_model, in]` (and its bias) minus its mean over d_model.
fn centre_rows(l: &Linear) -> Result<Linear> {
    Ok(Linear {
        weight: l.weight.broadcast_sub(&l.weight.mean_keepdim(0)?)?,
        bias: match &l.bias {
            Some(b) => Some(b.broadcast_sub(&b.mean_keepdim(0)?)?),
            None => None,
        },
    })
}

/// `b_O += W_O · b_V` (each query head reading its KV head's bias), `b_V = 0`.
fn fold_value_biases(b: &mut BlockWeights, cfg: &ModelConfig) -> Result<()> {
    let Some(qkv_bias) = &b.qkv.bias else {
        return Ok(());
    };
    let (h, kvh, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let v_start = (h + kvh) * dh;
    let b_v = qkv_bias.narrow(0, v_start, kvh * dh)?;
    // query head q reads KV head q / (h / kvh)
    let per_query = b_v
        .reshape((kvh, 1, dh))?
        .broadcast_as((kvh, h / kvh, dh))?
        .contiguous()?
        .reshape(h * dh)?;
    let shift = b.o.weight.matmul(&per_query.unsqueeze(1)?)?.squeeze(1)?;
    b.o.bias = Some(match &b.o.bias {
        Some(o) => (o + shift)?,
        None => shift,
    });
    let zeros = Tensor::zeros(kvh * dh, qkv_bias.dtype(), qkv_bias.device())?;
    let kept = qkv_bias.narrow(0, 0, v_start)?;
    b.qkv.bias = Some(Tensor::cat(&[&kept, &zeros], 0)?);
    Ok(())
}
