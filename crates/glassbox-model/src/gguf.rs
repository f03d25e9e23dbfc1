//! GGUF loader (llama architecture): quantized tensors are dequantized to f32 once at
//! load, and Q/K rows are un-permuted back to the HF rotary layout so hook values match
//! the HF reference.

use crate::config::{Activation, Architecture, ModelConfig, NormKind, RopeScaling};
use crate::error::{ModelError, Result};
use crate::stored::StoredTensor;
use crate::weights::{
    BlockParts, LoadedWeights, ModelWeights, Norm, StoredLinear, DEFAULT_KEEP_EXPANDED_BYTES,
};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

/// A GGUF file as loaded: the config its metadata describes, the weights, and the header
/// (metadata and tensor infos, from which the tokenizer is rebuilt).
pub struct GgufModel {
    /// the config from the `{arch}.*` metadata (and llama.cpp's assumptions for gemma3)
    pub config: ModelConfig,
    /// matrices in their quant blocks; embedding, unembedding and norms dequantized
    pub weights: ModelWeights,
    /// the file's header
    pub content: Content,
}

/// Reads a GGUF header (metadata and tensor infos) and checks that every tensor it lists
/// has elements and lies inside the file; the reader is left for reading the tensors.
/// A file that is not GGUF, or is truncated, is [`ModelError::BadFile`].
pub fn read_gguf_header(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| ModelError::bad_file(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| ModelError::bad_file(path, e))?
        .len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        ModelError::bad_file(
            path,
            format!("not a valid GGUF file (wrong magic, truncated or corrupt?): {e}"),
        )
    })?;
    check_tensor_infos(&content, file_len).map_err(|m| ModelError::bad_file(path, m))?;
    Ok((content, reader))
}

/// Every tensor the header lists must have a size that neither overflows nor exceeds
/// what the file holds after its offset, and at least one element: candle computes the
/// byte count unchecked (a shape whose product overflows panics), and reads an empty
/// tensor through a misaligned pointer.
fn check_tensor_infos(c: &Content, file_len: u64) -> std::result::Result<(), String> {
    for (name, info) in &c.tensor_infos {
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "tensor `{name}` has shape {dims:?}: no elements, or more than a file can hold"
                )
            })?;
        let (block, type_size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        if elems % block != 0 {
            return Err(format!(
                "tensor `{name}` has {elems} elements, not a multiple of its {:?} block size {block}",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block) as u128 * type_size as u128;
        let start = c.tensor_data_offset as u128 + info.offset as u128;
        if start + bytes > file_len as u128 {
            return Err(format!(
                "tensor `{name}` needs {bytes} bytes at offset {start}, past the end of the {file_len}-byte file (truncated?)"
            ));
        }
    }
    Ok(())
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

/// The metadata value `key` as a `u32` (from a u32 or u64 entry), if present.
pub fn meta_u32(c: &Content, key: &str) -> Option<u32> {
    meta(c, key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_u64().ok().map(|x| x as u32))
    })
}

/// The metadata value `key` as a string, if present.
pub fn meta_string(c: &Content, key: &str) -> Option<String> {
    meta(c, key).and_then(|v| v.to_string().ok().cloned())
}

/// GGUF architectures glassbox reads (`general.architecture`).
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama", "gemma3"];

/// Loads a llama or gemma3 GGUF, keeping blocks dequantized when they fit
/// [`DEFAULT_KEEP_EXPANDED_BYTES`]; another `general.architecture` is
/// [`ModelError::UnsupportedArchitecture`].
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    load_gguf_with(path, DEFAULT_KEEP_EXPANDED_BYTES)
}

/// As `load_gguf`, keeping the dequantized blocks after first use only if all of them
/// fit `keep_expanded_bytes` in f32.
pub fn load_gguf_with(path: &Path, keep_expanded_bytes: usize) -> Result<GgufModel> {
    let (content, mut reader) = read_gguf_header(path)?;
    let arch = meta_string(&content, "general.architecture").unwrap_or_default();
    let architecture = match arch.as_str() {
        "llama" => Architecture::Llama,
        "gemma3" => Architecture::Gemma3,
        _ => {
            return Err(ModelError::UnsupportedArchitecture {
                found: format!("{arch} (GGUF)"),
                supported: format!(
                    "{} (GGUF); {} (HF directories)",
                    SUPPORTED_GGUF_ARCHITECTURES.join(", "),
                    crate::config::SUPPORTED_ARCHITECTURES.join(", ")
                ),
            })
        }
    };
    let cfg = gguf_config(&content, architecture).map_err(|e| match e {
        ModelError::BadInput(m) => ModelError::bad_file(path, m),
        other => other,
    })?;
    load_gguf_weights(path, content, &mut reader, cfg, keep_expanded_bytes)
}

