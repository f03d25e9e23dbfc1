//! Zero and mean ablation of attention heads and MLP neurons, and its effect on loss
//! and logits over a prompt set.

use crate::metric::{mean_kl, next_token_loss};
use crate::{bad, Result};
use candle_core::{Device, Tensor, D};
use glassbox_model::{Batch, HookFilter, Run, Transformer};
use serde::Serialize;

/// One thing an ablation removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// `blocks.L.attn.hook_z`, head H
    Head {
        /// the block
        layer: usize,
        /// the head within it
        head: usize,
    },
    /// `blocks.L.mlp.hook_post`, neuron N
    Neuron {
        /// the block
        layer: usize,
        /// the neuron, below `d_mlp`
        index: usize,
    },
    /// a dictionary feature at the dictionary's hook (only [`ablate_features`] takes these)
    Feature {
        /// the feature, below `d_sae`
        index: usize,
    },
}

impl Unit {
    /// Parses a comma-separated list of `L.H` (heads; also `L9.H6`) or, with
    /// `head == false`, `L.N` (neurons; also `L9.N120`), checking each layer and index
    /// against the model.
    pub fn parse_list(spec: &str, head: bool, model: &Transformer) -> Result<Vec<Unit>> {
        let c = &model.config;
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                // `9.6`, or as the patching and IOI summaries print heads: `L9.H6`
                let number = |x: &str, prefix: char| {
                    let x = x.trim();
                    x.strip_prefix([prefix, prefix.to_ascii_lowercase()])
                        .unwrap_or(x)
                        .parse::<usize>()
                        .ok()
                };
                let (l, i) = s
                    .split_once('.')
                    .and_then(|(l, i)| {
                        Some((number(l, 'L')?, number(i, if head { 'H' } else { 'N' })?))
                    })
                    .ok_or_else(|| {
                        bad(format!(
                            "`{s}` is not LAYER.INDEX (e.g. {})",
                            if head {
                                "9.6 or L9.H6"
                            } else {
                                "9.120 or L9.N120"
                            }
                        ))
                    })?;
                if l >= c.n_layers {
                    return Err(bad(format!(
                        "`{s}`: layer {l} does not exist (the model has {} layers)",
                        c.n_layers
                    )));
                }
                let limit = if head { c.n_heads } else { c.d_mlp };
                if i >= limit {
                    return Err(bad(format!(
                        "`{s}`: index {i} is out of range (layer {l} has {limit} {})",
                        if head { "heads" } else { "neurons" }
                    )));
                }
                Ok(if head {
                    Unit::Head { layer: l, head: i }
                } else {
                    Unit::Neuron { layer: l, index: i }
                })
            })
            .collect()
    }

    fn hook(&self) -> String {
        match self {
            Unit::Head { layer, .. } => format!("blocks.{layer}.attn.hook_z"),
            Unit::Neuron { layer, .. } => format!("blocks.{layer}.mlp.hook_post"),
            Unit::Feature { .. } => unreachable!("features are ablated through their dictionary"),
        }
    }
}

/// What an ablation did over a prompt set: what `glassbox ablate --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AblationReport {
    /// the ablated units
    pub units: Vec<Unit>,
    /// `zero` or `mean`
    pub mode: &'static str,
    /// prompts evaluated
    pub prompts: usize,
    /// mean next-token cross-entropy of the plain model (nats, averaged per prompt)
    pub loss_clean: f32,
    /// the same with the ablation
    pub loss_ablated: f32,
    /// mean over prompts and positions of KL(clean ‖ ablated)
    pub kl: f32,
    /// largest |logit change| over every prompt, position and vocabulary entry
    pub max_abs_logit_change: f32,
}

/// Runs every prompt (token ids, at least two each) with and without the ablation of
/// `units` (heads and neurons). Zero ablation sets each unit to 0; with `mean`, each is
/// replaced by its mean over all tokens of the prompt set. A [`Unit::Feature`] is an
/// error: features go through [`ablate_features`], which has their dictionary.
pub fn ablate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    units: &[Unit],
    mean: bool,
) -> Result<AblationReport> {
    if units.is_empty() {
        return Err(bad("nothing to ablate: name heads or neurons"));
    }
    if units.iter().any(|u| matches!(u, Unit::Feature { .. })) {
        return Err(bad(
            "features are ablated through their dictionary: use ablate_features \
             (`glassbox ablate --features … --sae DIR`)",
        ));
    }
    if prompts.iter().any(|p| p.len() < 2) {
        return Err(bad(
            "every prompt needs at least two tokens (the loss predicts the next one)",
        ));
    }
    let cfg = &model.config;
    let mut hooks: Vec<String> = units.iter().map(Unit::hook).collect();
    hooks.sort();
    hooks.dedup();
    // Per hook: the replacement values (zeros or means) and which entries to replace.
    let mut means: std::collections::BTreeMap<String, Tensor> = Default::default();
    if mean {
        let filter = HookFilter::new(hooks.clone(), cfg)?;
        let mut sums: std::collections::BTreeMap<String, (Tensor, usize)> = Default::default();
        for p in prompts {
            let out = model.run(&Batch::single(p), &mut Run::new().cache(filter.clone()))?;
            for (name, a) in out.cache {
                let s = a.squeeze(0)?.sum(0)?;
                let e = sums
                    .entry(name)
                    .or_insert_with(|| (s.zeros_like().expect("zeros"), 0));
                e.0 = (&e.0 + s)?;
                e.1 += p.len();
            }
        }
        for (name, (s, n)) in sums {
            means.insert(name, (s / n as f64)?);
        }
    }
    let mut run = Run::new();
    for hook in &hooks {
        let sel: Vec<Unit> = units
            .iter()
            .copied()
            .filter(|u| &u.hook() == hook)
            .collect();
        let mean_t = means.get(hook).cloned();
        let (h, dh, m) = (cfg.n_heads, cfg.d_head, cfg.d_mlp);
        run = run.hook(HookFilter::parse(hook, cfg)?, move |_, x| {
            let dims = x.dims().to_vec();
            // mask over the trailing axes: [head, d_head] for z, [d_mlp] for neurons
            let (mask, tail): (Vec<u8>, Vec<usize>) = match sel[0] {
                Unit::Head { .. } => {
                    let mut v = vec![0u8; h * dh];
                    for u in &sel {
                        if let Unit::Head { head, .. } = u {
                            v[head * dh..(head + 1) * dh]
                                .iter_mut()
                                .for_each(|x| *x = 1);
                        }
                    }
                    (v, vec![h, dh])
                }
                Unit::Feature { .. } => {
                    unreachable!("features are ablated through their dictionary")
                }
                Unit::Neuron { .. } => {
                    let mut v = vec![0u8; m];
                    for u in &sel {
                        if let Unit::Neuron { index, .. } = u {
                            v[*index] = 1;
                        }
                    }
                    (v, vec![m])
                }
            };
            let mask = Tensor::from_vec(mask, tail.as_slice(), &Device::Cpu)?
                .broadcast_as(dims.as_slice())?;
            let replacement = match &mean_t {
                Some(mt) => mt.broadcast_as(dims.as_slice())?.contiguous()?,
                None => x.zeros_like()?,
            };
            Ok(mask.where_cond(&replacement, &x)?)
        });
    }
    evaluate(
        model,
        prompts,
        &mut run,
        units.to_vec(),
        if mean { "mean" } else { "zero" },
    )
}

