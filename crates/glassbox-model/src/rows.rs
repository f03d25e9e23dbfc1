//! Which token positions count: the one rule every stage applies — dictionary training,
//! evaluation (`eval-sae`, `metrics.json`, the transcoders' splice), the feature store and
//! the prompt view — so that their figures are about the same tokens.
//!
//! A position is left out when it is position 0 of its window (the attention sink: its
//! residual norm is ~100× an ordinary token's) or holds one of the model's special tokens
//! (BOS/EOS: `pack` puts a BOS between documents, and each is a sink of its own). Left-out
//! positions keep their true activations wherever a dictionary is spliced in.

use crate::loader::Model;

/// Why a position is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// position 0 of the window: the attention sink
    FirstPosition,
    /// a special token (BOS/EOS) of the model
    SpecialToken,
}

impl Exclusion {
    /// A short reason for users (the prompt view's hover text, reports).
    pub fn reason(self) -> &'static str {
        match self {
            Exclusion::FirstPosition => {
                "position 0: the attention sink, left out of every statistic"
            }
            Exclusion::SpecialToken => "a special token (BOS/EOS), left out of every statistic",
        }
    }
}

/// The token-selection rule. `RowRule::for_model` is what every command uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowRule {
    /// sorted, without repeats
    exclude_tokens: Vec<u32>,
}

impl RowRule {
    /// Position 0 and the given token ids are left out.
    pub fn new(exclude_tokens: impl IntoIterator<Item = u32>) -> Self {
        let mut exclude_tokens: Vec<u32> = exclude_tokens.into_iter().collect();
        exclude_tokens.sort_unstable();
        exclude_tokens.dedup();
        RowRule { exclude_tokens }
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
