//! Architecture-neutral weight layout and the HF safetensors loader. Every loader
//! produces `ModelWeights` in HF orientation (`[out, in]` for linear maps) so the
//! forward pass has a single shape convention.

use crate::config::{Architecture, ModelConfig, QkNorm};
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Norm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// One block's weights as a loader reads them, before fusion.
pub struct BlockParts {
    /// `None` where the architecture has no pre-norms (OLMo 2)
    pub ln1: Option<Norm>,
    pub ln2: Option<Norm>,
    pub ln1_post: Option<Norm>,
    pub ln2_post: Option<Norm>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    /// RMSNorm weights on queries and keys (`[d_head]` per head, or all heads' width)
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub o: Linear,
    /// up projection (gated) or the input projection (gpt2/neox)
    pub mlp_in: Linear,
    pub mlp_gate: Option<Linear>,
    pub mlp_out: Linear,
}

/// One block's weights as the forward pass uses them: Q, K and V stacked into one
/// matrix, and gate and up stacked into one, so each is a single GEMM. The separate
/// matrices are views into that storage (held once).
#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// `None` where the architecture has no pre-norms (OLMo 2)
    pub ln1: Option<Norm>,
    pub ln2: Option<Norm>,
    pub ln1_post: Option<Norm>,
    pub ln2_post: Option<Norm>,
    /// `[q; k; v]`: `[(n_heads + 2 n_kv_heads) d_head, d_model]`
    pub qkv: Linear,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub o: Linear,
    /// gated: `[gate; up]` `[2 d_mlp, d_model]`; plain: the input projection `[d_mlp, d_model]`
    pub mlp_in: Linear,
    pub gated: bool,
    pub mlp_out: Linear,
    q_rows: usize,
    kv_rows: usize,
}

fn stack(parts: &[&Linear]) -> Result<Linear> {
    let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0)?;
    let bias = if parts.iter().all(|l| l.bias.is_some()) {
        Some(Tensor::cat(
            &parts
                .iter()
                .map(|l| l.bias.as_ref().expect("checked"))
                .collect::<Vec<_>>(),
            0,
        )?)
    } else if parts.iter().any(|l| l.bias.is_some()) {
        // Mixed: give the bias-free parts zero biases so the stack stays exact.
        let biases: Vec<Tensor> = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight.dim(0)?, l.weight.dtype(), l.weight.device()),
            })
            .collect::<candle_core::Result<_>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

fn rows(l: &Linear, start: usize, len: usize) -> Result<Linear> {
    Ok(Linear {
        weight: l.weight.narrow(0, start, len)?,
        bias: match &l.bias {
            Some(b) => Some(b.narrow(0, start, len)?),
            None => None,
        },
    })
}

impl BlockWeights {
    pub fn fuse(p: BlockParts) -> Result<Self> {
        let q_rows = p.q.weight.dim(0)?;
        let kv_rows = p.k.weight.dim(0)?;
        let qkv = stack(&[&p.q, &p.k, &p.v])?;
        let (mlp_in, gated) = match &p.mlp_gate {
            Some(gate) => (stack(&[gate, &p.mlp_in])?, true),
            None => (p.mlp_in, false),
        };
        Ok(BlockWeights {
            ln1: p.ln1,
            ln2: p.ln2,
            ln1_post: p.ln1_post,
            ln2_post: p.ln2_post,
            qkv,
            q_norm: p.q_norm,
            k_norm: p.k_norm,
            o: p.o,
            mlp_in,
            gated,
            mlp_out: p.mlp_out,
            q_rows,
            kv_rows,
        })
    }
    /// `W_Q` as `[n_heads d_head, d_model]` (a view)
    pub fn q(&self) -> Result<Linear> {
        rows(&self.qkv, 0, self.q_rows)
    }
    pub fn k(&self) -> Result<Linear> {
        rows(&self.qkv, self.q_rows, self.kv_rows)
    }
    pub fn v(&self) -> Result<Linear> {
        rows(&self.qkv, self.q_rows + self.kv_rows, self.kv_rows)
    }
    /// The gate projection of a gated MLP (a view)
    pub fn gate(&self) -> Result<Option<Linear>> {
        if !self.gated {
            return Ok(None);
        }
        let m = self.mlp_in.weight.dim(0)? / 2;
        rows(&self.mlp_in, 0, m).map(Some)
    }
    /// The up projection (gated) or input projection (plain) (a view)
    pub fn up(&self) -> Result<Linear> {
        if !self.gated {
            return Ok(self.mlp_in.clone());
        }
        let m = self.mlp_in.weight.dim(0)? / 2;
        rows(&self.mlp_in, m, m)
    }
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `[vocab, d_model]`
    pub embed: Tensor,
    /// `[n_ctx, d_model]` learned positions (gpt2)
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: Norm,
    /// `[vocab, d_model]`; shares storage with `embed` when tied
    pub unembed: Tensor,
}