fn load_gguf_weights(
    path: &Path,
    content: Content,
    reader: &mut BufReader<File>,
    cfg: ModelConfig,
    keep_expanded_bytes: usize,
) -> Result<GgufModel> {
    // Matrices stay in their quant blocks (expanded per layer); vectors and the
    // embedding are dequantized once.
    let mut get_q = |name: &str, shape: &[usize]| -> Result<QTensor> {
        let q = content.tensor(reader, name, &Device::Cpu).map_err(|e| {
            if content.tensor_infos.contains_key(name) {
                ModelError::bad_file(
                    path,
                    format!("cannot read tensor `{name}` (truncated file?): {e}"),
                )
            } else {
                ModelError::MissingTensor(name.to_string())
            }
        })?;
        if q.shape().dims() != shape {
            return Err(ModelError::ShapeMismatch {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                actual: q.shape().dims().to_vec(),
            });
        }
        Ok(q)
    };
    let gemma = cfg.architecture == Architecture::Gemma3;
    let (d, m, dh) = (cfg.d_model, cfg.d_mlp, cfg.d_head);
    let (hq, hkv) = (cfg.n_heads * dh, cfg.n_kv_heads * dh);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("blk.{l}");
        let mut mat = |name: &str, shape: &[usize], unpermute_heads: Option<usize>| {
            Ok::<_, ModelError>(StoredLinear {
                weight: StoredTensor::Quantized {
                    tensor: Arc::new(get_q(&format!("{p}.{name}.weight"), shape)?),
                    unpermute_heads,
                },
                bias: None,
            })
        };
        // llama.cpp permutes llama's Q/K rows for its rotary kernel, not Gemma's.
        let (uq, uk) = if gemma {
            (None, None)
        } else {
            (Some(cfg.n_heads), Some(cfg.n_kv_heads))
        };
        let q = mat("attn_q", &[hq, d], uq)?;
        let k = mat("attn_k", &[hkv, d], uk)?;
        let v = mat("attn_v", &[hkv, d], None)?;
        let o = mat("attn_output", &[d, hq], None)?;
        let mlp_in = mat("ffn_up", &[m, d], None)?;
        let mlp_gate = mat("ffn_gate", &[m, d], None)?;
        let mlp_out = mat("ffn_down", &[d, m], None)?;
        // llama.cpp stores Gemma's norm weights with the `1 +` already added.
        let mut nrm = |name: &str, width: usize| -> Result<Norm> {
            Ok(Norm {
                weight: get_q(&format!("{p}.{name}.weight"), &[width])?.dequantize(&Device::Cpu)?,
                bias: None,
            })
        };
        let gemma_norm =
            |nrm: &mut dyn FnMut(&str, usize) -> Result<Norm>, name: &str, w: usize| {
                if gemma {
                    nrm(name, w).map(Some)
                } else {
                    Ok(None)
                }
            };
        blocks.push(BlockParts {
            ln1: Some(nrm("attn_norm", d)?),
            ln2: Some(nrm("ffn_norm", d)?),
            ln1_post: gemma_norm(&mut nrm, "post_attention_norm", d)?,
            ln2_post: gemma_norm(&mut nrm, "post_ffw_norm", d)?,
            q,
            k,
            v,
            q_norm: gemma_norm(&mut nrm, "attn_q_norm", dh)?,
            k_norm: gemma_norm(&mut nrm, "attn_k_norm", dh)?,
            o,
            mlp_in,
            mlp_gate: Some(mlp_gate),
            mlp_out,
        });
    }
    let embed = StoredTensor::Dense(
        get_q("token_embd.weight", &[cfg.d_vocab, d])?.dequantize(&Device::Cpu)?,
    );
    let untied = content.tensor_infos.contains_key("output.weight");
    // Dequantized once like the embedding: a quant block cannot be sliced by rows, so
    // expanding it per pass would mean the whole vocabulary every time.
    let unembed = if untied {
        StoredTensor::Dense(get_q("output.weight", &[cfg.d_vocab, d])?.dequantize(&Device::Cpu)?)
    } else {
        embed.clone()
    };
    let ln_final = Norm {
        weight: get_q("output_norm.weight", &[d])?.dequantize(&Device::Cpu)?,
        bias: None,
    };
    let mut config = cfg;
    config.tied_embeddings = !untied;
    let weights = LoadedWeights {
        embed,
        pos_embed: None,
        blocks,
        ln_final,
        unembed,
    }
    .into_model(keep_expanded_bytes)?;
    Ok(GgufModel {
        config,
        weights,
        content,
    })
}

