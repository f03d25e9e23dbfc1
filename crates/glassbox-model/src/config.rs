//! Architecture description shared by every supported model family. One forward pass
//! reads these switches instead of five hand-copied model files.

use crate::error::{ModelError, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Llama,
    Qwen2,
    Gemma2,
    Gpt2,
    GptNeox,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "gemma2" => Architecture::Gemma2,
            "gpt2" => Architecture::Gpt2,
            "gpt_neox" => Architecture::GptNeox,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    found: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES.join(", "),
                })
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gpt2 => "gpt2",
            Architecture::GptNeox => "gpt_neox",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// x / sqrt(mean(x²) + eps) · w
    RmsNorm,
    /// Gemma: x / sqrt(mean(x²) + eps) · (1 + w)
    RmsNormUnitOffset,
    /// (x − mean) / sqrt(var + eps) · w + b
    LayerNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// tanh approximation (gelu_new, gelu_pytorch_tanh)
    GeluTanh,
    /// exact erf GELU
    Gelu,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => {
                return Err(ModelError::BadInput(format!(
                    "unsupported activation function `{other}` (supported: silu, gelu, gelu_new, gelu_pytorch_tanh, relu)"
                )))
            }
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    pub n_ctx: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub activation: Activation,
    /// gate/up MLP (llama family) instead of in/out (gpt2, neox)
    pub gated_mlp: bool,
    /// `None` for learned absolute positions (gpt2)
    pub rotary_dim: Option<usize>,
    pub rope_theta: f64,
    /// attention and MLP read the same residual (gpt_neox)
    pub parallel_residual: bool,
    /// Gemma 2's extra norms on the attention and MLP outputs
    pub post_sublayer_norms: bool,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// multiplies the token embedding (Gemma: sqrt(d_model))
    pub embed_scale: Option<f64>,
    pub sliding_window: Option<usize>,
    /// per layer: does this layer use the sliding window
    pub sliding_layers: Vec<bool>,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

