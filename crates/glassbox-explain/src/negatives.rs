//! Non-activating contexts, verified: the feature store keeps only where features fire,
//! so detection's negatives come from running the model and the dictionary over
//! held-out windows, cutting them into spans as long as the store's contexts, and
//! keeping, for each feature, the spans where its activation is exactly zero at every
//! token. One pass serves every feature.

use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use candle_core::DType;
use glassbox_model::hooks::layer_of;
use glassbox_model::{Batch, HookFilter, LogitsMode, Run, Transformer};
use glassbox_sae::Dictionary;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Windows per forward pass.
pub const BATCH_WINDOWS: usize = 8;

/// Spans of held-out text and each feature's peak activation over each.
pub struct QuietSpans {
    /// each span's token texts
    tokens: Vec<Vec<String>>,
    /// `spans × d_sae`: the largest activation of each feature over each span
    peak: Vec<f32>,
    d_sae: usize,
}

impl QuietSpans {
    /// Runs `model` over `windows` (equal lengths), [`BATCH_WINDOWS`] at a time, encodes
    /// `hook` with `dict`, and cuts each window after its first token (the attention
    /// sink, never shown) into spans of `span` tokens. `on_batch` gets the windows done.
    pub fn find(
        model: &Transformer,
        dict: &Dictionary,
        hook: &str,
        windows: &[Vec<u32>],
        span: usize,
        token_text: &dyn Fn(u32) -> String,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Self> {
        if span == 0 {
            bail!("a span needs at least one token");
        }
        let seq = windows.first().map_or(0, Vec::len);
        if windows.iter().any(|w| w.len() != seq) {
            bail!("the windows for non-activating contexts differ in length");
        }
        let filter = HookFilter::new(vec![hook.to_string()], &model.config)?;
        let stop = layer_of(hook).map(|l| l + 1);
        let (mut tokens, mut peak) = (Vec::new(), Vec::new());
        for chunk in windows.chunks(BATCH_WINDOWS) {
            let mut run = Run::new().cache(filter.clone());
            run = match stop {
                Some(l) => run.stop_at_layer(l).logits(LogitsMode::None),
                None => run.logits(LogitsMode::Last),
            };
            let out = model.run(&Batch::new(chunk.to_vec()), &mut run)?;
            let x = out
                .cache
                .get(hook)
                .with_context(|| format!("the forward pass recorded no `{hook}`"))?
                .to_dtype(DType::F32)?
                .reshape((chunk.len() * seq, dict.d_in))?;
            let f: Vec<f32> = dict.encode(&x)?.flatten_all()?.to_vec1()?;
            for (w, window) in chunk.iter().enumerate() {
                let mut start = 1;
                while start + span <= seq {
                    let mut row = vec![0f32; dict.d_sae];
                    for p in start..start + span {
                        let acts = &f[(w * seq + p) * dict.d_sae..][..dict.d_sae];
                        for (m, &a) in row.iter_mut().zip(acts) {
                            // NaN counts as active: never offered as a negative
                            if a.is_nan() {
                                *m = f32::INFINITY;
                            } else if a > *m {
                                *m = a;
                            }
                        }
                    }
                    peak.extend(row);
                    tokens.push(
                        window[start..start + span]
                            .iter()
                            .map(|&t| token_text(t))
                            .collect(),
                    );
                    start += span;
                }
            }
            on_batch(chunk.len());
        }
        Ok(QuietSpans {
            tokens,
            peak,
            d_sae: dict.d_sae,
        })
    }

    /// Spans in all.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no spans.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Up to `n` spans where `feature` is zero at every token, chosen by `seed`.
    pub fn for_feature(&self, feature: u32, n: usize, seed: u64) -> Vec<Context> {
        let f = feature as usize;
        if f >= self.d_sae {
            return Vec::new();
        }
        let mut quiet: Vec<usize> = (0..self.len())
            .filter(|&s| self.peak[s * self.d_sae + f] <= 0.0)
            .collect();
        quiet.shuffle(&mut StdRng::seed_from_u64(seed));
        quiet
            .into_iter()
            .take(n)
            .map(|s| {
                let t = self.tokens[s].clone();
                let zeros = vec![0.0; t.len()];
                Context::new(t, zeros)
            })
            .collect()
    }
}
