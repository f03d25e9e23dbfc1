//! Attribution: the graph's nodes and the direct effect of every source node on every
//! target node, through the frozen linear paths of the local replacement model.
//!
//! A feature (layer L, position p) writes `activation · W_dec[f]` into the residual
//! stream after block L; an error node writes its error vector there; a token node is
//! the embedding entering block 0. A feature target reads its pre-activation
//! `W_enc[:, f] · ln2(resid_mid[L, p])`; a logit target reads the de-meaned logit
//! `(W_U[t] − mean_v W_U[v]) · ln_final(resid[last])`. With attention patterns and norm
//! scales frozen and MLPs contributing only through their nodes (or a transcoder's
//! linear skip), target values are linear in source outputs: the edge weight is the
//! source's output dotted with the gradient of the target at the source's write point.
//! Gradients are computed by hand, for a batch of targets at once, layer by layer down
//! the residual stream: each target joins the batch at the layer where it reads.

use crate::intervene::top_probs;
use crate::replacement::norm_backward;
use crate::replacement::{check_supported, ReplacementState};
use crate::set::TranscoderSet;
use crate::{bad, Result};
use candle_core::{Device, Tensor, D};
use glassbox_model::Transformer;
use serde::Serialize;
use std::time::Instant;

/// How the graph is built. `Default`: 8192 feature nodes, logits up to 95 % of the
/// probability but at most 10, batches of 256 targets.
#[derive(Debug, Clone)]
pub struct AttributionOptions {
    /// graph nodes for at most this many active features (the rest fold into errors)
    pub max_feature_nodes: usize,
    /// logit targets: the most probable tokens until this much probability is covered…
    pub logit_probability: f32,
    /// …but at most this many
    pub max_logits: usize,
    /// explicit logit targets instead (token ids; empty: chosen by probability as above)
    pub targets: Vec<u32>,
    /// targets per batched backward pass (memory `batch × seq × d_model` floats)
    pub batch: usize,
}

impl Default for AttributionOptions {
    fn default() -> Self {
        AttributionOptions {
            max_feature_nodes: 8192,
            logit_probability: 0.95,
            max_logits: 10,
            targets: Vec::new(),
            batch: 256,
        }
    }
}

/// What a graph node is (serialised with a `type` tag: `feature`, `error`, `token`,
/// `logit`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeKind {
    /// an active transcoder latent: writes `activation · W_dec[feature]` into the
    /// residual stream after block `layer`, reads its pre-activation through `ln2`
    Feature {
        /// the block whose transcoder it belongs to
        layer: usize,
        /// token position in the prompt
        position: usize,
        /// latent index in that transcoder, `0..d_sae`
        feature: usize,
        /// its activation on the prompt
        activation: f32,
    },
    /// what the transcoder misses at (layer, position), the folded features included
    /// ([`ReplacementState::errors`]); `norm` is ‖error‖ (L2)
    Error {
        /// the block whose MLP output it corrects
        layer: usize,
        /// token position in the prompt
        position: usize,
        /// L2 norm of the error vector
        norm: f32,
    },
    /// the token embedding at `position` (`blocks.0.hook_resid_pre`)
    Token {
        /// token position in the prompt
        position: usize,
        /// the token id
        token: u32,
    },
    /// a logit target at the last position; `value`: the de-meaned logit the edges
    /// explain
    Logit {
        /// the predicted token id
        token: u32,
        /// its probability on the clean pass (the weight of its influence)
        probability: f32,
        /// `logit[token] − mean_v logit[v]`
        value: f32,
    },
}

/// A graph node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// what it is, and where
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// The unpruned graph. Nodes are ordered features, errors (layer-major), tokens,
/// logits; `adjacency[target · n + source]` is the direct effect of `source` on
/// `target` (rows are targets, as in circuit-tracer).
pub struct Attribution {
    /// every node, in the order above
    pub nodes: Vec<Node>,
    /// feature nodes (the first `n_features` of `nodes`)
    pub n_features: usize,
    /// the model's layers (`n_layers × seq_len` error nodes follow the features)
    pub n_layers: usize,
    /// prompt tokens (one token node each)
    pub seq_len: usize,
    /// logit nodes (the last `n_logits` of `nodes`)
    pub n_logits: usize,
    /// `[n, n]` row-major, target by source; zero where there is no direct path
    pub adjacency: Vec<f32>,
    /// active features folded into error nodes (position 0, or past the cap)
    pub features_folded: usize,
    /// wall time of [`attribute`]
    pub seconds: f64,
}

