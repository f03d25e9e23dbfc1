//! Interventions on features: the check that a graph is causal, not just a picture.
//!
//! - `Frozen`: the local replacement model of the prompt — attention patterns and norm
//!   denominators pinned at their clean values, every MLP replaced by its transcoder plus
//!   the clean error. Unedited, it reproduces the clean logits; edited, features
//!   downstream of the edit respond through their encoders, which is what the graph's
//!   edges predict to first order.
//! - `Live`: the real model; at each edited layer the MLP output gets
//!   `(new − current activation) · W_dec[feature]` at the edited position, with the
//!   current activation read from the transcoder on the run's own MLP input, and
//!   everything downstream (attention included) recomputed.

use crate::replacement::{cached, pinned_filter, ReplacementState};
use crate::set::TranscoderSet;
use crate::{bad, Result};
use candle_core::{Device, Tensor};
use glassbox_model::{Batch, HookFilter, ModelError, Run, Transformer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What an edit does to a feature's activation (JSON: `{"set": 2.5}`, `{"scale": 0}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditValue {
    /// clamp the activation to this value
    Set(f32),
    /// multiply the activation (0 ablates it)
    Scale(f32),
}

/// One edit: a transcoder feature at one token position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureEdit {
    /// the block whose transcoder holds the feature (it must have one)
    pub layer: usize,
    /// token position in the prompt
    pub position: usize,
    /// latent index, `0..d_sae`
    pub feature: usize,
    /// the new activation, or its scale (finite)
    pub value: EditValue,
}

/// Which model the edits run in (the module doc says how they differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterventionMode {
    /// the local replacement model: patterns, norm scales and error nodes pinned at
    /// their clean values
    Frozen,
    /// the real model, with each edit's decoder difference added to its layer's MLP
    /// output
    Live,
}

/// A token's probability and logit at the last position.
#[derive(Debug, Clone, Serialize)]
pub struct TokenProb {
    /// the token id
    pub token: u32,
    /// its softmax probability
    pub prob: f32,
    /// its raw logit
    pub logit: f32,
}

/// What the edits did to the output distribution at the last position.
#[derive(Debug, Clone, Serialize)]
pub struct InterventionOutcome {
    /// the model the edits ran in
    pub mode: InterventionMode,
    /// the top tokens at the last position on the clean pass (the `top` most probable)
    pub before: Vec<TokenProb>,
    /// the top tokens after the edits (the `top` most probable)
    pub after: Vec<TokenProb>,
    /// KL(clean ‖ edited) at the last position, nats
    pub kl: f64,
    /// the edits with the activation each feature had before them
    pub edits: Vec<AppliedEdit>,
    /// full distributions are kept for callers that track given tokens: the clean
    /// one, `[vocab]`
    #[serde(skip)]
    pub probs_before: Vec<f32>,
    /// the edited distribution, `[vocab]`
    #[serde(skip)]
    pub probs_after: Vec<f32>,
}

/// An edit as applied.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedEdit {
    /// the edit asked for
    #[serde(flatten)]
    pub edit: FeatureEdit,
    /// the feature's activation in this run just before the edit (the clean one unless
    /// an earlier layer's edit moved it)
    pub clean_activation: f32,
    /// its activation after the edit
    pub new_activation: f32,
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&x| ((x - m) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|&v| (v / z) as f32).collect()
}

pub(crate) fn top_probs(logits: &[f32], probs: &[f32], n: usize) -> Vec<TokenProb> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.into_iter()
        .take(n)
        .map(|i| TokenProb {
            token: i as u32,
            prob: probs[i],
            logit: logits[i],
        })
        .collect()
}

fn check_edits(set: &TranscoderSet, state: &ReplacementState, edits: &[FeatureEdit]) -> Result<()> {
    for e in edits {
        let d = set.get(e.layer)?;
        if e.position >= state.seq_len() {
            return Err(bad(format!(
                "edit at position {}: the prompt has {} tokens (positions 0..{})",
                e.position,
                state.seq_len(),
                state.seq_len() - 1
            )));
        }
        if e.feature >= d.d_sae {
            return Err(bad(format!(
                "feature {} does not exist at layer {}: its transcoder has {} features",
                e.feature, e.layer, d.d_sae
            )));
        }
        let v = match e.value {
            EditValue::Set(v) | EditValue::Scale(v) => v,
        };
        if !v.is_finite() {
            return Err(bad(format!(
                "edit of L{}/{}@{}: the value must be finite",
                e.layer, e.feature, e.position
            )));
        }
    }
    Ok(())
}