/// Named f32 tensors from any checkpoint, with shape checks that name the culprit.
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
    prefixes: &'static [&'static str],
}

impl TensorMap {
    pub fn new(tensors: HashMap<String, Tensor>, prefixes: &'static [&'static str]) -> Self {
        TensorMap { tensors, prefixes }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn resolve(&self, name: &str) -> Option<String> {
        std::iter::once(String::new())
            .chain(self.prefixes.iter().map(|p| p.to_string()))
            .map(|p| format!("{p}{name}"))
            .find(|n| self.tensors.contains_key(n))
    }

    /// Removes and returns the tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let key = self
            .resolve(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let t = self.tensors.remove(&key).expect("resolved key exists");
        check_shape(&key, &t, shape)?;
        Ok(if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        })
    }

    /// Every weight must have been read: a tensor left over means the config describes
    /// another computation than the checkpoint holds (a bias, a norm), never to be ignored.
    pub fn finish(self) -> Result<()> {
        // Buffers some exporters save that are recomputed from the config.
        const DERIVED: &[&str] = &[
            ".rotary_emb.inv_freq",
            ".attn.bias",
            ".attn.masked_bias",
            ".attention.bias",
            ".attention.masked_bias",
        ];
        // Other towers of multimodal checkpoints.
        const OTHER_MODELS: &[&str] = &[
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ];
        let mut left: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !DERIVED.iter().any(|d| k.ends_with(d)))
            .filter(|k| !OTHER_MODELS.iter().any(|p| k.starts_with(p)))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        let shown: Vec<&str> = left.iter().take(5).map(|s| s.as_str()).collect();
        Err(ModelError::BadInput(format!(
            "the checkpoint holds {} tensor(s) the config does not use ({}{}): the config.json does not describe these weights (a bias or norm the config leaves out?)",
            left.len(),
            shown.join(", "),
            if left.len() > 5 { ", …" } else { "" }
        )))
    }

    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

