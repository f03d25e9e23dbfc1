//! Pruning by cumulative influence on the logits, and the graph's scores — the
//! definitions circuit-tracer uses, so numbers compare.
//!
//! Influence: with `B` the adjacency's absolute values, each row (target) scaled to sum
//! 1, and `w` the logit nodes' probabilities, a node's influence is `(w·(B + B² + …))`,
//! its total share of the logits' inputs over all paths. The graph is a DAG (edges go
//! to later layers or to logits), so the series ends.

use crate::attribution::Attribution;
use crate::{bad, Result};
use serde::Serialize;

/// The pruning thresholds, shares of total influence in `[0, 1]`. `Default`: 0.8 of
/// node influence, 0.98 of edge influence (circuit-tracer's defaults).
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// keep the fewest nodes holding this share of total node influence
    pub node_threshold: f32,
    /// then the fewest edges holding this share of total edge influence
    pub edge_threshold: f32,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            node_threshold: 0.8,
            edge_threshold: 0.98,
        }
    }
}

/// What pruning kept, and the graph's scores.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// per node of the [`Attribution`]: kept (tokens and logits always are)
    pub node_mask: Vec<bool>,
    /// kept edges as (target, source, weight)
    #[serde(skip)]
    pub edges: Vec<(usize, usize, f32)>,
    /// influence of each node on the logits (unpruned graph)
    pub influence: Vec<f32>,
    /// share of total node influence held by the nodes the node threshold keeps
    /// (≥ node_threshold by construction)
    pub kept_influence: f32,
    /// the same share for the final graph, after nodes left without edges are dropped
    pub final_influence: f32,
    /// fraction of token→logit influence that flows through features, not errors
    pub replacement_score: f32,
    /// influence-weighted fraction of nodes' inputs that do not come from errors
    pub completeness_score: f32,
}

/// |A| with each row scaled to sum 1 (rows summing to 0 stay 0).
fn normalize_rows(a: &[f32], n: usize) -> Vec<f32> {
    let mut b: Vec<f32> = a.iter().map(|v| v.abs()).collect();
    for row in b.chunks_mut(n) {
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        if sum > 0.0 {
            let k = (1.0 / sum.max(1e-10)) as f32;
            row.iter_mut().for_each(|v| *v *= k);
        }
    }
    b
}

/// `w·B + w·B² + …` for a nilpotent `B` (a DAG's normalised adjacency).
fn influence(b: &[f32], n: usize, w: &[f32]) -> Result<Vec<f32>> {
    let mut total = vec![0f64; n];
    let mut cur: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    for _ in 0..=n {
        let mut next = vec![0f64; n];
        for (i, &x) in cur.iter().enumerate() {
            if x != 0.0 {
                for (o, &bij) in next.iter_mut().zip(&b[i * n..(i + 1) * n]) {
                    *o += x * bij as f64;
                }
            }
        }
        if next.iter().all(|&v| v == 0.0) {
            return Ok(total.into_iter().map(|v| v as f32).collect());
        }
        total.iter_mut().zip(&next).for_each(|(t, v)| *t += v);
        cur = next;
    }
    Err(bad("influence did not converge: the graph has a cycle"))
}

/// Each node's influence on the logits in the unpruned graph.
pub fn node_influence(g: &Attribution) -> Result<Vec<f32>> {
    influence(
        &normalize_rows(&g.adjacency, g.n()),
        g.n(),
        &g.logit_weights(),
    )
}

/// The smallest score such that the scores at or above it hold `threshold` of the total.
fn find_threshold(scores: &[f32], threshold: f32) -> f32 {
    let mut sorted: Vec<f32> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().map(|&v| v as f64).sum();
    if total <= 0.0 {
        return f32::INFINITY;
    }
    let mut cum = 0f64;
    for (i, &v) in sorted.iter().enumerate() {
        cum += v as f64;
        if cum / total >= threshold as f64 {
            return sorted[i];
        }
    }
    sorted[sorted.len() - 1]
}

