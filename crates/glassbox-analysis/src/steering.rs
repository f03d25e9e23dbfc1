//! Steering: add `strength · direction` to an activation — during a forward pass and
//! during generation — and measure what it does: the log-probability change of target
//! tokens and the KL divergence on neutral text (a guard against breaking the model).

use crate::metric::{log_softmax, mean_kl};
use crate::{bad, Result};
use candle_core::{Device, Tensor};
use glassbox_model::{Batch, HookFilter, LogitsMode, Run, TextTokenizer, Transformer};
use std::path::Path;

/// Sentences with no particular topic, for the KL guard.
pub const NEUTRAL_TEXTS: &[&str] = &[
    "The meeting was moved to Thursday afternoon because of the holiday.",
    "She opened the window and the cool air filled the room.",
    "Water boils at a lower temperature at high altitude.",
    "The report has three sections and a short appendix.",
    "He walked to the station and waited for the next train.",
    "Most of the books on the shelf were about history.",
];

/// A direction added at one hook point: `x' = x + strength · direction` on the hook's
/// last axis. Build it with [`Steering::new`], run it with [`Steering::run`].
#[derive(Clone)]
pub struct Steering {
    /// the hook (or hook pattern) steered, e.g. `blocks.6.hook_resid_post`
    pub hook: String,
    /// `[width]` of the hook's last axis
    pub direction: Tensor,
    /// the multiple of `direction` added (not normalised: a unit direction's strength
    /// is in the activation's own units)
    pub strength: f64,
    /// absolute token positions (prompt positions); `None` = every position, including
    /// each generated token
    pub positions: Option<Vec<usize>>,
}

impl Steering {
    /// Steering at every position. Refuses a non-finite strength, a direction that is
    /// not 1-D and one holding NaN or infinite values. The width is checked against the
    /// activation when the run reaches the hook.
    pub fn new(hook: &str, direction: Tensor, strength: f64) -> Result<Self> {
        if !strength.is_finite() {
            return Err(bad(format!(
                "steering strength must be a finite number, got {strength}"
            )));
        }
        if direction.rank() != 1 {
            return Err(bad(format!(
                "a steering direction is a vector, got shape {:?}",
                direction.dims()
            )));
        }
        let norm = direction.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        if !norm.is_finite() {
            return Err(bad("the steering direction holds NaN or infinite values"));
        }
        Ok(Steering {
            hook: hook.to_string(),
            direction,
            strength,
            positions: None,
        })
    }

    /// A run that applies the steering. Positions are counted across calls, so the same
    /// run steers a prompt and then each generated token at its true position. A width
    /// mismatch fails the run with [`glassbox_model::ModelError::BadIntervention`].
    pub fn run<'h>(&self, model: &Transformer) -> Result<Run<'h>> {
        let filter = HookFilter::parse(&self.hook, &model.config)?;
        let me = self.clone();
        let mut seen = 0usize;
        Ok(Run::new().hook(filter, move |_, x| {
            let s = x.dim(1)?;
            let out = me.apply(&x, seen)?;
            seen += s;
            Ok(out)
        }))
    }

    /// The steered activation `x` `[batch, seq, …, width]` whose first position is the
    /// sequence's `first_position` (the model server steers each sequence of a batch
    /// at its own positions).
    pub fn apply(&self, x: &Tensor, first_position: usize) -> glassbox_model::Result<Tensor> {
        let width = self.direction.dim(0)?;
        let dims = x.dims().to_vec();
        if dims.last() != Some(&width) {
            return Err(glassbox_model::ModelError::BadIntervention {
                hook: self.hook.clone(),
                problem: format!(
                    "steering vector has {width} entries, the activation's last axis has {:?}",
                    dims.last()
                ),
            });
        }
        let add = (&self.direction * self.strength)?;
        let s = dims[1];
        Ok(match &self.positions {
            None => x.broadcast_add(&add)?,
            Some(ps) => {
                let sel: Vec<f32> = (first_position..first_position + s)
                    .map(|p| if ps.contains(&p) { 1.0 } else { 0.0 })
                    .collect();
                let mut shape = vec![1; dims.len()];
                shape[1] = s;
                let sel = Tensor::from_vec(sel, shape.as_slice(), &Device::Cpu)?;
                (x + sel.broadcast_mul(&add)?.broadcast_as(dims.as_slice())?)?
            }
        })
    }
}

