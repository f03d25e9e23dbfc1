//! What a unit's top examples say about it: the tokens they fire on, a short label, how
//! concentrated they are on one token — and the features-vs-neurons comparison built
//! from those numbers.

use crate::accumulate::{UnitGroup, UnitState};

/// The token-level summary of one unit's top examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// (token id, count) over the top examples, most common first (ties: the token of
    /// the stronger example first)
    pub top_tokens: Vec<(u32, usize)>,
    /// share of the top examples whose token is the most common one (0 if it never
    /// fired)
    pub concentration: f64,
    /// number of distinct tokens among the top examples
    pub distinct: usize,
    /// number of top examples
    pub examples: usize,
}

/// Counts the activating tokens of a unit's top examples.
pub fn summarise(unit: &UnitState) -> Summary {
    let top = unit.top();
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for e in &top {
        match counts.iter_mut().find(|(t, _)| *t == e.token) {
            Some((_, c)) => *c += 1,
            None => counts.push((e.token, 1)),
        }
    }
    // stable: equal counts keep first-appearance (strength) order
    counts.sort_by_key(|&(_, c)| std::cmp::Reverse(c));
    let concentration = match counts.first() {
        Some(&(_, c)) => c as f64 / top.len() as f64,
        None => 0.0,
    };
    Summary {
        distinct: counts.len(),
        top_tokens: counts,
        concentration,
        examples: top.len(),
    }
}

/// A short label from the summary: the tokens that recur in at least a fifth of the
/// top examples (and at least twice; at most three, quoted), e.g.
/// `" Washington" / " president"`; `mixed: …` when none does; `(dead)` when the unit
/// never fired.
pub fn label(summary: &Summary, token_text: &mut dyn FnMut(u32) -> String) -> String {
    let mut quote = |t: u32| serde_json::to_string(&token_text(t)).unwrap_or_default();
    // a token names the unit when it recurs in at least a fifth of the top examples
    let needed = summary.examples.div_ceil(5).max(2);
    let recurring: Vec<String> = summary
        .top_tokens
        .iter()
        .filter(|(_, c)| *c >= needed)
        .take(3)
        .map(|&(t, _)| quote(t))
        .collect();
    if !recurring.is_empty() {
        recurring.join(" / ")
    } else if summary.top_tokens.is_empty() {
        "(dead)".to_string()
    } else {
        let first: Vec<String> = summary
            .top_tokens
            .iter()
            .take(2)
            .map(|&(t, _)| quote(t))
            .collect();
        format!("mixed: {}", first.join(" / "))
    }
}

/// The features-vs-neurons numbers (`comparison` table), per kind `k` of unit:
/// - `k_units`, `k_alive` (fired at least once), `k_dead_fraction`;
/// - `k_mean_concentration`, `k_mean_distinct_tokens`, `k_mean_density`: means over
///   the units that fired;
/// - the same two token measures over units with a full top-K only
///   (`k_full_topk_units`, `k_mean_concentration_full_topk`,
///   `k_mean_distinct_tokens_full_topk`), which removes the advantage of rare units
///   whose few examples cannot be diverse.
pub fn compare(groups: &[&UnitGroup], summaries: &[&[Summary]]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (g, sums) in groups.iter().zip(summaries) {
        let k = g.kind.as_str();
        let n = g.units.len();
        let alive: Vec<usize> = (0..n).filter(|&i| g.units[i].fired > 0).collect();
        let full: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| sums[i].examples >= g.opts.top_k.max(1))
            .collect();
        let mean = |ids: &[usize], f: &dyn Fn(usize) -> f64| {
            if ids.is_empty() {
                0.0
            } else {
                ids.iter().map(|&i| f(i)).sum::<f64>() / ids.len() as f64
            }
        };
        let tokens = g.tokens.max(1) as f64;
        out.push((format!("{k}_units"), n as f64));
        out.push((format!("{k}_alive"), alive.len() as f64));
        out.push((
            format!("{k}_dead_fraction"),
            if n == 0 {
                0.0
            } else {
                1.0 - alive.len() as f64 / n as f64
            },
        ));
        out.push((
            format!("{k}_mean_concentration"),
            mean(&alive, &|i| sums[i].concentration),
        ));
        out.push((
            format!("{k}_mean_distinct_tokens"),
            mean(&alive, &|i| sums[i].distinct as f64),
        ));
        out.push((
            format!("{k}_mean_density"),
            mean(&alive, &|i| g.units[i].fired as f64 / tokens),
        ));
        out.push((format!("{k}_full_topk_units"), full.len() as f64));
        out.push((
            format!("{k}_mean_concentration_full_topk"),
            mean(&full, &|i| sums[i].concentration),
        ));
        out.push((
            format!("{k}_mean_distinct_tokens_full_topk"),
            mean(&full, &|i| sums[i].distinct as f64),
        ));
    }
    out
}