/// Prunes `g` by cumulative influence (the module's definitions) and scores the
/// unpruned graph. Errors when a threshold is outside `[0, 1]`. Memory: a few `n²`
/// copies of the adjacency.
pub fn prune(g: &Attribution, opts: PruneOptions) -> Result<Pruned> {
    for (name, t) in [("node", opts.node_threshold), ("edge", opts.edge_threshold)] {
        if !(0.0..=1.0).contains(&t) {
            return Err(bad(format!(
                "the {name} threshold must be between 0 and 1, got {t}"
            )));
        }
    }
    let n = g.n();
    let w = g.logit_weights();
    let b = normalize_rows(&g.adjacency, n);
    let infl = influence(&b, n, &w)?;
    let first_token = g.token_index(0);
    let first_error = g.error_index(0, 0);

    // scores on the unpruned graph
    let token_infl: f64 = infl[first_token..g.logit_index(0)]
        .iter()
        .map(|&v| v as f64)
        .sum();
    let error_infl: f64 = infl[first_error..first_token]
        .iter()
        .map(|&v| v as f64)
        .sum();
    let replacement_score = (token_infl / (token_infl + error_infl).max(1e-30)) as f32;
    let (mut num, mut den) = (0f64, 0f64);
    for t in 0..n {
        let from_errors: f64 = b[t * n + first_error..t * n + first_token]
            .iter()
            .map(|&v| v as f64)
            .sum();
        let out = infl[t] as f64 + w[t] as f64;
        num += (1.0 - from_errors) * out;
        den += out;
    }
    let completeness_score = (num / den.max(1e-30)) as f32;
    drop(b); // n² floats: the pruned copies below need the room

    // nodes: the most influential ones holding node_threshold; tokens and logits stay
    let cut = find_threshold(&infl[..first_token], opts.node_threshold);
    let mut keep: Vec<bool> = (0..n).map(|i| i >= first_token || infl[i] >= cut).collect();
    let total: f64 = infl[..first_token].iter().map(|&v| v as f64).sum();
    let kept: f64 = (0..first_token)
        .filter(|&i| keep[i])
        .map(|i| infl[i] as f64)
        .sum();
    let kept_influence = if total > 0.0 {
        (kept / total) as f32
    } else {
        1.0
    };

    // edges among kept nodes, scored by their share of the pruned graph's influence
    let mut pruned = g.adjacency.clone();
    for t in 0..n {
        for s in 0..n {
            if !keep[t] || !keep[s] {
                pruned[t * n + s] = 0.0;
            }
        }
    }
    let pb = normalize_rows(&pruned, n);
    drop(pruned);
    let mut pinfl = influence(&pb, n, &w)?;
    pinfl.iter_mut().zip(&w).for_each(|(p, &wv)| *p += wv);
    let mut scores = pb;
    for t in 0..n {
        scores[t * n..(t + 1) * n]
            .iter_mut()
            .for_each(|v| *v *= pinfl[t]);
    }
    let ecut = find_threshold(&scores, opts.edge_threshold);
    let mut edge_keep: Vec<bool> = scores.iter().map(|&v| v > 0.0 && v >= ecut).collect();
    drop(scores);
    // drop feature/error nodes left without outgoing edges, features without incoming
    // ones, until nothing changes
    loop {
        let mut changed = false;
        for i in 0..first_token {
            if !keep[i] {
                continue;
            }
            let has_out = (0..n).any(|t| edge_keep[t * n + i]);
            let has_in = i >= g.n_features || edge_keep[i * n..(i + 1) * n].iter().any(|&e| e);
            if !has_out || !has_in {
                keep[i] = false;
                changed = true;
                for t in 0..n {
                    edge_keep[t * n + i] = false;
                }
                edge_keep[i * n..(i + 1) * n]
                    .iter_mut()
                    .for_each(|e| *e = false);
            }
        }
        if !changed {
            break;
        }
    }
    let kept_final: f64 = (0..first_token)
        .filter(|&i| keep[i])
        .map(|i| infl[i] as f64)
        .sum();
    let final_influence = if total > 0.0 {
        (kept_final / total) as f32
    } else {
        1.0
    };
    let mut edges = Vec::new();
    for t in 0..n {
        for s in 0..n {
            if edge_keep[t * n + s] {
                edges.push((t, s, g.adjacency[t * n + s]));
            }
        }
    }
    Ok(Pruned {
        node_mask: keep,
        edges,
        influence: infl,
        kept_influence,
        final_influence,
        replacement_score,
        completeness_score,
    })
}