/// Reads a steering vector: a safetensors file with one 1-D tensor (or one named `vector`).
pub fn load_vector(path: &Path) -> Result<Tensor> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        bad(format!(
            "cannot read {} as safetensors: {e}",
            path.display()
        ))
    })?;
    let v = match t.get("vector") {
        Some(v) => v.clone(),
        None if t.len() == 1 => t.values().next().expect("one tensor").clone(),
        None => {
            return Err(bad(format!(
                "{} holds {} tensors; name the steering vector `vector`",
                path.display(),
                t.len()
            )))
        }
    };
    let v = v.to_dtype(candle_core::DType::F32)?;
    Ok(if v.rank() == 2 && v.dim(0)? == 1 {
        v.squeeze(0)?
    } else {
        v
    })
}

/// Reads contrastive pairs: one pair per line, `positive<TAB>negative`, or JSONL with
/// `positive` and `negative` fields.
pub fn load_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let mut pairs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let pair = if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(format!("{}:{}: not valid JSON: {e}", path.display(), i + 1)))?;
            match (v["positive"].as_str(), v["negative"].as_str()) {
                (Some(p), Some(n)) => (p.to_string(), n.to_string()),
                _ => {
                    return Err(bad(format!(
                        "{}:{}: needs string fields `positive` and `negative`",
                        path.display(),
                        i + 1
                    )))
                }
            }
        } else {
            match line.split_once('\t') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => {
                    return Err(bad(format!(
                        "{}:{}: expected `positive<TAB>negative`",
                        path.display(),
                        i + 1
                    )))
                }
            }
        };
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(bad(format!("{} holds no pairs", path.display())));
    }
    Ok(pairs)
}

/// Mean over pairs of (activation on the positive − on the negative prompt) at the last
/// token: contrastive activation addition. Each prompt is tokenized with BOS as the
/// tokenizer asks. The result has the shape of one position of `hook`: `[width]` for a
/// stream hook (ready for [`Steering::new`]), `[head, d_head]` for a per-head one.
pub fn contrastive_direction(
    model: &Transformer,
    tok: &TextTokenizer,
    pairs: &[(String, String)],
    hook: &str,
) -> Result<Tensor> {
    let filter = HookFilter::parse(hook, &model.config)?;
    let last_act = |text: &str| -> Result<Tensor> {
        let ids = tok.encode(text)?;
        if ids.is_empty() {
            return Err(bad("a contrastive prompt is empty"));
        }
        let ids = tok.with_bos(ids);
        let layer = glassbox_model::hooks::layer_of(hook);
        let mut run = Run::new().cache(filter.clone()).logits(LogitsMode::None);
        if let Some(l) = layer {
            run = run.stop_at_layer((l + 1).min(model.config.n_layers));
        }
        let out = model.run(&Batch::single(&ids), &mut run)?;
        let a = out
            .cache
            .get(hook)
            .ok_or_else(|| bad(format!("hook {hook} was not reached")))?;
        Ok(a.get(0)?.get(ids.len() - 1)?)
    };
    let mut sum: Option<Tensor> = None;
    for (p, n) in pairs {
        let d = (last_act(p)? - last_act(n)?)?;
        sum = Some(match sum {
            Some(s) => (s + d)?,
            None => d,
        });
    }
    let sum = sum.ok_or_else(|| bad("no contrastive pairs"))?;
    Ok((sum / pairs.len() as f64)?)
}

/// What a steering does at the end of a prompt, and what it costs on neutral text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SteeringEffect {
    /// the steering's strength
    pub strength: f64,
    /// per target token: log p(target | prompt) steered − unsteered
    pub target_logprob_delta: Vec<f32>,
    /// mean over tokens of KL(unsteered ‖ steered) on the neutral texts
    pub kl_neutral: f32,
}

