//! Which token positions count: the one rule every stage applies — dictionary training,
//! evaluation (`eval-sae`, `metrics.json`, the transcoders' splice), the feature store and
//! the prompt view — so that their figures are about the same tokens.
//!
//! A position is left out when it is position 0 of its window (the attention sink: its
//! residual norm is ~100× an ordinary token's), holds one of the model's special tokens
//! (BOS/EOS: `pack` puts a BOS between documents, and each is a sink of its own), or —
//! once a [`MassiveNorm`] is set — carries a *massive activation*: the residual stream
//! entering the hook's block has a norm above a threshold measured on training tokens.
//! Left-out positions keep their true activations wherever a dictionary is spliced in.
//!
//! Why a norm threshold, and which: on SmolLM2 a token at position 1 after a
//! window-initial BOS is sometimes a second sink (" bullet" 177×, " bear" 155×,
//! " Congress" 25× the median norm at `blocks.15.hook_resid_pre`), so no position or
//! token rule catches them. Measured over 32,508 SOTU rows (`examples/norm_census.rs` in
//! glassbox-data): at layers 15/22/28 ordinary rows reach 1.28/1.13/1.16× the median at
//! the 99th percentile and every row above 5× is such a sink (6.0–177×); at layers 3 and
//! 8, before the sink forms, frequent tokens (" the") legitimately reach 8–12× the median
//! (the 99th percentile is already 8.0×). A multiple of the median would either drop
//! those or miss the milder sinks; [`MASSIVE_FACTOR`] × the 99th percentile separates
//! both cases (layer 3's largest row is 1.5× its p99; the mildest sink at layer 28 is
//! 4.3× its p99), and stays put while sinks are under 1 % of rows (0.03 % here).

use crate::loader::Model;

/// Why a position is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// position 0 of the window: the attention sink
    FirstPosition,
    /// a special token (BOS/EOS) of the model
    SpecialToken,
    /// the residual stream's norm is above the [`MassiveNorm`] threshold
    Massive,
}

impl Exclusion {
    /// A short reason for users (the prompt view's hover text, reports).
    pub fn reason(self) -> &'static str {
        match self {
            Exclusion::FirstPosition => {
                "position 0: the attention sink, left out of every statistic"
            }
            Exclusion::SpecialToken => "a special token (BOS/EOS), left out of every statistic",
            Exclusion::Massive => {
                "a massive activation (a second attention sink: the residual norm is over 3× the 99th percentile of training tokens), left out of every statistic"
            }
        }
    }
}

/// How far above the 99th percentile of training rows' residual norms a row is massive.
pub const MASSIVE_FACTOR: f32 = 3.0;
/// The quantile of training rows' residual norms the threshold is a multiple of.
pub const MASSIVE_QUANTILE: f64 = 0.99;

/// The massive-activation criterion: a row whose residual stream at `hook` (the stream
/// entering the block of the hook a dictionary reads: [`MassiveNorm::hook_for`]) has a
/// norm above `threshold`. Measured once, on the training tokens
/// ([`MassiveNorm::calibrate`]), and stored with the dictionary so that evaluation, the
/// feature store and the prompt view apply the same number.
#[derive(Debug, Clone, PartialEq)]
pub struct MassiveNorm {
    /// the residual-stream hook whose norm is compared (`blocks.L.hook_resid_*`)
    pub hook: String,
    /// rows with a Euclidean norm above this are massive
    pub threshold: f32,
}

impl MassiveNorm {
    /// The residual-stream hook whose norm decides for a dictionary reading `hook`:
    /// `hook` itself for `hook_resid_pre/mid/post`, else `blocks.L.hook_resid_pre` of
    /// its block. `None` outside the blocks (embeddings, final norm).
    pub fn hook_for(hook: &str) -> Option<String> {
        let layer = crate::hooks::layer_of(hook)?;
        let tail = hook.strip_prefix(&format!("blocks.{layer}."))?;
        Some(if tail.starts_with("hook_resid_") {
            hook.to_string()
        } else {
            format!("blocks.{layer}.hook_resid_pre")
        })
    }

    /// The threshold from the norms of training rows: [`MASSIVE_FACTOR`] × their
    /// [`MASSIVE_QUANTILE`]. `None` without rows.
    pub fn calibrate(hook: &str, norms: &[f32]) -> Option<Self> {
        let mut v: Vec<f32> = norms.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let q = v[((v.len() - 1) as f64 * MASSIVE_QUANTILE).round() as usize];
        Some(MassiveNorm {
            hook: hook.to_string(),
            threshold: MASSIVE_FACTOR * q,
        })
    }