impl Attribution {
    /// Number of nodes.
    pub fn n(&self) -> usize {
        self.nodes.len()
    }
    /// Node index of the error node at (`layer`, `position`).
    pub fn error_index(&self, layer: usize, position: usize) -> usize {
        self.n_features + layer * self.seq_len + position
    }
    /// Node index of the token node at `position`.
    pub fn token_index(&self, position: usize) -> usize {
        self.n_features + self.n_layers * self.seq_len + position
    }
    /// Node index of the `i`-th logit node (`0..n_logits`).
    pub fn logit_index(&self, i: usize) -> usize {
        self.token_index(self.seq_len) + i
    }
    /// The direct effect of node `source` on node `target` (`adjacency[target · n + source]`).
    pub fn edge(&self, target: usize, source: usize) -> f32 {
        self.adjacency[target * self.n() + source]
    }
    /// Probabilities of the logit nodes, zero elsewhere (the weights of influence).
    pub fn logit_weights(&self) -> Vec<f32> {
        self.nodes
            .iter()
            .map(|n| match n.kind {
                NodeKind::Logit { probability, .. } => probability,
                _ => 0.0,
            })
            .collect()
    }
}

/// The output vectors `[n, d_model]` of the feature nodes at one (layer, position), and
/// their node indices.
type SourceWrites = (Tensor, Vec<usize>);

/// Where a target reads: a feature's pre-activation at (layer, position), or a logit at
/// the last position (after every layer).
struct Target {
    node: usize,
    layer: usize,
    position: usize,
    /// the read direction in the residual stream at the read point, `[d_model]`
    direction: Vec<f32>,
}

