//! The graph file `glassbox trace` writes: close to circuit-tracer's JSON (metadata,
//! nodes, links) so its conventions carry over. Node ids: features `{layer}_{feature}_{pos}`
//! (Neuronpedia's form); the rest are listed at `node_id`.

use crate::attribution::{Attribution, NodeKind};
use crate::prune::{PruneOptions, Pruned};
use serde::Serialize;

pub const GRAPH_FORMAT: &str = "glassbox attribution graph 1";

#[derive(Debug, Clone, Serialize)]
pub struct GraphJson {
    pub metadata: Metadata,
    pub nodes: Vec<NodeJson>,
    pub links: Vec<LinkJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub format: &'static str,
    pub prompt: String,
    pub prompt_tokens: Vec<String>,
    pub prompt_token_ids: Vec<u32>,
    pub model: String,
    pub transcoders: String,
    pub n_layers: usize,
    pub node_threshold: f32,
    pub edge_threshold: f32,
    pub replacement_score: f32,
    pub completeness_score: f32,
    pub kept_influence: f32,
    pub final_influence: f32,
    /// unpruned graph: nodes by kind, non-zero edges
    pub unpruned_features: usize,
    pub unpruned_nodes: usize,
    pub unpruned_edges: usize,
    pub features_folded_into_errors: usize,
    pub attribution_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeJson {
    pub node_id: String,
    /// "transcoder" | "mlp reconstruction error" | "embedding" | "logit"
    pub feature_type: &'static str,
    /// the block index, or -1 for embeddings and `n_layers` for logits
    pub layer: i64,
    pub ctx_idx: usize,
    pub feature: Option<usize>,
    pub token: Option<u32>,
    /// the token at `ctx_idx` (embeddings) or the predicted token (logits)
    pub token_str: String,
    pub activation: Option<f32>,
    pub error_norm: Option<f32>,
    pub token_prob: Option<f32>,
    pub logit: Option<f32>,
    pub influence: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkJson {
    pub source: String,
    pub target: String,
    pub weight: f32,
}

/// Node ids: `{layer}_{feature}_{pos}` for features, `ERR_{layer}_{pos}` for errors,
/// `E_{token}_{pos}` for embeddings, `L_{token}_{pos}` for logits.
pub fn node_id(kind: &NodeKind, last_pos: usize) -> String {
    match *kind {
        NodeKind::Feature {
            layer,
            position,
            feature,
            ..
        } => format!("{layer}_{feature}_{position}"),
        NodeKind::Error {
            layer, position, ..
        } => format!("ERR_{layer}_{position}"),
        NodeKind::Token { position, token } => format!("E_{token}_{position}"),
        NodeKind::Logit { token, .. } => format!("L_{token}_{last_pos}"),
    }
}

pub struct GraphContext<'a> {
    pub prompt: &'a str,
    pub model: &'a str,
    pub transcoders: &'a str,
    pub token_text: &'a dyn Fn(u32) -> String,
}

/// The pruned graph as JSON-ready data.
pub fn graph_json(
    g: &Attribution,
    pruned: &Pruned,
    opts: PruneOptions,
    ctx: &GraphContext,
) -> GraphJson {
    let last = g.seq_len - 1;
    let tokens: Vec<u32> = g
        .nodes
        .iter()
        .filter_map(|n| match n.kind {
            NodeKind::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if !pruned.node_mask[i] {
            continue;
        }
        let mut j = NodeJson {
            node_id: node_id(&node.kind, last),
            feature_type: "",
            layer: 0,
            ctx_idx: 0,
            feature: None,
            token: None,
            token_str: String::new(),
            activation: None,
            error_norm: None,
            token_prob: None,
            logit: None,
            influence: pruned.influence[i],
        };
        match node.kind {
            NodeKind::Feature {
                layer,
                position,
                feature,
                activation,
            } => {
                j.feature_type = "transcoder";
                j.layer = layer as i64;
                j.ctx_idx = position;
                j.feature = Some(feature);
                j.activation = Some(activation);
                j.token_str = (ctx.token_text)(tokens[position]);
            }
            NodeKind::Error {
                layer,
                position,
                norm,
            } => {
                j.feature_type = "mlp reconstruction error";
                j.layer = layer as i64;
                j.ctx_idx = position;
                j.error_norm = Some(norm);
                j.token_str = (ctx.token_text)(tokens[position]);
            }
            NodeKind::Token { position, token } => {
                j.feature_type = "embedding";
                j.layer = -1;
                j.ctx_idx = position;
                j.token = Some(token);
                j.token_str = (ctx.token_text)(token);
            }
            NodeKind::Logit {
                token,
                probability,
                value,
            } => {
                j.feature_type = "logit";
                j.layer = g.n_layers as i64;
                j.ctx_idx = last;
                j.token = Some(token);
                j.token_prob = Some(probability);
                j.logit = Some(value);
                j.token_str = (ctx.token_text)(token);
            }
        }
        nodes.push(j);
    }
    let links = pruned
        .edges
        .iter()
        .map(|&(t, s, w)| LinkJson {
            source: node_id(&g.nodes[s].kind, last),
            target: node_id(&g.nodes[t].kind, last),
            weight: w,
        })
        .collect();
    GraphJson {
        metadata: Metadata {
            format: GRAPH_FORMAT,
            prompt: ctx.prompt.to_string(),
            prompt_tokens: tokens.iter().map(|&t| (ctx.token_text)(t)).collect(),
            prompt_token_ids: tokens,
            model: ctx.model.to_string(),
            transcoders: ctx.transcoders.to_string(),
            n_layers: g.n_layers,
            node_threshold: opts.node_threshold,
            edge_threshold: opts.edge_threshold,
            replacement_score: pruned.replacement_score,
            completeness_score: pruned.completeness_score,
            kept_influence: pruned.kept_influence,
            final_influence: pruned.final_influence,
            unpruned_features: g.n_features,
            unpruned_nodes: g.n(),
            unpruned_edges: g.adjacency.iter().filter(|&&v| v != 0.0).count(),
            features_folded_into_errors: g.features_folded,
            attribution_seconds: g.seconds,
        },
        nodes,
        links,
    }
}
