//! GGUF loader (llama architecture): quantized tensors are dequantized to f32 once at
//! load, and Q/K rows are un-permuted back to the HF rotary layout so hook values match
//! the HF reference.

use crate::config::{Activation, Architecture, ModelConfig, NormKind};
use crate::error::{ModelError, Result};
use crate::weights::{check_shape, BlockParts, BlockWeights, Linear, ModelWeights, Norm};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub content: Content,
}

pub fn read_gguf_header(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| ModelError::bad_file(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        ModelError::bad_file(
            path,
            format!("not a valid GGUF file (wrong magic, truncated or corrupt?): {e}"),
        )
    })?;
    Ok((content, reader))
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn meta_usize(c: &Content, key: &str) -> Result<usize> {
    meta(c, key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::BadInput(format!("GGUF metadata has no integer `{key}`")))
}

fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

pub fn meta_u32(c: &Content, key: &str) -> Option<u32> {
    meta(c, key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_u64().ok().map(|x| x as u32))
    })
}

pub fn meta_string(c: &Content, key: &str) -> Option<String> {
    meta(c, key).and_then(|v| v.to_string().ok().cloned())
}

pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let (content, mut reader) = read_gguf_header(path)?;
    let arch = meta_string(&content, "general.architecture").unwrap_or_default();
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture {
            found: format!("{arch} (GGUF)"),
            supported: "llama (GGUF); llama, qwen2, gemma2, gpt2, gpt_neox (HF directories)".into(),
        });
    }
    let cfg = gguf_config(&content).map_err(|e| match e {
        ModelError::BadInput(m) => ModelError::bad_file(path, m),
        other => other,
    })?;
    let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| {
                if content.tensor_infos.contains_key(name) {
                    ModelError::bad_file(
                        path,
                        format!("cannot read tensor `{name}` (truncated file?): {e}"),
                    )
                } else {
                    ModelError::MissingTensor(name.to_string())
                }
            })?;
        let t = q.dequantize(&Device::Cpu)?;
        check_shape(name, &t, shape)?;
        Ok(t)
    };
    let (d, m, dh) = (cfg.d_model, cfg.d_mlp, cfg.d_head);
    let (hq, hkv) = (cfg.n_heads * dh, cfg.n_kv_heads * dh);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("blk.{l}");
        let lin = |w: Tensor| Linear {
            weight: w,
            bias: None,
        };
        let nrm = |w: Tensor| Norm {
            weight: w,
            bias: None,
        };
        blocks.push(BlockWeights::fuse(BlockParts {
            ln1: Some(nrm(get(&format!("{p}.attn_norm.weight"), &[d])?)),
            ln2: Some(nrm(get(&format!("{p}.ffn_norm.weight"), &[d])?)),
            ln1_post: None,
            ln2_post: None,
            q: lin(unpermute_rotary(
                get(&format!("{p}.attn_q.weight"), &[hq, d])?,
                cfg.n_heads,
            )?),
            k: lin(unpermute_rotary(
                get(&format!("{p}.attn_k.weight"), &[hkv, d])?,
                cfg.n_kv_heads,
            )?),
            v: lin(get(&format!("{p}.attn_v.weight"), &[hkv, d])?),
            q_norm: None,
            k_norm: None,
            o: lin(get(&format!("{p}.attn_output.weight"), &[d, hq])?),
            mlp_in: lin(get(&format!("{p}.ffn_up.weight"), &[m, d])?),
            mlp_gate: Some(lin(get(&format!("{p}.ffn_gate.weight"), &[m, d])?)),
            mlp_out: lin(get(&format!("{p}.ffn_down.weight"), &[d, m])?),
        })?);
    }
    let embed = get("token_embd.weight", &[cfg.d_vocab, d])?;
    let unembed = if content.tensor_infos.contains_key("output.weight") {
        get("output.weight", &[cfg.d_vocab, d])?
    } else {
        embed.clone()
    };
    let ln_final = Norm {
        weight: get("output_norm.weight", &[d])?,
        bias: None,
    };
    let mut config = cfg;
    config.tied_embeddings = !content.tensor_infos.contains_key("output.weight");
    Ok(GgufModel {
        config,
        weights: ModelWeights {
            embed,
            pos_embed: None,
            blocks,
            ln_final,
            unembed,
        },
        content,
    })
}

fn gguf_config(c: &Content) -> Result<ModelConfig> {
    let d_model = meta_usize(c, "llama.embedding_length")?;
    let n_heads = meta_usize(c, "llama.attention.head_count")?;
    let n_kv_heads = meta_usize(c, "llama.attention.head_count_kv").unwrap_or(n_heads);
    let n_layers = meta_usize(c, "llama.block_count")?;
    let d_head = meta_usize(c, "llama.attention.key_length").unwrap_or(d_model / n_heads);
    let d_vocab = match meta_usize(c, "llama.vocab_size") {
        Ok(v) => v,
        Err(_) => match meta(c, "tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()) {
            Some(tokens) => tokens.len(),
            None => {
                return Err(ModelError::BadInput(
                    "GGUF has neither llama.vocab_size nor tokenizer.ggml.tokens".into(),
                ))
            }
        },
    };
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(ModelError::BadInput(format!(
            "head_count ({n_heads}) must be a positive multiple of head_count_kv ({n_kv_heads})"
        )));
    }
    let rotary = meta_usize(c, "llama.rope.dimension_count").unwrap_or(d_head);
    Ok(ModelConfig {
        architecture: Architecture::Llama,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: meta_usize(c, "llama.feed_forward_length")?,
        d_vocab,
        n_ctx: meta_usize(c, "llama.context_length").unwrap_or(2048),
        norm: NormKind::RmsNorm,
        norm_eps: meta_f64(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        activation: Activation::Silu,
        gated_mlp: true,
        rotary_dim: Some(rotary),
        rope_theta: meta_f64(c, "llama.rope.freq_base").unwrap_or(10000.0),
        rope_scaling: crate::config::RopeScaling::Default,
        rope_local_theta: None,
        qk_norm: None,
        pre_norms: true,
        parallel_residual: false,
        post_sublayer_norms: false,
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        embed_scale: None,
        sliding_window: None,
        sliding_layers: vec![false; n_layers],
        tied_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        bos_token_id: meta_u32(c, "tokenizer.ggml.bos_token_id"),
        eos_token_id: meta_u32(c, "tokenizer.ggml.eos_token_id"),
    })
}

/// llama.cpp's converter interleaves each head's rows as (i, half) pairs for its
/// rotary kernel; HF (and our hooks) use the half-split layout. Undo it:
/// `[heads, d/2, 2, in] -> [heads, 2, d/2, in]`.
fn unpermute_rotary(w: Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / heads;
    Ok(w.reshape((heads, d / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