/// Builds the graph for the prompt of `state`: its nodes, and every edge by batched
/// hand-written backward passes. Errors: an unsupported architecture (parallel
/// attention and MLP, no pre-norms) or a target token outside the vocabulary
/// ([`crate::CircuitError::BadInput`]). Memory: `n²` floats for the adjacency.
pub fn attribute(
    model: &Transformer,
    set: &TranscoderSet,
    state: &ReplacementState,
    opts: &AttributionOptions,
) -> Result<Attribution> {
    check_supported(model)?;
    let started = Instant::now();
    let cfg = &model.config;
    let (n_layers, s, d) = (cfg.n_layers, state.seq_len(), cfg.d_model);
    let w = &model.weights;

    // logit targets
    let logits = &state.last_logits;
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&x| ((x - m) as f64).exp()).sum();
    let probs: Vec<f32> = logits
        .iter()
        .map(|&x| (((x - m) as f64).exp() / z) as f32)
        .collect();
    let chosen: Vec<u32> = if opts.targets.is_empty() {
        let mut out = Vec::new();
        let mut covered = 0f32;
        for t in top_probs(logits, &probs, opts.max_logits.max(1)) {
            out.push(t.token);
            covered += t.prob;
            if covered >= opts.logit_probability {
                break;
            }
        }
        out
    } else {
        for &t in &opts.targets {
            if t as usize >= cfg.d_vocab {
                return Err(bad(format!(
                    "target token id {t} is outside the vocabulary (0..{})",
                    cfg.d_vocab
                )));
            }
        }
        opts.targets.clone()
    };

    // nodes
    let mut nodes: Vec<Node> = state
        .features
        .iter()
        .map(|f| Node {
            kind: NodeKind::Feature {
                layer: f.layer,
                position: f.position,
                feature: f.feature,
                activation: f.activation,
            },
        })
        .collect();
    let n_features = nodes.len();
    for (l, e) in state.errors.iter().enumerate() {
        let norms: Vec<f32> = e.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1()?;
        for (p, &norm) in norms.iter().enumerate() {
            nodes.push(Node {
                kind: NodeKind::Error {
                    layer: l,
                    position: p,
                    norm,
                },
            });
        }
    }
    for (p, &token) in state.tokens.iter().enumerate() {
        nodes.push(Node {
            kind: NodeKind::Token { position: p, token },
        });
    }
    let unembed = w.unembed_f32()?;
    let unembed_mean = unembed.mean(0)?;
    let lnf_scale = state.scale("ln_final")?;
    let mut targets = Vec::new();
    for &t in &chosen {
        let node = nodes.len();
        let dir = (unembed.get(t as usize)? - &unembed_mean)?;
        let value = logits[t as usize]
            - logits.iter().map(|&x| x as f64).sum::<f64>() as f32 / logits.len() as f32;
        nodes.push(Node {
            kind: NodeKind::Logit {
                token: t,
                probability: probs[t as usize],
                value,
            },
        });
        let g = norm_backward(
            &dir.reshape((1, 1, d))?,
            &w.ln_final.weight,
            &lnf_scale.narrow(0, s - 1, 1)?,
            cfg.norm,
        )?;
        targets.push(Target {
            node,
            layer: n_layers,
            position: s - 1,
            direction: g.flatten_all()?.to_vec1()?,
        });
    }
    let n = nodes.len();

    // feature targets: encoder columns through the frozen ln2
    let mut enc_t: Vec<Option<Tensor>> = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        enc_t.push(match &set.by_layer[l] {
            Some(dict) => Some(dict.w_enc.t()?.contiguous()?),
            None => None,
        });
    }
    for (i, f) in state.features.iter().enumerate() {
        let col = enc_t[f.layer]
            .as_ref()
            .ok_or_else(|| bad("internal: feature of a layer without transcoder"))?
            .get(f.feature)?;
        let scale = state.scale(&format!("blocks.{}.ln2", f.layer))?;
        let g = norm_backward(
            &col.reshape((1, 1, d))?,
            &pre_norm(&w.blocks[f.layer].get()?.ln2)?.weight,
            &scale.narrow(0, f.position, 1)?,
            cfg.norm,
        )?;
        targets.push(Target {
            node: i,
            layer: f.layer,
            position: f.position,
            direction: g.flatten_all()?.to_vec1()?,
        });
    }
    // deepest read point first: each batch starts its backward pass at its first target
    targets.sort_by(|a, b| b.layer.cmp(&a.layer).then(a.node.cmp(&b.node)));

    // source write vectors per (layer, position): features' a·W_dec rows and node ids
    let mut writes: Vec<Vec<Option<SourceWrites>>> = vec![vec![None; s]; n_layers];
    {
        let mut i = 0;
        while i < n_features {
            let f0 = state.features[i];
            let mut j = i;
            let mut rows = Vec::new();
            while j < n_features
                && state.features[j].layer == f0.layer
                && state.features[j].position == f0.position
            {
                rows.push(state.features[j]);
                j += 1;
            }
            let dict = set.get(f0.layer)?;
            let mut data = Vec::with_capacity(rows.len() * d);
            for r in &rows {
                let row: Vec<f32> = dict.w_dec.get(r.feature)?.to_vec1()?;
                data.extend(row.iter().map(|v| v * r.activation));
            }
            writes[f0.layer][f0.position] = Some((
                Tensor::from_vec(data, (rows.len(), d), &Device::Cpu)?,
                (i..j).collect(),
            ));
            i = j;
        }
    }
    let embed = state.get("blocks.0.hook_resid_pre")?.clone();

    let mut adjacency = vec![0f32; n * n];
    let err_base = n_features;
    let tok_base = n_features + n_layers * s;
    for batch in targets.chunks(opts.batch.max(1)) {
        let nb = batch.len();
        let top = batch[0].layer; // deepest read point in this batch
        let mut g = Tensor::zeros((nb, s, d), candle_core::DType::F32, &Device::Cpu)?;
        let inject = |g: &Tensor, layer: usize| -> Result<Option<Tensor>> {
            if !batch.iter().any(|t| t.layer == layer) {
                return Ok(None);
            }
            let mut data = vec![0f32; nb * s * d];
            for (row, t) in batch.iter().enumerate() {
                if t.layer == layer {
                    let at = (row * s + t.position) * d;
                    data[at..at + d].copy_from_slice(&t.direction);
                }
            }
            Ok(Some(
                (g + Tensor::from_vec(data, (nb, s, d), &Device::Cpu)?)?,
            ))
        };
        if let Some(next) = inject(&g, n_layers)? {
            g = next;
        }
        let mut record = |rows: &Tensor, cols: &[usize]| -> Result<()> {
            // rows: [nb, cols.len()]
            let vals: Vec<Vec<f32>> = rows.to_vec2()?;
            for (r, t) in batch.iter().enumerate() {
                let base = t.node * n;
                for (c, &src) in cols.iter().enumerate() {
                    adjacency[base + src] = vals[r][c];
                }
            }
            Ok(())
        };
        for l in (0..n_layers.min(top + 1)).rev() {
            // g: gradient at the residual stream after block l (where layer-l sources write)
            if l < top || top == n_layers {
                for (p, w) in writes[l].iter().enumerate() {
                    if let Some((rows, ids)) = w {
                        let gp = g.narrow(1, p, 1)?.squeeze(1)?; // [nb, d]
                        record(&gp.matmul(&rows.t()?)?, ids)?;
                    }
                }
                let errs = g
                    .broadcast_mul(&state.errors[l].unsqueeze(0)?)?
                    .sum(D::Minus1)?; // [nb, s]
                let cols: Vec<usize> = (0..s).map(|p| err_base + l * s + p).collect();
                record(&errs, &cols)?;
            }
            let blk = w.blocks[l].get()?;
            // a transcoder's linear skip is a direct path through the MLP
            if let Some(ws) = set.by_layer[l]
                .as_ref()
                .and_then(|dict| dict.w_skip.as_ref())
            {
                let ln2_scale = state.scale(&format!("blocks.{l}.ln2"))?;
                let dx = g.reshape((nb * s, d))?.matmul(ws)?.reshape((nb, s, d))?;
                g = (&g + norm_backward(&dx, &pre_norm(&blk.ln2)?.weight, &ln2_scale, cfg.norm)?)?;
            }
            if let Some(next) = inject(&g, l)? {
                g = next;
            }
            g = (&g + attention_backward(model, state, l, &g)?)?;
        }
        let toks = g.broadcast_mul(&embed.unsqueeze(0)?)?.sum(D::Minus1)?;
        let cols: Vec<usize> = (0..s).map(|p| tok_base + p).collect();
        record(&toks, &cols)?;
    }
    Ok(Attribution {
        nodes,
        n_features,
        n_layers,
        seq_len: s,
        n_logits: chosen.len(),
        adjacency,
        features_folded: state.features_folded,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The tracer differentiates through the pre-norms; OLMo 2 has none (refused at load).
fn pre_norm(n: &Option<glassbox_model::weights::Norm>) -> Result<&glassbox_model::weights::Norm> {
    n.as_ref()
        .ok_or_else(|| bad("circuit tracing needs pre-norms before attention and MLP"))
}

/// Gradient at the block's input residual from `g` at its attention output's residual
/// (`resid_mid`), with the pattern and ln1 (and ln1_post) scales frozen: only the value
/// path carries it.
fn attention_backward(
    model: &Transformer,
    state: &ReplacementState,
    l: usize,
    g: &Tensor,
) -> Result<Tensor> {
    let c = &model.config;
    let blk = model.weights.blocks[l].get()?;
    let (nb, s, d) = g.dims3()?;
    let (h, kvh, dh) = (c.n_heads, c.n_kv_heads, c.d_head);
    let g = match &blk.ln1_post {
        Some(post) => norm_backward(
            g,
            &post.weight,
            &state.scale(&format!("blocks.{l}.ln1_post"))?,
            c.norm,
        )?,
        None => g.clone(),
    };
    // dz = g · W_O, laid out per head with the targets folded into columns
    let dz = g
        .reshape((nb * s, d))?
        .matmul(&blk.o.weight)?
        .reshape((nb, s, h, dh))?
        .permute((2, 1, 0, 3))?
        .contiguous()?
        .reshape((h, s, nb * dh))?;
    let pattern = state.get(&format!("blocks.{l}.attn.hook_pattern"))?; // [h, q, k]
    let dv = pattern.transpose(1, 2)?.contiguous()?.matmul(&dz)?; // [h, k, nb·dh]
    let dv = dv.reshape((kvh, h / kvh, s, nb * dh))?.sum(1)?; // query heads share a KV head
    let dv = dv
        .reshape((kvh, s, nb, dh))?
        .permute((2, 1, 0, 3))?
        .contiguous()?
        .reshape((nb * s, kvh * dh))?;
    let dx = dv.matmul(&blk.v()?.weight)?.reshape((nb, s, d))?;
    norm_backward(
        &dx,
        &pre_norm(&blk.ln1)?.weight,
        &state.scale(&format!("blocks.{l}.ln1"))?,
        c.norm,
    )
}