fn gguf_config(c: &Content, architecture: Architecture) -> Result<ModelConfig> {
    let a = match architecture {
        Architecture::Gemma3 => "gemma3",
        _ => "llama",
    };
    let key = |k: &str| format!("{a}.{k}");
    let d_model = meta_usize(c, &key("embedding_length"))?;
    let n_heads = meta_usize(c, &key("attention.head_count"))?;
    let n_kv_heads = meta_usize(c, &key("attention.head_count_kv")).unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(ModelError::BadInput(format!(
            "head_count ({n_heads}) must be a positive multiple of head_count_kv ({n_kv_heads})"
        )));
    }
    let n_layers = meta_usize(c, &key("block_count"))?;
    // Every layer has at least its norm and projections: more layers than tensors is a
    // corrupt header, not a model (and must not size allocations).
    if n_layers == 0 || n_layers > c.tensor_infos.len() || n_layers > crate::config::MAX_LAYERS {
        return Err(ModelError::BadInput(format!(
            "block_count = {n_layers} does not fit the {} tensors the file holds",
            c.tensor_infos.len()
        )));
    }
    let d_head = meta_usize(c, &key("attention.key_length")).unwrap_or(d_model / n_heads);
    let d_vocab = match meta_usize(c, &key("vocab_size")) {
        Ok(v) => v,
        Err(_) => match meta(c, "tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()) {
            Some(tokens) => tokens.len(),
            None => {
                return Err(ModelError::BadInput(format!(
                    "GGUF has neither {a}.vocab_size nor tokenizer.ggml.tokens"
                )))
            }
        },
    };
    let rotary = meta_usize(c, &key("rope.dimension_count")).unwrap_or(d_head);
    let rope_scaling = match meta_string(c, &key("rope.scaling.type")).as_deref() {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => RopeScaling::Linear {
            factor: meta_f64(c, &key("rope.scaling.factor")).ok_or_else(|| {
                ModelError::BadInput(format!("{a}.rope.scaling.type is linear but has no factor"))
            })?,
        },
        Some(other) => {
            return Err(ModelError::BadInput(format!(
                "GGUF rope scaling `{other}` is not supported (supported: none, linear)"
            )))
        }
    };
    let mut cfg = ModelConfig {
        architecture,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: meta_usize(c, &key("feed_forward_length"))?,
        d_vocab,
        n_ctx: meta_usize(c, &key("context_length")).unwrap_or(2048),
        norm: NormKind::RmsNorm,
        norm_eps: meta_f64(c, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        activation: Activation::Silu,
        gated_mlp: true,
        rotary_dim: Some(rotary),
        rope_theta: meta_f64(c, &key("rope.freq_base")).unwrap_or(10000.0),
        rope_scaling,
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
    };
    if architecture == Architecture::Gemma3 {
        // What llama.cpp assumes for gemma3 GGUFs, which do not store these: every
        // sixth layer global, local layers on base 10000, queries scaled by the head
        // width (27B, 62 layers: by d_model / n_heads).
        cfg.norm = NormKind::RmsNormUnitOffset;
        cfg.activation = Activation::GeluTanh;
        cfg.qk_norm = Some(crate::config::QkNorm::PerHead);
        cfg.post_sublayer_norms = true;
        cfg.embed_scale = Some((d_model as f64).sqrt());
        cfg.rope_local_theta = Some(10000.0);
        if n_layers == 62 {
            cfg.attn_scale = 1.0 / ((d_model / n_heads) as f64).sqrt();
        }
        cfg.final_softcap = meta_f64(c, "gemma3.final_logit_softcapping");
        if let Ok(w) = meta_usize(c, "gemma3.attention.sliding_window") {
            cfg.sliding_window = Some(w);
            cfg.sliding_layers = (0..n_layers).map(|l| (l + 1) % 6 != 0).collect();
        }
    }
    Ok(cfg)
}

/// llama.cpp's converter interleaves each head's rows as (i, half) pairs for its
/// rotary kernel; HF (and our hooks) use the half-split layout. Undo it:
/// `[heads, d/2, 2, in] -> [heads, 2, d/2, in]`.
pub(crate) fn unpermute_rotary(w: Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / heads;
    Ok(w.reshape((heads, d / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