pub fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dims() != shape {
        return Err(ModelError::ShapeMismatch {
            tensor: name.to_string(),
            expected: shape.to_vec(),
            actual: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Safetensors files of a HF directory: one `model.safetensors` or the shards an index lists.
fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::bad_file(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::bad_file(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::bad_file(&index, "has no `weight_map` object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(ModelError::bad_file(
        dir,
        "no model.safetensors or model.safetensors.index.json (glassbox reads safetensors checkpoints; convert .bin files with HF `save_pretrained(safe_serialization=True)`)",
    ))
}

pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::bad_file(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        ModelError::bad_file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })
}

const HF_PREFIXES: &[&str] = &[
    "model.",
    "transformer.",
    "gpt_neox.",
    // multimodal Gemma 3: transformers 4 and 5 name its text model differently
    "language_model.model.",
    "language_model.",
    "model.language_model.",
];

pub fn load_hf_weights(dir: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    let mut tensors = HashMap::new();
    for file in safetensor_files(dir)? {
        tensors.extend(read_safetensors(&file)?);
    }
    let mut map = TensorMap::new(tensors, HF_PREFIXES);
    let weights = match cfg.architecture {
        Architecture::Gpt2 => gpt2_weights(&mut map, cfg)?,
        Architecture::GptNeox => neox_weights(&mut map, cfg)?,
        _ => llama_family_weights(&mut map, cfg)?,
    };
    map.finish()?;
    Ok(weights)
}

fn linear(map: &mut TensorMap, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let weight = map.take(&format!("{name}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(map.take(&format!("{name}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

fn norm(map: &mut TensorMap, name: &str, d: usize, bias: bool) -> Result<Norm> {
    norm_offset(map, name, d, bias, 0.0)
}

/// Gemma stores norm weights as offsets from one; fold the `1 +` in once at load.
fn norm_offset(map: &mut TensorMap, name: &str, d: usize, bias: bool, offset: f64) -> Result<Norm> {
    let mut weight = map.take(&format!("{name}.weight"), &[d])?;
    if offset != 0.0 {
        weight = (weight + offset)?;
    }
    let bias = if bias {
        Some(map.take(&format!("{name}.bias"), &[d])?)
    } else {
        None
    };
    Ok(Norm { weight, bias })
}

fn llama_family_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<ModelWeights> {
    let (d, hq, hkv, m) = (
        c.d_model,
        c.n_heads * c.d_head,
        c.n_kv_heads * c.d_head,
        c.d_mlp,
    );
    let arch = c.architecture;
    let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
    // Gemma stores norm weights as offsets from one.
    let off = if gemma { 1.0 } else { 0.0 };
    let norm = |map: &mut TensorMap, name: &str, d: usize| norm_offset(map, name, d, false, off);
    let mut blocks = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("layers.{l}");
        let (ln1, ln2, ln1_post, ln2_post) = match arch {
            _ if gemma => (
                Some(norm(map, &format!("{p}.input_layernorm"), d)?),
                Some(norm(map, &format!("{p}.pre_feedforward_layernorm"), d)?),
                Some(norm(map, &format!("{p}.post_attention_layernorm"), d)?),
                Some(norm(map, &format!("{p}.post_feedforward_layernorm"), d)?),
            ),
            // OLMo 2 normalises the sublayer outputs, not their inputs.
            Architecture::Olmo2 => (
                None,
                None,
                Some(norm(map, &format!("{p}.post_attention_layernorm"), d)?),
                Some(norm(map, &format!("{p}.post_feedforward_layernorm"), d)?),
            ),
            _ => (
                Some(norm(map, &format!("{p}.input_layernorm"), d)?),
                Some(norm(map, &format!("{p}.post_attention_layernorm"), d)?),
                None,
                None,
            ),
        };
        let attn = format!("{p}.self_attn");
        let (q, k, v) = if arch == Architecture::Phi3 {
            // Phi-3 stores [q; k; v] as one matrix.
            let qkv = linear(map, &format!("{attn}.qkv_proj"), hq + 2 * hkv, d, false)?;
            (
                rows(&qkv, 0, hq)?,
                rows(&qkv, hq, hkv)?,
                rows(&qkv, hq + hkv, hkv)?,
            )
        } else {
            let b = c.qkv_bias;
            (
                linear(map, &format!("{attn}.q_proj"), hq, d, b)?,
                linear(map, &format!("{attn}.k_proj"), hkv, d, b)?,
                linear(map, &format!("{attn}.v_proj"), hkv, d, b)?,
            )
        };
        let (q_norm, k_norm) = match c.qk_norm {
            None => (None, None),
            Some(QkNorm::PerHead) => (
                Some(norm(map, &format!("{attn}.q_norm"), c.d_head)?),
                Some(norm(map, &format!("{attn}.k_norm"), c.d_head)?),
            ),
            Some(QkNorm::AllHeads) => (
                Some(norm(map, &format!("{attn}.q_norm"), hq)?),
                Some(norm(map, &format!("{attn}.k_norm"), hkv)?),
            ),
        };
        let (mlp_in, mlp_gate) = if arch == Architecture::Phi3 {
            // Phi-3 stores [gate; up] as one matrix.
            let gate_up = linear(map, &format!("{p}.mlp.gate_up_proj"), 2 * m, d, false)?;
            (rows(&gate_up, m, m)?, rows(&gate_up, 0, m)?)
        } else {
            (
                linear(map, &format!("{p}.mlp.up_proj"), m, d, c.mlp_bias)?,
                linear(map, &format!("{p}.mlp.gate_proj"), m, d, c.mlp_bias)?,
            )
        };
        blocks.push(BlockWeights::fuse(BlockParts {
            ln1,
            ln2,
            ln1_post,
            ln2_post,
            q,
            k,
            v,
            q_norm,
            k_norm,
            o: linear(map, &format!("{attn}.o_proj"), d, hq, c.o_bias)?,
            mlp_in,
            mlp_gate: Some(mlp_gate),
            mlp_out: linear(map, &format!("{p}.mlp.down_proj"), d, m, c.mlp_bias)?,
        })?);
    }
    let embed = map.take("embed_tokens.weight", &[c.d_vocab, d])?;
    let unembed = if c.tied_embeddings {
        // A tied checkpoint may still carry a copy of the embedding as lm_head; a
        // different one is a contradiction HF versions resolve differently.
        if let Some(head) = map.take_opt("lm_head.weight", &[c.d_vocab, d])? {
            let diff = (&head - &embed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            if diff > 0.0 {
                return Err(ModelError::BadInput(
                    "config field `tie_word_embeddings` is true but the checkpoint's lm_head.weight differs from embed_tokens.weight; set it to false if the model is untied".into(),
                ));
            }
        }
        embed.clone()
    } else {
        map.take("lm_head.weight", &[c.d_vocab, d])
            .map_err(|e| match e {
                ModelError::MissingTensor(_) => ModelError::MissingTensor(
                    "lm_head.weight (the config says tie_word_embeddings = false)".into(),
                ),
                other => other,
            })?
    };
    Ok(ModelWeights {
        embed,
        pos_embed: None,
        blocks,
        ln_final: norm(map, "norm", d)?,
        unembed,
    })
}

/// GPT-2 stores Conv1D weights as `[in, out]`; transpose once so all linears are `[out, in]`.
fn conv1d(map: &mut TensorMap, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let w = map.take(&format!("{name}.weight"), &[inp, out])?;
    Ok(Linear {
        weight: w.t()?.contiguous()?,
        bias: Some(map.take(&format!("{name}.bias"), &[out])?),
    })
}

fn split_rows(l: &Linear, parts: usize) -> Result<Vec<Linear>> {
    let n = l.weight.dim(0)? / parts;
    (0..parts)
        .map(|i| {
            Ok(Linear {
                weight: l.weight.narrow(0, i * n, n)?.contiguous()?,
                bias: match &l.bias {
                    Some(b) => Some(b.narrow(0, i * n, n)?.contiguous()?),
                    None => None,
                },
            })
        })
        .collect()
}

fn gpt2_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<ModelWeights> {
    let (d, m) = (c.d_model, c.d_mlp);
    let mut blocks = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("h.{l}");
        let qkv = split_rows(&conv1d(map, &format!("{p}.attn.c_attn"), d, 3 * d)?, 3)?;
        let [q, k, v]: [Linear; 3] = qkv.try_into().expect("three parts");
        blocks.push(BlockWeights::fuse(BlockParts {
            ln1: Some(norm(map, &format!("{p}.ln_1"), d, true)?),
            ln2: Some(norm(map, &format!("{p}.ln_2"), d, true)?),
            ln1_post: None,
            ln2_post: None,
            q,
            k,
            v,
            q_norm: None,
            k_norm: None,
            o: conv1d(map, &format!("{p}.attn.c_proj"), d, d)?,
            mlp_in: conv1d(map, &format!("{p}.mlp.c_fc"), d, m)?,
            mlp_gate: None,
            mlp_out: conv1d(map, &format!("{p}.mlp.c_proj"), m, d)?,
        })?);
    }
    let embed = map.take("wte.weight", &[c.d_vocab, d])?;
    Ok(ModelWeights {
        unembed: embed.clone(),
        embed,
        pos_embed: Some(map.take("wpe.weight", &[c.n_ctx, d])?),
        blocks,
        ln_final: norm(map, "ln_f", d, true)?,
    })
}

fn neox_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<ModelWeights> {
    let (d, m, h, dh) = (c.d_model, c.d_mlp, c.n_heads, c.d_head);
    let mut blocks = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("layers.{l}");
        // query_key_value rows are grouped per head: [h, (q|k|v), d_head].
        let qkv = linear(
            map,
            &format!("{p}.attention.query_key_value"),
            3 * h * dh,
            d,
            c.qkv_bias,
        )?;
        let w = qkv.weight.reshape((h, 3, dh, d))?;
        let b = match &qkv.bias {
            Some(b) => Some(b.reshape((h, 3, dh))?),
            None => None,
        };
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear {
                weight: w.narrow(1, i, 1)?.reshape((h * dh, d))?.contiguous()?,
                bias: match &b {
                    Some(b) => Some(b.narrow(1, i, 1)?.reshape(h * dh)?.contiguous()?),
                    None => None,
                },
            })
        };
        blocks.push(BlockWeights::fuse(BlockParts {
            ln1: Some(norm(map, &format!("{p}.input_layernorm"), d, true)?),
            ln2: Some(norm(
                map,
                &format!("{p}.post_attention_layernorm"),
                d,
                true,
            )?),
            ln1_post: None,
            ln2_post: None,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            q_norm: None,
            k_norm: None,
            o: linear(map, &format!("{p}.attention.dense"), d, h * dh, c.o_bias)?,
            mlp_in: linear(map, &format!("{p}.mlp.dense_h_to_4h"), m, d, true)?,
            mlp_gate: None,
            mlp_out: linear(map, &format!("{p}.mlp.dense_4h_to_h"), d, m, true)?,
        })?);
    }
    let embed = map.take("embed_in.weight", &[c.d_vocab, d])?;
    let unembed = if c.tied_embeddings {
        map.take_opt("embed_out.weight", &[c.d_vocab, d])?;
        embed.clone()
    } else {
        map.take("embed_out.weight", &[c.d_vocab, d])?
    };
    Ok(ModelWeights {
        embed,
        pos_embed: None,
        blocks,
        ln_final: norm(map, "final_layer_norm", d, true)?,
        unembed,
    })
}
