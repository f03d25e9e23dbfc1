//! What one feature's explanation is made from, taken from the feature store: the
//! contexts the explainer sees, the held-out contexts the scorer sees (never the same
//! text), and the tokens the feature promotes and suppresses.
//!
//! The split is fixed, so a rerun shows the same contexts: of the top activations
//! (band -1) the explainer sees ranks 0, 2, 4, … and the scorer 1, 3, 5, …; of each
//! quantile band the explainer sees the first sample and the scorer the others. A held-out
//! context that overlaps a shown one in the same window is dropped, so the scorer never
//! reads text the explainer was shown.

use crate::context::Context;
use glassbox_features::store::{StoredExample, UnitDetail};

/// One feature's contexts and logit effects.
#[derive(Debug, Clone, PartialEq)]
pub struct Material {
    /// the feature's id
    pub feature: u32,
    /// what the explainer sees
    pub shown: Vec<Context>,
    /// held-out activating contexts by quantile: the bands from the lowest, then the
    /// held-out top activations
    pub held_out: Vec<Vec<Context>>,
    /// the tokens it makes more likely next, most first
    pub promoted: Vec<String>,
    /// the tokens it makes less likely next, most first
    pub suppressed: Vec<String>,
}

impl Material {
    /// Held-out activating contexts in all.
    pub fn held_out_count(&self) -> usize {
        self.held_out.iter().map(Vec::len).sum()
    }
}

fn context(e: &StoredExample) -> Context {
    Context::new(e.tokens.clone(), e.acts.iter().map(|&a| a as f32).collect())
}

fn span(e: &StoredExample) -> (u32, u32, u32) {
    (
        e.window,
        e.context_start,
        e.context_start + e.acts.len() as u32,
    )
}

fn overlaps(a: (u32, u32, u32), b: (u32, u32, u32)) -> bool {
    a.0 == b.0 && a.1 < b.2 && b.1 < a.2
}

/// Splits a feature's stored examples (`logit_tokens` promoted and suppressed tokens
/// kept) into what the explainer and the scorer see.
pub fn material(detail: &UnitDetail, logit_tokens: usize) -> Material {
    let mut shown = Vec::new();
    let mut held: Vec<(i64, &StoredExample)> = Vec::new();
    for e in &detail.examples {
        let explainer_sees = if e.band < 0 {
            e.rank % 2 == 0
        } else {
            e.rank == 0
        };
        if explainer_sees {
            shown.push(e);
        } else {
            held.push((e.band, e));
        }
    }
    let mut kept: Vec<(u32, u32, u32)> = Vec::new();
    let mut bands: Vec<i64> = held.iter().map(|(b, _)| *b).collect();
    bands.sort_unstable_by_key(|&b| if b < 0 { i64::MAX } else { b });
    bands.dedup();
    let mut held_out = Vec::new();
    for band in bands {
        let mut group = Vec::new();
        for (_, e) in held.iter().filter(|(b, _)| *b == band) {
            let s = span(e);
            let clash =
                shown.iter().any(|x| overlaps(span(x), s)) || kept.iter().any(|&k| overlaps(k, s));
            if !clash && e.act > 0.0 {
                kept.push(s);
                group.push(context(e));
            }
        }
        if !group.is_empty() {
            held_out.push(group);
        }
    }
    let tokens = |v: &[(String, f64)]| {
        v.iter()
            .take(logit_tokens)
            .map(|(t, _)| t.clone())
            .collect()
    };
    Material {
        feature: detail.unit.id,
        shown: shown.into_iter().map(context).collect(),
        held_out,
        promoted: tokens(&detail.promoted),
        suppressed: tokens(&detail.suppressed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glassbox_features::store::Unit;

    fn example(band: i64, rank: u32, window: u32, start: u32) -> StoredExample {
        StoredExample {
            band,
            rank,
            act: 1.0 + rank as f64,
            window,
            position: start + 1,
            context_start: start,
            tokens: vec![format!("w{window}"), format!(" p{start}"), " x".into()],
            acts: vec![0.0, 1.0 + rank as f64, 0.0],
        }
    }

    #[test]
    fn the_scorer_never_sees_what_the_explainer_saw() {
        let examples = vec![
            example(-1, 0, 0, 0),
            example(-1, 1, 1, 0),
            example(-1, 2, 2, 0),
            example(-1, 3, 2, 1), // overlaps rank 2's context: dropped
            example(0, 0, 3, 0),
            example(0, 1, 4, 0),
            example(0, 2, 4, 10),
            example(1, 0, 5, 0),
            example(1, 1, 1, 1), // overlaps held-out top rank 1: one of them goes
        ];
        let detail = UnitDetail {
            unit: Unit {
                kind: glassbox_features::UnitKind::Feature,
                id: 7,
                density: 0.1,
                max_act: 4.0,
                mean_act: 1.0,
                label: String::new(),
                top_tokens: Vec::new(),
                concentration: 0.0,
                log10_edges: Vec::new(),
                histogram: Vec::new(),
                explanation: None,
            },
            examples,
            promoted: vec![(" a".into(), 1.0), (" b".into(), 0.5)],
            suppressed: vec![(" z".into(), -1.0)],
            neighbours: Vec::new(),
            effects_available: true,
            explanations: Vec::new(),
            prev: None,
            next: None,
        };
        let m = material(&detail, 1);
        let shown: Vec<String> = m.shown.iter().map(|c| c.text()).collect();
        assert_eq!(shown, ["w0 p0 x", "w2 p0 x", "w3 p0 x", "w5 p0 x"]);
        let held: Vec<Vec<String>> = m
            .held_out
            .iter()
            .map(|g| g.iter().map(|c| c.text()).collect())
            .collect();
        // bands from the lowest, then the top activations; of two overlapping held-out
        // contexts the first kept wins (band 1's), so the top group is empty and gone
        assert_eq!(held, [vec!["w4 p0 x", "w4 p10 x"], vec!["w1 p1 x"]]);
        assert_eq!(m.held_out_count(), 3);
        assert_eq!(m.promoted, [" a"]);
        assert_eq!(m.suppressed, [" z"]);
    }
}
