//! What a caller asks of one forward pass: inputs (a padded batch), hooks that read or
//! replace activations, which activations to cache, where to take gradients, and
//! where to stop.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::hooks::{HookFilter, Intervention};
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

/// Token ids for a batch of sequences of equal (padded) length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// token ids `[batch, seq]`, every row the same length
    pub tokens: Vec<Vec<u32>>,
    /// `false` marks padding; `None` means every token is real.
    pub attention_mask: Option<Vec<Vec<bool>>>,
    /// explicit position ids; by default each real token's index among the real tokens
    pub position_ids: Option<Vec<Vec<u32>>>,
}

/// Where [`Batch::padded`] puts the padding of the shorter sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// before the tokens: every sequence ends at the last position (generation, last-token
    /// readouts)
    Left,
    /// after the tokens: every sequence starts at position 0
    Right,
}

impl Batch {
    /// Sequences of equal length, every token real, positions counted from 0.
    pub fn new(tokens: Vec<Vec<u32>>) -> Self {
        Batch {
            tokens,
            attention_mask: None,
            position_ids: None,
        }
    }

    /// A batch of one sequence.
    pub fn single(tokens: &[u32]) -> Self {
        Batch::new(vec![tokens.to_vec()])
    }

    /// Pads sequences of different lengths to the longest one with `pad_id`, masked out
    /// in [`attention_mask`](Self::attention_mask). Positions count real tokens only, so
    /// a left-padded sequence sees the same positions as unpadded.
    pub fn padded(seqs: &[Vec<u32>], pad_id: u32, side: PaddingSide) -> Self {
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(seqs.len());
        let mut mask = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = len - s.len();
            let (t, m): (Vec<u32>, Vec<bool>) = match side {
                PaddingSide::Left => (
                    std::iter::repeat_n(pad_id, pad)
                        .chain(s.iter().copied())
                        .collect(),
                    std::iter::repeat_n(false, pad)
                        .chain(std::iter::repeat_n(true, s.len()))
                        .collect(),
                ),
                PaddingSide::Right => (
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad_id, pad))
                        .collect(),
                    std::iter::repeat_n(true, s.len())
                        .chain(std::iter::repeat_n(false, pad))
                        .collect(),
                ),
            };
            tokens.push(t);
            mask.push(m);
        }
        Batch {
            tokens,
            attention_mask: Some(mask),
            position_ids: None,
        }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.tokens.len()
    }

    /// Length of the (first) sequence, padding included; 0 for an empty batch.
    pub fn seq_len(&self) -> usize {
        self.tokens.first().map_or(0, Vec::len)
    }

    /// Reads a tokens file (`cache --tokens-file`): a safetensors file holding an int64
    /// `input_ids` `[batch, seq]`.
    pub fn from_tokens_file(path: &std::path::Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
            ModelError::bad_file(path, format!("cannot read it as safetensors: {e}"))
        })?;
        let ids = t
            .get("input_ids")
            .ok_or_else(|| ModelError::bad_file(path, "no `input_ids` tensor"))?;
        Self::from_tensor(ids)
    }

    /// Reads an integer `input_ids` tensor, `[batch, seq]` (or `[seq]`, one sequence);
    /// [`ModelError::BadInput`] for another rank or an id that is not a `u32`.
    pub fn from_tensor(ids: &Tensor) -> Result<Self> {
        let ids = match ids.rank() {
            1 => ids.unsqueeze(0)?,
            2 => ids.clone(),
            r => {
                return Err(ModelError::BadInput(format!(
                    "input_ids must be [batch, seq], got rank {r}"
                )))
            }
        };
        let rows = ids.to_dtype(candle_core::DType::I64)?.to_vec2::<i64>()?;
        let mut tokens = Vec::with_capacity(rows.len());
        for (b, row) in rows.into_iter().enumerate() {
            tokens.push(
                row.into_iter()
                    .enumerate()
                    .map(|(p, v)| {
                        u32::try_from(v).map_err(|_| {
                            ModelError::BadInput(format!(
                                "input_ids[{b}][{p}] = {v} is not a valid token id"
                            ))
                        })
                    })
                    .collect::<Result<Vec<u32>>>()?,
            );
        }
        Ok(Batch::new(tokens))
    }

    pub(crate) fn validate(&self, cfg: &ModelConfig, past: usize) -> Result<()> {
        let s = self.seq_len();
        if self.tokens.is_empty() || s == 0 {
            return Err(ModelError::BadInput("empty input: no tokens to run".into()));
        }
        if self.tokens.iter().any(|t| t.len() != s) {
            return Err(ModelError::BadInput(
                "sequences in a batch must have equal length; use Batch::padded".into(),
            ));
        }
        if past + s > cfg.n_ctx {
            return Err(ModelError::TooLong {
                len: past + s,
                n_ctx: cfg.n_ctx,
            });
        }
        for row in &self.tokens {
            if let Some((position, &id)) = row
                .iter()
                .enumerate()
                .find(|(_, &t)| t as usize >= cfg.d_vocab)
            {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    position,
                    vocab: cfg.d_vocab,
                });
            }
        }
        for (what, ok) in [
            (
                "attention_mask",
                self.attention_mask
                    .as_ref()
                    .is_none_or(|m| m.len() == self.tokens.len() && m.iter().all(|r| r.len() == s)),
            ),
            (
                "position_ids",
                self.position_ids
                    .as_ref()
                    .is_none_or(|m| m.len() == self.tokens.len() && m.iter().all(|r| r.len() == s)),
            ),
        ] {
            if !ok {
                return Err(ModelError::BadInput(format!(
                    "{what} must have the same [batch, seq] shape as the tokens"
                )));
            }
        }
        Ok(())
    }
}

