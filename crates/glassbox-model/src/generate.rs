//! Autoregressive generation with a KV cache. The caller's `Run` (hooks,
//! interventions) is applied at every step; at each step a hook sees only the new
//! positions, as in TransformerLens.

use crate::error::{ModelError, Result};
use crate::run::{Batch, LogitsMode, Run};
use crate::transformer::{KvCache, Transformer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How [`Transformer::generate`] picks tokens. The default is greedy, 32 new tokens.
#[derive(Debug, Clone)]
pub struct SamplingOptions {
    /// the most tokens to generate (fewer when a stop token comes or the context is full)
    pub max_new_tokens: usize,
    /// 0 means greedy
    pub temperature: f64,
    /// nucleus sampling mass (1.0 disables)
    pub top_p: f64,
    /// seed of the sampling RNG: equal options give equal tokens
    pub seed: u64,
    /// generation stops after emitting any of these
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// Tokens sorted up front when sampling; the rest only when a walk reaches them.
const SORTED_HEAD: usize = 256;

/// Picks the next token from one row of logits.
pub struct Sampler {
    rng: StdRng,
    temperature: f64,
    top_p: f64,
}

impl Sampler {
    /// A sampler for `opts`; [`ModelError::BadInput`] for a negative or non-finite
    /// temperature or a `top_p` outside (0, 1].
    pub fn new(opts: &SamplingOptions) -> Result<Self> {
        if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
            return Err(ModelError::BadInput(format!(
                "temperature must be ≥ 0, got {}",
                opts.temperature
            )));
        }
        if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
            return Err(ModelError::BadInput(format!(
                "top_p must be in (0, 1], got {}",
                opts.top_p
            )));
        }
        Ok(Sampler {
            rng: StdRng::seed_from_u64(opts.seed),
            temperature: opts.temperature,
            top_p: opts.top_p,
        })
    }

    /// The next token: the argmax at temperature 0; otherwise a draw from
    /// `softmax(logits / temperature)` restricted to the nucleus (the most probable
    /// tokens whose mass first reaches `top_p`).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        if self.temperature == 0.0 {
            return argmax();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, (((l - max) as f64) / self.temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        // Most probable first, ties by id (what a stable sort gives). Sorting a whole
        // vocabulary per token is the decode loop's largest CPU cost after the model, and
        // the walks below rarely leave the head: sort the head, the rest only if needed.
        let order = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let head = SORTED_HEAD.min(probs.len());
        if head < probs.len() {
            probs.select_nth_unstable_by(head - 1, order);
        }
        probs[..head].sort_by(order);
        let mut whole = head == probs.len();
        let mut sort_rest = |probs: &mut [(usize, f64)], i: usize| {
            if i == head && !whole {
                probs[head..].sort_by(order);
                whole = true;
            }
        };
        // the nucleus: the most probable tokens whose mass first reaches top_p; with
        // top_p = 1 every token, mass 1 (the sum can round below 1, and walking the whole
        // vocabulary to find that out would sort it all)
        let (mut kept, mut mass) = (probs.len(), 1.0);
        if self.top_p < 1.0 {
            (kept, mass) = (0, 0.0);
            for i in 0..probs.len() {
                sort_rest(&mut probs, i);
                kept += 1;
                mass += probs[i].1;
                if mass >= self.top_p {
                    break;
                }
            }
        }
        let probs = &mut probs[..kept];
        let mut r = self.rng.gen::<f64>() * mass;
        for i in 0..probs.len() {
            sort_rest(probs, i);
            let (id, p) = probs[i];
            if r < p {
                return id as u32;
            }
            r -= p;
        }
        probs.last().map_or_else(argmax, |p| p.0 as u32)
    }
}