/// Applies `edits` to the prompt of `state` in `mode` and compares the last position's
/// output distribution with the clean one; `top` is how many tokens `before` and
/// `after` list. No edits: the clean distribution back (KL ≈ 0 in both modes). Errors:
/// an edit at a layer without a transcoder, past the prompt or the transcoder's
/// width, or with a value that is not finite.
pub fn intervene(
    model: &Transformer,
    set: &TranscoderSet,
    state: &ReplacementState,
    edits: &[FeatureEdit],
    mode: InterventionMode,
    top: usize,
) -> Result<InterventionOutcome> {
    check_edits(set, state, edits)?;
    let cfg = &model.config;
    let s = state.seq_len();
    let mut by_layer: HashMap<usize, Vec<FeatureEdit>> = HashMap::new();
    for e in edits {
        by_layer.entry(e.layer).or_default().push(*e);
    }
    let mut applied: Vec<AppliedEdit> = Vec::new();
    let mut inputs: HashMap<usize, Tensor> = HashMap::new();
    let frozen = mode == InterventionMode::Frozen;
    let layer_of = |name: &str| glassbox_model::layer_of(name);
    let mlp = |name: &str,
               out: Tensor,
               inputs: &mut HashMap<usize, Tensor>,
               applied: &mut Vec<AppliedEdit>|
     -> Result<Tensor> {
        let Some(l) = layer_of(name) else {
            return Ok(out);
        };
        let Some(d) = set.by_layer[l].as_ref() else {
            // no transcoder: the frozen model keeps the clean MLP output
            return Ok(if frozen {
                cached(&state.cache, name)?.unsqueeze(0)?
            } else {
                out
            });
        };
        let edits = by_layer.get(&l);
        if !frozen && edits.is_none() {
            return Ok(out);
        }
        let x_in = inputs
            .remove(&l)
            .ok_or_else(|| bad(format!("internal: {name} came before its MLP input")))?
            .squeeze(0)?;
        let acts = d.encode(&x_in)?;
        let mut rows: Vec<f32> = acts.flatten_all()?.to_vec1()?;
        let mut delta = vec![0f32; rows.len()];
        for e in edits.into_iter().flatten() {
            let i = e.position * d.d_sae + e.feature;
            let old = rows[i];
            let new = match e.value {
                EditValue::Set(v) => v,
                EditValue::Scale(k) => k * old,
            };
            delta[i] += new - old;
            rows[i] = new;
            applied.push(AppliedEdit {
                edit: *e,
                clean_activation: old,
                new_activation: new,
            });
        }
        if frozen {
            let acts = Tensor::from_vec(rows, (s, d.d_sae), &Device::Cpu)?;
            let y = (d.decode(&acts, Some(&x_in))? + &state.full_errors[l])?;
            Ok(y.unsqueeze(0)?)
        } else {
            let delta = Tensor::from_vec(delta, (s, d.d_sae), &Device::Cpu)?;
            Ok((out + delta.matmul(&d.w_dec)?.unsqueeze(0)?)?)
        }
    };
    let pinned = pinned_filter(model)?;
    let mlp_filter = HookFilter::new(
        vec![
            "blocks.*.ln2.hook_normalized".into(),
            "blocks.*.hook_mlp_out".into(),
        ],
        cfg,
    )?;
    let mut run = Run::new().hook(mlp_filter, |name, x| {
        let l = layer_of(name).unwrap_or(usize::MAX);
        if name.ends_with("ln2.hook_normalized") {
            inputs.insert(l, x.clone());
            return Ok(x);
        }
        mlp(name, x, &mut inputs, &mut applied).map_err(|e| ModelError::BadInput(e.to_string()))
    });
    if frozen {
        run = run.hook(pinned, |name, x| {
            let clean = state
                .cache
                .get(name)
                .ok_or_else(|| ModelError::BadInput(format!("internal: no clean {name}")))?;
            Ok(clean.reshape(x.dims())?)
        });
    }
    let out = model.run(&Batch::single(&state.tokens), &mut run)?;
    drop(run);
    let after_logits: Vec<f32> = out.logits()?.get(0)?.get(s - 1)?.to_vec1()?;
    let (pb, pa) = (softmax(&state.last_logits), softmax(&after_logits));
    let kl = pb
        .iter()
        .zip(&pa)
        .filter(|(p, _)| **p > 0.0)
        .map(|(&p, &q)| p as f64 * ((p as f64).ln() - (q.max(1e-30) as f64).ln()))
        .sum();
    Ok(InterventionOutcome {
        mode,
        before: top_probs(&state.last_logits, &pb, top),
        after: top_probs(&after_logits, &pa, top),
        kl,
        edits: applied,
        probs_before: pb,
        probs_after: pa,
    })
}