/// Measures `steering` on `prompt` (token ids as the model runs them): the change of
/// log p(target | prompt) at the last position for each of `targets`, and the mean KL
/// from the unsteered to the steered model over [`NEUTRAL_TEXTS`], which are steered at
/// every position whatever `steering.positions` says.
pub fn effect(
    model: &Transformer,
    tok: &TextTokenizer,
    prompt: &[u32],
    targets: &[u32],
    steering: &Steering,
) -> Result<SteeringEffect> {
    let last_logprobs = |run: &mut Run| -> Result<Tensor> {
        let out = model.run(&Batch::single(prompt), run)?;
        log_softmax(&out.logits()?.flatten_to(1)?.squeeze(0)?)
    };
    let base = last_logprobs(&mut Run::new().logits(LogitsMode::Last))?;
    let steered = last_logprobs(&mut steering.run(model)?.logits(LogitsMode::Last))?;
    let mut delta = Vec::with_capacity(targets.len());
    for &t in targets {
        let d = (steered.get(t as usize)? - base.get(t as usize)?)?.to_scalar::<f32>()?;
        delta.push(d);
    }
    let mut kl = 0f32;
    for text in NEUTRAL_TEXTS {
        let ids = tok.encode_prompt(text)?;
        let plain = model.run(&Batch::single(&ids), &mut Run::new())?;
        // positions restrict to the steered prompt; on neutral text steer everywhere
        let mut everywhere = steering.clone();
        everywhere.positions = None;
        let steered = model.run(&Batch::single(&ids), &mut everywhere.run(model)?)?;
        kl += mean_kl(plain.logits()?, steered.logits()?)?;
    }
    Ok(SteeringEffect {
        strength: steering.strength,
        target_logprob_delta: delta,
        kl_neutral: kl / NEUTRAL_TEXTS.len() as f32,
    })
}

/// Clamps one dictionary feature to `value` at a hook while keeping the dictionary's
/// reconstruction error, so the rest of the activation is untouched:
/// `x' = x + (value − f(x)[feature]) · W_dec[feature]`.
#[derive(Clone)]
pub struct FeatureClamp {
    /// the hook the SAE reads and writes
    pub hook: String,
    /// the SAE (a transcoder is refused)
    pub dictionary: std::sync::Arc<glassbox_sae::Dictionary>,
    /// the feature's index, below `d_sae`
    pub feature: usize,
    /// the activation the feature is set to, at every position
    pub value: f64,
}

impl FeatureClamp {
    /// Refuses a non-finite value, a transcoder and a feature the dictionary does not
    /// have.
    pub fn new(
        hook: &str,
        dictionary: std::sync::Arc<glassbox_sae::Dictionary>,
        feature: usize,
        value: f64,
    ) -> Result<Self> {
        if !value.is_finite() {
            return Err(bad(format!(
                "clamp value must be a finite number, got {value}"
            )));
        }
        if dictionary.is_transcoder() {
            return Err(bad(
                "clamping needs an SAE (input and output at the same hook), not a transcoder",
            ));
        }
        dictionary.decoder_row(feature)?;
        Ok(FeatureClamp {
            hook: hook.to_string(),
            dictionary,
            feature,
            value,
        })
    }

    /// A run that clamps the feature at every position of every forward pass.
    pub fn run<'h>(&self, model: &Transformer) -> Result<Run<'h>> {
        let filter = HookFilter::parse(&self.hook, &model.config)?;
        let me = self.clone();
        Ok(Run::new().hook(filter, move |_, x| me.apply(&x)))
    }

    /// The activation `x` (any leading axes, the dictionary's width last) with the
    /// feature clamped at every position.
    pub fn apply(&self, x: &Tensor) -> glassbox_model::Result<Tensor> {
        let row = self
            .dictionary
            .decoder_row(self.feature)
            .map_err(|e| self.failed(e))?;
        let f = self.dictionary.encode(x).map_err(|e| self.failed(e))?;
        let current = f.narrow(candle_core::D::Minus1, self.feature, 1)?;
        let delta = ((current * -1.0)? + self.value)?.broadcast_mul(&row)?;
        Ok((x + delta)?)
    }

    fn failed(&self, e: impl std::fmt::Display) -> glassbox_model::ModelError {
        glassbox_model::ModelError::BadIntervention {
            hook: self.hook.clone(),
            problem: e.to_string(),
        }
    }
}