/// A function called at every hook point its filter matches: it receives the hook name
/// and the activation and returns the (possibly edited) activation.
pub type HookFn<'h> = Box<dyn FnMut(&str, Tensor) -> Result<Tensor> + 'h>;

/// Which positions a pass unembeds ([`Run::logits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsMode {
    /// every position: `[batch, seq, d_vocab]` (the default)
    #[default]
    All,
    /// only the last position of each row (generation)
    Last,
    /// none: the final norm and the unembedding do not run (no `ln_final.*` hooks)
    None,
}

/// Options for one forward pass. Build with the methods; pass to
/// [`Transformer::run`](crate::Transformer::run). `Run::new()` alone is a plain pass
/// returning every position's logits.
#[derive(Default)]
pub struct Run<'h> {
    pub(crate) hooks: Vec<(HookFilter, HookFn<'h>)>,
    pub(crate) cache: Option<HookFilter>,
    pub(crate) grads: Option<HookFilter>,
    pub(crate) stop_at_layer: Option<usize>,
    pub(crate) start_at_layer: Option<(usize, Tensor)>,
    pub(crate) logits: LogitsMode,
}

impl<'h> Run<'h> {
    /// A pass with no hooks, no cache and every position's logits.
    pub fn new() -> Self {
        Run::default()
    }
    /// Cache every activation whose hook name `filter` matches (after any hook or
    /// intervention there has edited it), in [`RunOutput::cache`].
    pub fn cache(mut self, filter: HookFilter) -> Self {
        self.cache = Some(filter);
        self
    }
    /// Call `f` at every hook point `filter` matches, with the hook name and the
    /// activation; what it returns (of the same shape) flows on. Several hooks at one
    /// point run in the order they were added.
    pub fn hook(
        mut self,
        filter: HookFilter,
        f: impl FnMut(&str, Tensor) -> Result<Tensor> + 'h,
    ) -> Self {
        self.hooks.push((filter, Box::new(f)));
        self
    }
    /// Apply an intervention at every hook point `filter` matches.
    pub fn intervene(self, filter: HookFilter, iv: Intervention) -> Self {
        self.hook(filter, move |name, x| iv.apply(name, &x))
    }
    /// Track gradients with respect to the activations `filter` matches (read them with
    /// [`RunOutput::gradients`]). Switches the pass to differentiable compositions of
    /// softmax and norms.
    pub fn grads(mut self, filter: HookFilter) -> Self {
        self.grads = Some(filter);
        self
    }
    /// Run blocks `0..layer` only and return the residual stream entering block `layer`
    /// (TransformerLens semantics); no unembedding.
    pub fn stop_at_layer(mut self, layer: usize) -> Self {
        self.stop_at_layer = Some(layer);
        self
    }
    /// Skip the embedding and blocks `0..layer`: `residual` `[batch, seq, d_model]` (for
    /// example another run's cached `blocks.{layer}.hook_resid_pre`) enters block `layer`.
    /// The batch still supplies the tokens' count, mask and positions.
    pub fn start_at_layer(mut self, layer: usize, residual: Tensor) -> Self {
        self.start_at_layer = Some((layer, residual));
        self
    }
    /// Which positions to unembed (default [`LogitsMode::All`]).
    pub fn logits(mut self, mode: LogitsMode) -> Self {
        self.logits = mode;
        self
    }
}

/// Activations by hook name (TransformerLens names, sorted), each in the shape
/// [`hook_points`](crate::hook_points) lists.
pub type ActivationCache = BTreeMap<String, Tensor>;

/// What one forward pass returns.
pub struct RunOutput {
    /// `[batch, seq, vocab]` (or `[batch, 1, vocab]` with `LogitsMode::Last`); `None`
    /// with `stop_at_layer` or [`LogitsMode::None`]
    pub logits: Option<Tensor>,
    /// the residual stream after the last block run (before the final norm),
    /// `[batch, seq, d_model]`
    pub residual: Tensor,
    /// the activations the run's [`cache`](Run::cache) filter matched
    pub cache: ActivationCache,
    pub(crate) grad_vars: Vec<(String, Var)>,
}

impl RunOutput {
    /// The logits; [`ModelError::BadInput`] when the run computed none.
    pub fn logits(&self) -> Result<&Tensor> {
        self.logits.as_ref().ok_or_else(|| {
            ModelError::BadInput(
                "this run computed no logits (stop_at_layer or LogitsMode::None)".into(),
            )
        })
    }

    /// d`metric`/d(activation) for every hook point the run's `grads` filter matched.
    /// `metric` must be a scalar computed from this run's outputs.
    pub fn gradients(&self, metric: &Tensor) -> Result<ActivationCache> {
        if metric.rank() != 0 {
            return Err(ModelError::BadInput(format!(
                "the metric must be a scalar, got shape {:?}",
                metric.dims()
            )));
        }
        if self.grad_vars.is_empty() {
            return Err(ModelError::BadInput(
                "no gradient hooks: build the run with Run::grads(filter)".into(),
            ));
        }
        let store = metric.backward()?;
        let mut out = ActivationCache::new();
        for (name, var) in &self.grad_vars {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.as_tensor().zeros_like()?,
            };
            out.insert(name.clone(), g);
        }
        Ok(out)
    }
}
