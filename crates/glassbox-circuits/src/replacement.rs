//! One clean forward pass on a prompt, and what the local replacement model freezes.
//!
//! The local replacement model of a prompt replaces each MLP by its transcoder and adds
//! back an error node (true MLP output − transcoder output) per layer and position, so
//! its forward pass is exactly the real one. With attention patterns and normalisation
//! denominators frozen at their values on the prompt, every path from a feature's output
//! to another feature's input (or to a logit) that does not pass through another feature
//! is linear: those direct effects are the graph's edges.

use crate::set::TranscoderSet;
use crate::{bad, Result};
use candle_core::{Device, Tensor, D};
use glassbox_model::{ActivationCache, Batch, HookFilter, NormKind, Run, Transformer};

/// An active transcoder feature that is a node of the graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActiveFeature {
    /// the block whose transcoder it belongs to
    pub layer: usize,
    /// token position in the prompt (never 0)
    pub position: usize,
    /// latent index in that transcoder, `0..d_sae`
    pub feature: usize,
    /// its activation on the clean pass (non-zero)
    pub activation: f32,
}

/// A prompt's clean pass and the local replacement model built on it: what
/// [`attribute`](crate::attribute) and [`intervene`](crate::intervene) read. Tensors are
/// on the CPU, without the batch axis.
pub struct ReplacementState {
    /// the prompt's token ids
    pub tokens: Vec<u32>,
    /// the clean pass's cache: patterns, norm scales, MLP inputs and outputs
    pub cache: ActivationCache,
    /// logits at the last position, `[vocab]`
    pub last_logits: Vec<f32>,
    /// the graph's feature nodes, by layer then position then feature
    pub features: Vec<ActiveFeature>,
    /// active features left out of the graph (position 0, or past `max_feature_nodes`):
    /// their output is part of the error nodes
    pub features_folded: usize,
    /// per layer `[seq, d_model]`: true MLP output − (bias + skip + the node features'
    /// decoder outputs); a layer without a transcoder has its whole MLP output here
    pub errors: Vec<Tensor>,
    /// per layer `[seq, d_model]`: true MLP output − full transcoder output (every active
    /// feature, position 0 included): what the frozen replacement model adds back
    pub full_errors: Vec<Tensor>,
}

/// What the replacement model needs from a clean pass, as hook-name globs.
fn frozen_hooks(model: &Transformer) -> Vec<String> {
    let mut h = vec![
        "blocks.0.hook_resid_pre".to_string(),
        "blocks.*.attn.hook_pattern".into(),
        "blocks.*.ln1.hook_scale".into(),
        "blocks.*.ln2.hook_scale".into(),
        "blocks.*.ln2.hook_normalized".into(),
        "blocks.*.hook_mlp_out".into(),
        "ln_final.hook_scale".into(),
    ];
    if model.config.post_sublayer_norms {
        h.push("blocks.*.ln1_post.hook_scale".into());
    }
    h
}

/// The hook names whose clean values the frozen model pins (patterns and norm scales).
pub(crate) fn pinned_filter(model: &Transformer) -> Result<HookFilter> {
    let mut h = vec![
        "blocks.*.attn.hook_pattern".to_string(),
        "blocks.*.ln1.hook_scale".into(),
        "blocks.*.ln2.hook_scale".into(),
        "ln_final.hook_scale".into(),
    ];
    if model.config.post_sublayer_norms {
        // ln2_post acts before hook_mlp_out, which the frozen model replaces
        h.push("blocks.*.ln1_post.hook_scale".into());
    }
    Ok(HookFilter::new(h, &model.config)?)
}

/// Architectures whose residual paths this crate linearises.
pub(crate) fn check_supported(model: &Transformer) -> Result<()> {
    let c = &model.config;
    if c.parallel_residual {
        return Err(bad(format!(
            "circuit tracing supports sequential-residual models (llama, qwen2, gemma2, gpt2); {} runs attention and MLP in parallel",
            c.architecture.name()
        )));
    }
    if !c.pre_norms {
        return Err(bad(format!(
            "circuit tracing differentiates through the norms before attention and MLP; {} has none (it normalises their outputs)",
            c.architecture.name()
        )));
    }
    Ok(())
}