/// Loss, KL and largest logit change of `run` against the plain model over `prompts`.
fn evaluate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    run: &mut Run,
    units: Vec<Unit>,
    mode: &'static str,
) -> Result<AblationReport> {
    let (mut lc, mut la, mut kl, mut maxd) = (0f32, 0f32, 0f32, 0f32);
    for p in prompts {
        let clean = model.run(&Batch::single(p), &mut Run::new())?;
        let ablated = model.run(&Batch::single(p), run)?;
        lc += next_token_loss(clean.logits()?, p)?;
        la += next_token_loss(ablated.logits()?, p)?;
        kl += mean_kl(clean.logits()?, ablated.logits()?)?;
        let d = (clean.logits()? - ablated.logits()?)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()?;
        maxd = maxd.max(d);
    }
    let n = prompts.len() as f32;
    Ok(AblationReport {
        units,
        mode,
        prompts: prompts.len(),
        loss_clean: lc / n,
        loss_ablated: la / n,
        kl: kl / n,
        max_abs_logit_change: maxd,
    })
}

/// Zero or mean ablation of dictionary features, keeping the reconstruction error:
/// `x' = x + Σ (target − f_i(x)) · W_dec[i]` over the ablated features `i`, at `hook`
/// (which the SAE reads and writes). `target` is 0, or with `mean` the feature's mean
/// activation over every token of `prompts`. Transcoders are refused.
pub fn ablate_features(
    model: &Transformer,
    prompts: &[Vec<u32>],
    dictionary: std::sync::Arc<glassbox_sae::Dictionary>,
    hook: &str,
    features: &[usize],
    mean: bool,
) -> Result<AblationReport> {
    if features.is_empty() {
        return Err(bad("nothing to ablate: name features"));
    }
    if prompts.iter().any(|p| p.len() < 2) {
        return Err(bad(
            "every prompt needs at least two tokens (the loss predicts the next one)",
        ));
    }
    if dictionary.is_transcoder() {
        return Err(bad(
            "feature ablation needs an SAE (input and output at the same hook), not a transcoder",
        ));
    }
    let rows: Vec<Tensor> = features
        .iter()
        .map(|&f| dictionary.decoder_row(f))
        .collect::<std::result::Result<_, _>>()?;
    let filter = HookFilter::parse(hook, &model.config)?;
    // the value each feature is set to: 0, or its mean over every token of the prompts
    let mut targets = vec![0f32; features.len()];
    if mean {
        let mut total = 0usize;
        for p in prompts {
            let out = model.run(&Batch::single(p), &mut Run::new().cache(filter.clone()))?;
            let f = dictionary.encode(&out.cache[hook])?;
            for (t, &i) in targets.iter_mut().zip(features) {
                *t += f.narrow(D::Minus1, i, 1)?.sum_all()?.to_scalar::<f32>()?;
            }
            total += p.len();
        }
        targets.iter_mut().for_each(|t| *t /= total as f32);
    }
    let idx = features.to_vec();
    let dict = dictionary.clone();
    let hook_name = hook.to_string();
    let mut run = Run::new().hook(filter, move |_, x| {
        let f = dict
            .encode(&x)
            .map_err(|e| glassbox_model::ModelError::BadIntervention {
                hook: hook_name.clone(),
                problem: e.to_string(),
            })?;
        let mut out = x;
        for ((&i, row), &t) in idx.iter().zip(&rows).zip(&targets) {
            let delta = ((f.narrow(D::Minus1, i, 1)? * -1.0)? + t as f64)?.broadcast_mul(row)?;
            out = (out + delta)?;
        }
        Ok(out)
    });
    let units = features
        .iter()
        .map(|&index| Unit::Feature { index })
        .collect();
    evaluate(
        model,
        prompts,
        &mut run,
        units,
        if mean { "mean" } else { "zero" },
    )
}