impl Transformer {
    /// Generates up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token`
    /// with each one as it is produced. Returns the new tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &SamplingOptions,
        run: &mut Run<'_>,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.generate_while(prompt, opts, run, |t| {
            on_token(t);
            true
        })
    }

    /// [`generate`](Self::generate) that also stops, keeping what it has, as soon as
    /// `keep_going` (called with each new token) returns false: a caller with a deadline
    /// or a cancelled request stops after the current token instead of finishing.
    pub fn generate_while(
        &self,
        prompt: &[u32],
        opts: &SamplingOptions,
        run: &mut Run<'_>,
        mut keep_going: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        if run.stop_at_layer.is_some() {
            return Err(ModelError::BadInput(
                "generation needs logits: do not set stop_at_layer".into(),
            ));
        }
        if prompt.len() > self.config.n_ctx {
            return Err(ModelError::BadInput(format!(
                "the prompt has {} tokens; the model's context holds {}: shorten the prompt",
                prompt.len(),
                self.config.n_ctx
            )));
        }
        let mut sampler = Sampler::new(opts)?;
        let mut kv = KvCache::new(&self.config);
        let mut out = Vec::new();
        let mut next_input = prompt.to_vec();
        let saved_mode = run.logits;
        run.logits = LogitsMode::Last;
        let result = (|| {
            for _ in 0..opts.max_new_tokens {
                if kv.len() + next_input.len() > self.config.n_ctx {
                    break;
                }
                let o = self.run_cached(&Batch::single(&next_input), run, &mut kv)?;
                let row: Vec<f32> = o.logits()?.flatten_all()?.to_vec1()?;
                let t = sampler.sample(&row);
                out.push(t);
                if !keep_going(t) || opts.stop_tokens.contains(&t) {
                    break;
                }
                next_input = vec![t];
            }
            Ok(out)
        })();
        run.logits = saved_mode;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = Sampler::new(&SamplingOptions::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_p_restricts_to_the_nucleus() {
        let opts = SamplingOptions {
            temperature: 1.0,
            top_p: 0.5,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(&opts).unwrap();
        // token 2 holds > 50% of the mass: the nucleus is that token alone
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 0.0, 5.0, 0.0]), 2);
        }
    }

    /// The head-first sort draws exactly the tokens a whole stable sort draws (with
    /// top_p = 1 meaning every token, mass 1), also when the draw or the nucleus reaches
    /// past the sorted head (a flat distribution).
    #[test]
    fn sorting_only_the_head_draws_what_a_whole_sort_draws() {
        fn reference(rng: &mut StdRng, logits: &[f32], temperature: f64, top_p: f64) -> u32 {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i, (((l - max) as f64) / temperature).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= total);
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let (mut kept, mut mass) = (probs.len(), 1.0);
            if top_p < 1.0 {
                (kept, mass) = (0, 0.0);
                for p in &probs {
                    kept += 1;
                    mass += p.1;
                    if mass >= top_p {
                        break;
                    }
                }
            }
            let mut r = rng.gen::<f64>() * mass;
            for &(i, p) in &probs[..kept] {
                if r < p {
                    return i as u32;
                }
                r -= p;
            }
            probs[kept - 1].0 as u32
        }
        let mut gen = StdRng::seed_from_u64(11);
        for (vocab, spread, top_p) in [
            (5000, 8.0, 1.0),
            (5000, 0.01, 1.0),
            (5000, 0.01, 0.9),
            (300, 2.0, 0.5),
        ] {
            let logits: Vec<f32> = (0..vocab).map(|_| gen.gen::<f32>() * spread).collect();
            let opts = SamplingOptions {
                temperature: 0.8,
                top_p,
                seed: 5,
                ..Default::default()
            };
            let mut s = Sampler::new(&opts).unwrap();
            let mut rng = StdRng::seed_from_u64(5);
            for _ in 0..200 {
                assert_eq!(s.sample(&logits), reference(&mut rng, &logits, 0.8, top_p));
            }
        }
    }

    #[test]
    fn sampling_is_deterministic_for_a_seed() {
        let opts = SamplingOptions {
            temperature: 1.0,
            top_p: 1.0,
            seed: 3,
            ..Default::default()
        };
        let logits = [0.5f32, 0.4, 0.3, 0.2, 0.1];
        let a: Vec<u32> = {
            let mut s = Sampler::new(&opts).unwrap();
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(&opts).unwrap();
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "temperature 1 should vary"
        );
    }
}