impl ReplacementState {
    /// Runs the model on `tokens` and encodes every layer's MLP input with its
    /// transcoder. Features at position 0 (the BOS sink, excluded when training) and,
    /// past `max_feature_nodes`, those with the smallest `|activation| × ‖W_dec row‖`
    /// are folded into the error nodes instead of becoming nodes. Errors: fewer than 2
    /// tokens, a set with another number of layers, or an architecture the tracer does
    /// not support (parallel attention and MLP, no pre-norms).
    pub fn new(
        model: &Transformer,
        set: &TranscoderSet,
        tokens: &[u32],
        max_feature_nodes: usize,
    ) -> Result<Self> {
        check_supported(model)?;
        let cfg = &model.config;
        if set.by_layer.len() != cfg.n_layers {
            return Err(bad(format!(
                "the transcoder set has {} layer slots; the model has {} layers",
                set.by_layer.len(),
                cfg.n_layers
            )));
        }
        if tokens.len() < 2 {
            return Err(bad("a prompt needs at least 2 tokens (BOS and one more)"));
        }
        let s = tokens.len();
        let filter = HookFilter::new(frozen_hooks(model), cfg)?;
        let out = model.run(&Batch::single(tokens), &mut Run::new().cache(filter))?;
        let last_logits: Vec<f32> = out.logits()?.get(0)?.get(s - 1)?.to_vec1()?;
        let mut cache = out.cache;
        for v in cache.values_mut() {
            *v = v.squeeze(0)?; // batch of one
        }
        let mut candidates = Vec::new();
        let mut recons = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let Some(d) = &set.by_layer[l] else {
                recons.push(None);
                continue;
            };
            let x_in = cached(&cache, &format!("blocks.{l}.ln2.hook_normalized"))?;
            let acts = d.encode(x_in)?;
            let recon = d.decode(&acts, Some(x_in))?;
            let rows: Vec<Vec<f32>> = acts.to_vec2()?;
            let norms: Vec<f32> = d.w_dec.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1()?;
            for (p, row) in rows.iter().enumerate() {
                for (f, &a) in row.iter().enumerate() {
                    if a != 0.0 {
                        candidates.push((
                            ActiveFeature {
                                layer: l,
                                position: p,
                                feature: f,
                                activation: a,
                            },
                            a.abs() * norms[f],
                        ));
                    }
                }
            }
            recons.push(Some((acts, recon)));
        }
        let total = candidates.len();
        candidates.retain(|(f, _)| f.position > 0);
        if candidates.len() > max_feature_nodes {
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            candidates.truncate(max_feature_nodes);
        }
        let mut features: Vec<ActiveFeature> = candidates.into_iter().map(|(f, _)| f).collect();
        features.sort_by_key(|f| (f.layer, f.position, f.feature));
        let features_folded = total - features.len();

        let mut errors = Vec::with_capacity(cfg.n_layers);
        let mut full_errors = Vec::with_capacity(cfg.n_layers);
        for (l, r) in recons.into_iter().enumerate() {
            let mlp_out = cached(&cache, &format!("blocks.{l}.hook_mlp_out"))?;
            let Some((acts, recon)) = r else {
                errors.push(mlp_out.clone());
                full_errors.push(mlp_out.clone());
                continue;
            };
            let d = set.get(l)?;
            // error = mlp_out − (b_dec + skip + node features)
            //       = (mlp_out − recon) + the output of the features folded into it
            let mut folded: Vec<f32> = acts.flatten_all()?.to_vec1()?;
            let d_sae = d.d_sae;
            for f in features.iter().filter(|f| f.layer == l) {
                folded[f.position * d_sae + f.feature] = 0.0;
            }
            let folded = Tensor::from_vec(folded, acts.dims(), &Device::Cpu)?.matmul(&d.w_dec)?;
            let full_error = (mlp_out - &recon)?;
            errors.push((&full_error + folded)?);
            full_errors.push(full_error);
        }
        Ok(ReplacementState {
            tokens: tokens.to_vec(),
            cache,
            last_logits,
            features,
            features_folded,
            errors,
            full_errors,
        })
    }

    /// Prompt length, in tokens.
    pub fn seq_len(&self) -> usize {
        self.tokens.len()
    }

    /// A cached activation of the clean pass (batch axis removed), by TransformerLens
    /// name: `blocks.0.hook_resid_pre`, `blocks.L.attn.hook_pattern` `[heads, q, k]`,
    /// `blocks.L.ln1.hook_scale`, `blocks.L.ln2.hook_scale`,
    /// `blocks.L.ln2.hook_normalized` and `blocks.L.hook_mlp_out` `[seq, d_model]`,
    /// `ln_final.hook_scale` (and `blocks.L.ln1_post.hook_scale` with post-sublayer
    /// norms). Any other name is an error.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        cached(&self.cache, name)
    }

    /// Per-position norm scale `[seq]` of the norm at `prefix` (e.g. `blocks.3.ln1`).
    pub(crate) fn scale(&self, prefix: &str) -> Result<Tensor> {
        Ok(self.get(&format!("{prefix}.hook_scale"))?.flatten_all()?)
    }
}

pub(crate) fn cached<'a>(cache: &'a ActivationCache, name: &str) -> Result<&'a Tensor> {
    cache
        .get(name)
        .ok_or_else(|| bad(format!("internal: the clean pass did not cache {name}")))
}

/// Gradient through a norm whose scale is frozen: y = P(x)/scale ⊙ w (+ b), so
/// dx = P(dy ⊙ w) / scale, with P the centring projection of LayerNorm (identity for
/// RMSNorm). `g` is `[n, seq, d]`, `scale` `[seq]`, `weight` `[d]`.
pub(crate) fn norm_backward(
    g: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    kind: NormKind,
) -> Result<Tensor> {
    let s = scale.dim(0)?;
    let mut dx = g
        .broadcast_mul(weight)?
        .broadcast_div(&scale.reshape((1, s, 1))?)?;
    if kind == NormKind::LayerNorm {
        dx = dx.broadcast_sub(&dx.mean_keepdim(D::Minus1)?)?;
    }
    Ok(dx)
}
