//! The graph file `glassbox trace` writes: close to circuit-tracer's JSON (metadata,
//! nodes, links) so its conventions carry over. Node ids: features `{layer}_{feature}_{pos}`
//! (Neuronpedia's form); the rest are listed at [`node_id`].

use crate::attribution::{Attribution, NodeKind};
use crate::prune::{PruneOptions, Pruned};
use serde::Serialize;

/// What a graph file's `metadata.format` says it is.
pub const GRAPH_FORMAT: &str = "glassbox attribution graph 1";

/// A graph file (`glassbox trace --out GRAPH.json`): the pruned graph with everything
/// needed to show it.
#[derive(Debug, Clone, Serialize)]
pub struct GraphJson {
    /// the prompt, the model, the set, the thresholds and the scores
    pub metadata: Metadata,
    /// the kept nodes, in graph order (features, errors, embeddings, logits)
    pub nodes: Vec<NodeJson>,
    /// the kept edges, by target then source
    pub links: Vec<LinkJson>,
}

/// The graph file's `metadata`.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// [`GRAPH_FORMAT`]
    pub format: &'static str,
    /// the prompt as given
    pub prompt: String,
    /// the display text of each prompt token
    pub prompt_tokens: Vec<String>,
    /// the prompt's token ids
    pub prompt_token_ids: Vec<u32>,
    /// the model as the caller named it
    pub model: String,
    /// the transcoder set's folder as the caller named it
    pub transcoders: String,
    /// the model's layers (logit nodes have this `layer`)
    pub n_layers: usize,
    /// the pruning's node threshold ([`PruneOptions::node_threshold`])
    pub node_threshold: f32,
    /// the pruning's edge threshold ([`PruneOptions::edge_threshold`])
    pub edge_threshold: f32,
    /// [`Pruned::replacement_score`]
    pub replacement_score: f32,
    /// [`Pruned::completeness_score`]
    pub completeness_score: f32,
    /// [`Pruned::kept_influence`]
    pub kept_influence: f32,
    /// [`Pruned::final_influence`]
    pub final_influence: f32,
    /// feature nodes of the unpruned graph
    pub unpruned_features: usize,
    /// nodes of the unpruned graph, all kinds
    pub unpruned_nodes: usize,
    /// non-zero edges of the unpruned graph
    pub unpruned_edges: usize,
    /// active features folded into error nodes (position 0, past the node budget)
    pub features_folded_into_errors: usize,
    /// wall time of the attribution alone ([`Attribution::seconds`])
    pub attribution_seconds: f64,
}

/// One kept node of the graph file; fields that do not apply to its kind are `null`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeJson {
    /// its id ([`node_id`]), what [`LinkJson`] refers to
    pub node_id: String,
    /// "transcoder" | "mlp reconstruction error" | "embedding" | "logit"
    pub feature_type: &'static str,
    /// the block index, or -1 for embeddings and `n_layers` for logits
    pub layer: i64,
    /// token position (the last one for logits)
    pub ctx_idx: usize,
    /// the latent index (features)
    pub feature: Option<usize>,
    /// the token id (embeddings and logits)
    pub token: Option<u32>,
    /// the token at `ctx_idx` (features, errors, embeddings) or the predicted token
    /// (logits)
    pub token_str: String,
    /// the feature's activation (features)
    pub activation: Option<f32>,
    /// ‖error‖ (errors)
    pub error_norm: Option<f32>,
    /// the token's probability on the clean pass (logits)
    pub token_prob: Option<f32>,
    /// the de-meaned logit (logits)
    pub logit: Option<f32>,
    /// influence on the logits in the unpruned graph ([`Pruned::influence`])
    pub influence: f32,
}

/// One kept edge of the graph file.
#[derive(Debug, Clone, Serialize)]
pub struct LinkJson {
    /// the source's `node_id`
    pub source: String,
    /// the target's `node_id`
    pub target: String,
    /// the direct effect of the source on the target ([`Attribution::edge`])
    pub weight: f32,
}

/// A node's id in the graph file: `{layer}_{feature}_{pos}` for features,
/// `ERR_{layer}_{pos}` for errors, `E_{token}_{pos}` for embeddings, `L_{token}_{pos}`
/// for logits (`pos` is then `last_pos`, the prompt's last position).
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

/// What the graph file records beyond the graph itself.
pub struct GraphContext<'a> {
    /// the prompt as given ([`Metadata::prompt`])
    pub prompt: &'a str,
    /// the model as the caller named it ([`Metadata::model`])
    pub model: &'a str,
    /// the transcoder set's folder ([`Metadata::transcoders`])
    pub transcoders: &'a str,
    /// the display text of a token id
    pub token_text: &'a dyn Fn(u32) -> String,
}

/// The pruned graph as JSON-ready data: the nodes `pruned.node_mask` keeps and the
/// edges of `pruned.edges`, with `opts` (the thresholds `pruned` was made with)
/// recorded in the metadata.
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