    /// The Euclidean norm of one row, as the threshold is measured and applied.
    pub fn row_norm(row: &[f32]) -> f32 {
        row.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    /// Whether one residual row is massive (a NaN norm counts: it is no ordinary row).
    pub fn is_massive(&self, row: &[f32]) -> bool {
        let n = Self::row_norm(row);
        n.is_nan() || n > self.threshold
    }

    /// Per position of `[b, s, …]` activations at [`hook`](Self::hook) (flattened
    /// `w × s + p`): whether its norm is over the threshold.
    pub fn flags(&self, resid: &candle_core::Tensor) -> crate::Result<Vec<bool>> {
        let dims = resid.dims();
        let rows = dims.iter().take(2).product::<usize>().max(1);
        let x = resid
            .to_dtype(candle_core::DType::F32)?
            .reshape((rows, ()))?;
        let norms: Vec<f32> = x.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        // a NaN norm counts as massive: it is no ordinary row
        Ok(norms
            .iter()
            .map(|&n| n.is_nan() || n > self.threshold)
            .collect())
    }

    /// As stored in a dictionary's `cfg.json` (`metadata.glassbox_massive_norm`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hook": self.hook,
            "threshold": self.threshold,
            "rule": format!("residual norm over {MASSIVE_FACTOR} × the {} quantile of training rows", MASSIVE_QUANTILE),
        })
    }

    /// The key under a dictionary's `cfg.json` `metadata`.
    pub const CFG_KEY: &'static str = "glassbox_massive_norm";

    /// The criterion a dictionary was trained with, from its `cfg.json` (the whole
    /// object; `metadata.glassbox_massive_norm`). `None` for dictionaries without one
    /// (older runs, other tools): then no row is left out as massive.
    pub fn from_cfg(cfg: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        Self::from_json(cfg.get("metadata")?.get(Self::CFG_KEY)?)
    }

    /// Reads [`to_json`](Self::to_json)'s object; `None` unless it has a `hook` and a
    /// finite positive `threshold`.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let threshold = v.get("threshold")?.as_f64()? as f32;
        let hook = v.get("hook")?.as_str()?.to_string();
        (threshold.is_finite() && threshold > 0.0).then_some(MassiveNorm { hook, threshold })
    }
}

/// The token-selection rule. `RowRule::for_model` is what every command uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowRule {
    /// sorted, without repeats
    exclude_tokens: Vec<u32>,
    massive: Option<MassiveNorm>,
}

impl RowRule {
    /// Position 0 and the given token ids are left out.
    pub fn new(exclude_tokens: impl IntoIterator<Item = u32>) -> Self {
        let mut exclude_tokens: Vec<u32> = exclude_tokens.into_iter().collect();
        exclude_tokens.sort_unstable();
        exclude_tokens.dedup();
        RowRule {
            exclude_tokens,
            massive: None,
        }
    }

    /// This rule, also leaving out rows with a massive activation.
    pub fn with_massive(mut self, m: Option<MassiveNorm>) -> Self {
        self.massive = m;
        self
    }

    /// The massive-activation criterion, when set.
    pub fn massive(&self) -> Option<&MassiveNorm> {
        self.massive.as_ref()
    }

    /// `hooks` plus the residual hook the massive criterion reads, when it is set and
    /// not among them: what a forward pass applying this rule must record.
    pub fn hooks_with_norm(&self, hooks: &[String]) -> Vec<String> {
        let mut all = hooks.to_vec();
        if let Some(m) = &self.massive {
            if !all.contains(&m.hook) {
                all.push(m.hook.clone());
            }
        }
        all
    }

    /// Per flat position `w × s + p` of a forward pass's cache: whether it is massive
    /// (all false without the criterion). `cache` must hold [`hooks_with_norm`](Self::hooks_with_norm).
    pub fn massive_flags(
        &self,
        cache: &crate::run::ActivationCache,
        positions: usize,
    ) -> crate::Result<Vec<bool>> {
        match &self.massive {
            None => Ok(vec![false; positions]),
            Some(m) => {
                let t = cache.get(&m.hook).ok_or_else(|| {
                    crate::ModelError::BadInput(format!(
                        "the massive-activation rule reads `{}`, which the forward pass did not record",
                        m.hook
                    ))
                })?;
                m.flags(t)
            }
        }
    }

    /// Position 0 and the special tokens the model declares (BOS and EOS from its config
    /// and its tokenizer).
    pub fn for_model(model: &Model) -> Self {
        let c = model.config();
        let mut ids: Vec<u32> = [c.bos_token_id, c.eos_token_id]
            .into_iter()
            .flatten()
            .collect();
        if let Some(t) = &model.tokenizer {
            ids.extend([t.bos_token_id, t.eos_token_id].into_iter().flatten());
        }
        RowRule::new(ids)
    }

    /// The token ids left out, sorted.
    pub fn excluded_tokens(&self) -> &[u32] {
        &self.exclude_tokens
    }

    /// Why position `p` of `window` is left out, or `None` if it counts.
    pub fn exclusion(&self, window: &[u32], p: usize) -> Option<Exclusion> {
        if p == 0 {
            Some(Exclusion::FirstPosition)
        } else if window
            .get(p)
            .is_some_and(|t| self.exclude_tokens.binary_search(t).is_ok())
        {
            Some(Exclusion::SpecialToken)
        } else {
            None
        }
    }