fn get_usize(cfg: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_u64))
        .map(|v| v as usize)
}
fn get_f64(cfg: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_f64))
}
fn get_str<'a>(cfg: &'a Value, key: &str) -> Option<&'a str> {
    cfg.get(key).and_then(Value::as_str)
}
fn first_u32(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads a HF `config.json`.
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::bad_file(path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::bad_file(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_config(&cfg).map_err(|e| match e {
            ModelError::BadInput(m) => ModelError::bad_file(path, m),
            other => other,
        })
    }

    pub fn from_hf_config(cfg: &Value) -> Result<Self> {
        let model_type = get_str(cfg, "model_type")
            .ok_or_else(|| ModelError::BadInput("config has no `model_type`".into()))?;
        let arch = Architecture::parse(model_type)?;
        let need = |keys: &[&str]| {
            get_usize(cfg, keys).ok_or_else(|| {
                ModelError::BadInput(format!("config is missing `{}`", keys.join("` / `")))
            })
        };
        let d_model = need(&["hidden_size", "n_embd"])?;
        let n_layers = need(&["num_hidden_layers", "n_layer"])?;
        let n_heads = need(&["num_attention_heads", "n_head"])?;
        let d_vocab = need(&["vocab_size"])?;
        let n_kv_heads = get_usize(cfg, &["num_key_value_heads"]).unwrap_or(n_heads);
        let d_head = get_usize(cfg, &["head_dim"]).unwrap_or(d_model / n_heads.max(1));
        let n_ctx = need(&["max_position_embeddings", "n_positions", "n_ctx"])?;
        let d_mlp = match arch {
            Architecture::Gpt2 => get_usize(cfg, &["n_inner"]).unwrap_or(4 * d_model),
            _ => need(&["intermediate_size"])?,
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadInput(format!(
                "num_attention_heads ({n_heads}) must be a positive multiple of num_key_value_heads ({n_kv_heads})"
            )));
        }
        let rope = cfg
            .get("rope_parameters")
            .or_else(|| cfg.get("rope_scaling"));
        let rope_theta = get_f64(cfg, &["rope_theta"])
            .or_else(|| rope.and_then(|r| get_f64(r, &["rope_theta"])))
            .unwrap_or(10000.0);
        if let Some(kind) =
            rope.and_then(|r| get_str(r, "rope_type").or_else(|| get_str(r, "type")))
        {
            if kind != "default" {
                return Err(ModelError::BadInput(format!(
                    "rope scaling `{kind}` is not supported yet (only the default rotary embedding)"
                )));
            }
        }
        let act_name = get_str(cfg, "hidden_act")
            .or_else(|| get_str(cfg, "hidden_activation"))
            .or_else(|| get_str(cfg, "activation_function"))
            .unwrap_or("silu");
        let activation = Activation::parse(act_name)?;
        let tied_default = !matches!(arch, Architecture::GptNeox);
        let tied_embeddings = cfg
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(tied_default);
        let mut c = ModelConfig {
            architecture: arch,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            d_head,
            d_mlp,
            d_vocab,
            n_ctx,
            norm: NormKind::RmsNorm,
            norm_eps: get_f64(
                cfg,
                &["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"],
            )
            .unwrap_or(1e-5),
            activation,
            gated_mlp: true,
            rotary_dim: Some(d_head),
            rope_theta,
            parallel_residual: false,
            post_sublayer_norms: false,
            attn_scale: 1.0 / (d_head as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            tied_embeddings,
            qkv_bias: false,
            bos_token_id: first_u32(cfg.get("bos_token_id")),
            eos_token_id: first_u32(cfg.get("eos_token_id")),
        };
        match arch {
            Architecture::Llama => {
                c.qkv_bias = cfg
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            Architecture::Qwen2 => {
                c.qkv_bias = true;
                if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                    return Err(ModelError::BadInput(
                        "qwen2 with use_sliding_window=true is not supported yet".into(),
                    ));
                }
            }
            Architecture::Gemma2 => {
                c.norm = NormKind::RmsNormUnitOffset;
                c.post_sublayer_norms = true;
                c.embed_scale = Some((d_model as f64).sqrt());
                if let Some(s) = get_f64(cfg, &["query_pre_attn_scalar"]) {
                    c.attn_scale = 1.0 / s.sqrt();
                }
                c.attn_softcap = get_f64(cfg, &["attn_logit_softcapping"]);
                c.final_softcap = get_f64(cfg, &["final_logit_softcapping"]);
                c.sliding_window = get_usize(cfg, &["sliding_window"]);
                c.sliding_layers = match cfg.get("layer_types").and_then(Value::as_array) {
                    Some(types) if types.len() == n_layers => types
                        .iter()
                        .map(|t| t.as_str() == Some("sliding_attention"))
                        .collect(),
                    // Gemma 2 default: even layers slide, odd layers attend globally.
                    _ => (0..n_layers).map(|l| l % 2 == 0).collect(),
                };
                if c.sliding_window.is_none() {
                    c.sliding_layers = vec![false; n_layers];
                }
            }
            Architecture::Gpt2 => {
                c.norm = NormKind::LayerNorm;
                c.gated_mlp = false;
                c.rotary_dim = None;
                c.qkv_bias = true;
                c.tied_embeddings = true;
                if cfg
                    .get("scale_attn_by_inverse_layer_idx")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    return Err(ModelError::BadInput(
                        "gpt2 with scale_attn_by_inverse_layer_idx is not supported".into(),
                    ));
                }
            }
            Architecture::GptNeox => {
                c.norm = NormKind::LayerNorm;
                c.gated_mlp = false;
                c.qkv_bias = true;
                c.parallel_residual = cfg
                    .get("use_parallel_residual")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let pct = get_f64(cfg, &["rotary_pct", "partial_rotary_factor"])
                    .or_else(|| rope.and_then(|r| get_f64(r, &["partial_rotary_factor"])))
                    .unwrap_or(1.0);
                c.rotary_dim = Some((d_head as f64 * pct) as usize);
                c.rope_theta = get_f64(cfg, &["rotary_emb_base"]).unwrap_or(rope_theta);
            }
        }
        Ok(c)
    }

    pub fn n_query_groups(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}