    /// Whether position `p` of `window` counts.
    pub fn keeps(&self, window: &[u32], p: usize) -> bool {
        p < window.len() && self.exclusion(window, p).is_none()
    }

    /// The positions of `window` that count, in order.
    pub fn positions<'a>(&'a self, window: &'a [u32]) -> impl Iterator<Item = usize> + 'a {
        (0..window.len()).filter(move |&p| self.keeps(window, p))
    }

    /// The positions of `window` that count once its massive rows (`massive[p]`, from
    /// [`massive_flags`](Self::massive_flags)) are left out too.
    pub fn positions_after<'a>(
        &'a self,
        window: &'a [u32],
        massive: &'a [bool],
    ) -> impl Iterator<Item = usize> + 'a {
        self.positions(window)
            .filter(move |&p| !massive.get(p).copied().unwrap_or(false))
    }

    /// Why position `p` is left out, given whether it is massive.
    pub fn exclusion_after(&self, window: &[u32], p: usize, massive: bool) -> Option<Exclusion> {
        self.exclusion(window, p)
            .or(massive.then_some(Exclusion::Massive))
    }

    /// How many positions of `windows` count (known from the tokens alone).
    pub fn count(&self, windows: &[Vec<u32>]) -> usize {
        windows.iter().map(|w| self.positions(w).count()).sum()
    }

    /// Flat indices `w × s + p` of the positions that count in equal-length `windows` of
    /// `s` tokens, in order.
    pub fn flat_positions(&self, windows: &[Vec<u32>], s: usize) -> Vec<u32> {
        windows
            .iter()
            .enumerate()
            .flat_map(|(w, win)| self.positions(win).map(move |p| (w * s + p) as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_massive_rule_reads_the_residual_stream_of_the_hooks_block() {
        assert_eq!(
            MassiveNorm::hook_for("blocks.15.hook_resid_pre").as_deref(),
            Some("blocks.15.hook_resid_pre")
        );
        assert_eq!(
            MassiveNorm::hook_for("blocks.3.hook_resid_post").as_deref(),
            Some("blocks.3.hook_resid_post")
        );
        assert_eq!(
            MassiveNorm::hook_for("blocks.7.ln2.hook_normalized").as_deref(),
            Some("blocks.7.hook_resid_pre")
        );
        assert_eq!(MassiveNorm::hook_for("hook_embed"), None);
    }

    #[test]
    fn the_threshold_is_three_times_the_99th_percentile_and_flags_rows_above_it() {
        // 1..=100: the 99th percentile (index 98 of 0..99) is 99
        let norms: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        let m = MassiveNorm::calibrate("h", &norms).unwrap();
        assert_eq!(m.threshold, 3.0 * 99.0);
        assert!(MassiveNorm::calibrate("h", &[]).is_none());
        // rows of norm 3, 400 and NaN in a [1, 3, 2] activation
        let m = MassiveNorm {
            hook: "h".into(),
            threshold: 297.0,
        };
        let x = candle_core::Tensor::new(
            &[[[3.0f32, 0.0], [0.0, 400.0], [f32::NAN, 0.0]]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.flags(&x).unwrap(), vec![false, true, true]);
        // stored and read back as a dictionary's cfg.json holds it
        let mut cfg = serde_json::Map::new();
        cfg.insert(
            "metadata".into(),
            serde_json::json!({ MassiveNorm::CFG_KEY: m.to_json() }),
        );
        assert_eq!(MassiveNorm::from_cfg(&cfg), Some(m.clone()));
        assert_eq!(MassiveNorm::from_cfg(&serde_json::Map::new()), None);
        // the rule: token exclusions first, then massive rows
        let rule = RowRule::new([9]).with_massive(Some(m));
        let w = [1, 2, 9, 4];
        let flags = [false, true, false, false];
        assert_eq!(
            rule.positions_after(&w, &flags).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(rule.exclusion_after(&w, 1, true), Some(Exclusion::Massive));
        assert_eq!(
            rule.exclusion_after(&w, 0, true),
            Some(Exclusion::FirstPosition)
        );
        assert_eq!(
            rule.hooks_with_norm(&["a".to_string()]),
            vec!["a".to_string(), "h".to_string()]
        );
    }

    #[test]
    fn position_zero_and_special_tokens_are_left_out() {
        let rule = RowRule::new([7, 3, 7]);
        assert_eq!(rule.excluded_tokens(), &[3, 7]);
        let w = [5, 1, 7, 2, 3];
        assert_eq!(rule.positions(&w).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rule.exclusion(&w, 0), Some(Exclusion::FirstPosition));
        assert_eq!(rule.exclusion(&w, 2), Some(Exclusion::SpecialToken));
        assert_eq!(rule.exclusion(&w, 1), None);
        assert!(!rule.keeps(&w, 9), "past the window");
        assert_eq!(rule.count(&[w.to_vec(), vec![7, 7]]), 2);
        assert_eq!(
            rule.flat_positions(&[w.to_vec(), w.to_vec()], 5),
            vec![1, 3, 6, 8]
        );
    }
}
