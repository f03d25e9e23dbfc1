//! Architecture description shared by every supported model family. One forward pass
//! reads these switches instead of five hand-copied model files.

use crate::error::{ModelError, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// The HF `model_type`s glassbox runs (`gemma3`, the multimodal wrapper, is read through
/// its `text_config` as `gemma3_text`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "gpt2",
    "gpt_neox",
];

/// A supported model family. It picks the checkpoint's tensor names and the defaults
/// [`ModelConfig::from_hf_config`] fills in; the forward pass itself reads only the
/// [`ModelConfig`] switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// `llama` (Llama 2/3, SmolLM2; also llama GGUFs)
    Llama,
    /// `mistral`: llama with a sliding window on every layer (when `sliding_window` is set)
    Mistral,
    /// `qwen2`: biases on Q, K and V
    Qwen2,
    /// `qwen3`: per-head RMSNorm on queries and keys
    Qwen3,
    /// `gemma2`: unit-offset norms around each sublayer, soft-capping, alternating
    /// sliding-window layers
    Gemma2,
    /// `gemma3_text` (and gemma3 GGUFs): Gemma 2's layout with q/k norms, every sixth
    /// layer global by default and its own rotary base on local layers
    Gemma3,
    /// `phi3`: fused `qkv_proj` and `gate_up_proj` in the checkpoint, partial rotary
    Phi3,
    /// `olmo2`: norms on the sublayer outputs only, RMSNorm over all query/key heads
    Olmo2,
    /// `gpt2`: LayerNorm, learned absolute positions, Conv1D (`[in, out]`) weights,
    /// biases everywhere
    Gpt2,
    /// `gpt_neox` (Pythia): LayerNorm, parallel attention and MLP (by default), partial
    /// rotary
    GptNeox,
}

impl Architecture {
    /// The architecture of a HF `model_type`; [`ModelError::UnsupportedArchitecture`]
    /// for any other (including the multimodal `gemma3`, which
    /// [`ModelConfig::from_hf_config`] unwraps first).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "gemma2" => Architecture::Gemma2,
            // `gemma3` is the multimodal wrapper; its text model is `gemma3_text`.
            "gemma3_text" => Architecture::Gemma3,
            "phi3" => Architecture::Phi3,
            "olmo2" => Architecture::Olmo2,
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

    /// The HF `model_type` (`gemma3_text` for [`Architecture::Gemma3`]).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3_text",
            Architecture::Phi3 => "phi3",
            Architecture::Olmo2 => "olmo2",
            Architecture::Gpt2 => "gpt2",
            Architecture::GptNeox => "gpt_neox",
        }
    }
}

/// Which normalisation every norm of the model computes (over the last axis, `eps` =
/// [`ModelConfig::norm_eps`]).
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

/// RMSNorm on queries and keys before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    /// over each head's `d_head` values, one weight shared by all heads (Qwen3, Gemma 3)
    PerHead,
    /// over all heads at once, `n_heads · d_head` weights (OLMo 2)
    AllHeads,
}

/// How rotary frequencies are rescaled for long contexts (HF `rope_type`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rope_type")]
pub enum RopeScaling {
    /// no rescaling: `1 / theta^(2i/rot)`
    Default,
    /// every frequency divided by `factor` (Gemma 3 ≥ 4B, global layers)
    Linear {
        /// the divisor (> 0)
        factor: f64,
    },
    /// Llama 3.1+: low frequencies divided by `factor`, high ones kept, a smooth ramp between
    Llama3 {
        /// the divisor of the low frequencies (> 0)
        factor: f64,
        /// wavelengths above `original_max_position_embeddings / low_freq_factor` are
        /// divided by `factor`
        low_freq_factor: f64,
        /// wavelengths below `original_max_position_embeddings / high_freq_factor` are
        /// kept (> `low_freq_factor`)
        high_freq_factor: f64,
        /// the context length the model was pre-trained at, in positions
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// HF's inverse frequencies for a rotary width `rot` and base `theta`, rescaled:
    /// `1 / theta^(2i/rot)` in f32, as HF computes them.
    pub fn inv_freq(&self, theta: f64, rot: usize) -> Vec<f32> {
        let base: Vec<f32> = (0..rot / 2)
            .map(|i| 1.0 / (theta.powf((2 * i) as f64 / rot as f64) as f32))
            .collect();
        match *self {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        scaled as f32
                    })
                    .collect()
            }
        }
    }
}

/// The MLP's nonlinearity (HF `hidden_act` / `hidden_activation` / `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · sigmoid(x)` (`silu`, `swish`)
    Silu,
    /// tanh approximation (gelu_new, gelu_pytorch_tanh)
    GeluTanh,
    /// exact erf GELU
    Gelu,
    /// `max(x, 0)`
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

/// What the forward pass computes, for every family: sizes (TransformerLens' names) and
/// the switches that tell the families apart. Read from a HF `config.json`
/// ([`ModelConfig::from_hf_config_file`]) or from GGUF metadata; every field that would
/// change the computation is either implemented here or refused by name.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// the model family
    pub architecture: Architecture,
    /// width of the residual stream (`hidden_size`, `n_embd`)
    pub d_model: usize,
    /// number of blocks (`num_hidden_layers`, `n_layer`)
    pub n_layers: usize,
    /// query heads per layer (`num_attention_heads`, `n_head`)
    pub n_heads: usize,
    /// key/value heads per layer (`num_key_value_heads`; `n_heads` without grouped-query
    /// attention); divides `n_heads`
    pub n_kv_heads: usize,
    /// width of one head (`head_dim`, else `d_model / n_heads`)
    pub d_head: usize,
    /// width of the MLP's hidden layer (`intermediate_size`; gpt2 `n_inner`, else
    /// `4 d_model`)
    pub d_mlp: usize,
    /// vocabulary size: rows of the embedding and the unembedding (`vocab_size`)
    pub d_vocab: usize,
    /// context length in positions (`max_position_embeddings`, `n_positions`, `n_ctx`):
    /// the most a pass may hold, KV-cached positions included
    pub n_ctx: usize,
    /// the normalisation every norm computes
    pub norm: NormKind,
    /// epsilon of every norm (`rms_norm_eps`, `layer_norm_eps`, `layer_norm_epsilon`;
    /// default 1e-5)
    pub norm_eps: f64,
    /// the MLP's nonlinearity
    pub activation: Activation,
    /// gate/up MLP (llama family) instead of in/out (gpt2, neox)
    pub gated_mlp: bool,
    /// `None` for learned absolute positions (gpt2)
    pub rotary_dim: Option<usize>,
    /// rotary base of the global (full-attention) layers
    pub rope_theta: f64,
    /// rescaling of the global layers' rotary frequencies
    pub rope_scaling: RopeScaling,
    /// rotary base of the sliding-window layers when it differs (Gemma 3; unscaled)
    pub rope_local_theta: Option<f64>,
    /// RMSNorm on queries and keys (Qwen3, Gemma 3, OLMo 2)
    pub qk_norm: Option<QkNorm>,
    /// norms before attention and MLP (all but OLMo 2, which normalises their outputs only)
    pub pre_norms: bool,
    /// attention and MLP read the same residual (gpt_neox)
    pub parallel_residual: bool,
    /// norms on the attention and MLP outputs before the residual add (Gemma 2/3, OLMo 2)
    pub post_sublayer_norms: bool,
    /// factor on the attention scores `q · k`: `1 / sqrt(d_head)`, Gemma
    /// `1 / sqrt(query_pre_attn_scalar)`
    pub attn_scale: f64,
    /// attention scores become `cap · tanh(scores / cap)` before the mask (Gemma 2
    /// `attn_logit_softcapping`)
    pub attn_softcap: Option<f64>,
    /// logits become `cap · tanh(logits / cap)` (Gemma `final_logit_softcapping`)
    pub final_softcap: Option<f64>,
    /// multiplies the token embedding (Gemma: sqrt(d_model))
    pub embed_scale: Option<f64>,
    /// on the layers [`sliding_layers`](Self::sliding_layers) marks, a query sees only
    /// keys fewer than this many positions before it (HF `sliding_window`)
    pub sliding_window: Option<usize>,
    /// per layer: does this layer use the sliding window
    pub sliding_layers: Vec<bool>,
    /// the unembedding is the token embedding (`tie_word_embeddings`)
    pub tied_embeddings: bool,
    /// biases on the query, key and value projections
    pub qkv_bias: bool,
    /// bias on the attention output projection (`attention_bias` in llama-style configs)
    pub o_bias: bool,
    /// biases on the MLP projections (gated MLPs with `mlp_bias`)
    pub mlp_bias: bool,
    /// the config's `bos_token_id` (the first, when it lists several)
    pub bos_token_id: Option<u32>,
    /// the config's `eos_token_id` (the first, when it lists several)
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
fn get_bool(cfg: &Value, key: &str) -> Option<bool> {
    cfg.get(key).and_then(Value::as_bool)
}

/// Layer counts beyond this are a corrupt or hostile config, not a model.
pub const MAX_LAYERS: usize = 4096;

fn refused(field: &str, why: &str) -> ModelError {
    ModelError::BadInput(format!(
        "config field `{field}` is not supported: {why}; glassbox refuses rather than compute something HF would not"
    ))
}

/// transformers 5 writes `rope_parameters` per layer type for models with two kinds of layers.
fn is_per_layer_rope(cfg: &Value) -> bool {
    cfg.get("rope_parameters")
        .is_some_and(|r| r.get("full_attention").is_some() || r.get("sliding_attention").is_some())
}

/// The rotary parameters for one layer type: transformers 5's `rope_parameters`
/// (flat or per layer type) or transformers 4's `rope_scaling`.
fn rope_params<'a>(cfg: &'a Value, layer_type: &str) -> Option<&'a Value> {
    if let Some(rp) = cfg.get("rope_parameters").filter(|v| v.is_object()) {
        if is_per_layer_rope(cfg) {
            return rp.get(layer_type).filter(|v| v.is_object());
        }
        return Some(rp);
    }
    cfg.get("rope_scaling").filter(|v| v.is_object())
}

fn parse_rope_scaling(r: Option<&Value>) -> Result<RopeScaling> {
    let Some(r) = r else {
        return Ok(RopeScaling::Default);
    };
    let kind = get_str(r, "rope_type")
        .or_else(|| get_str(r, "type"))
        .unwrap_or("default");
    let need = |key: &str| {
        get_f64(r, &[key]).ok_or_else(|| {
            ModelError::BadInput(format!("rope scaling `{kind}` needs a numeric `{key}`"))
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(ModelError::BadInput(format!(
                "rope_type `{other}` is not supported (supported: default, linear, llama3); glassbox refuses rather than compute wrong positions"
            )))
        }
    };
    match scaling {
        RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. }
            if factor.is_nan() || factor <= 0.0 =>
        {
            Err(ModelError::BadInput(format!(
                "rope scaling factor {factor} must be positive"
            )))
        }
        RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
            ..
        } if !(high_freq_factor > low_freq_factor
            && low_freq_factor > 0.0
            && original_max_position_embeddings > 0.0) =>
        {
            Err(ModelError::BadInput(
                "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings".into(),
            ))
        }
        s => Ok(s),
    }
}

/// `layer_types` as sliding (true) or full (false) per layer; other kinds are refused.
fn layer_types(cfg: &Value, n_layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(types) = cfg.get("layer_types").and_then(Value::as_array) else {
        return Ok(None);
    };
    if types.len() != n_layers {
        return Err(ModelError::BadInput(format!(
            "layer_types lists {} layers but num_hidden_layers is {n_layers}",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("sliding_attention") => Ok(true),
            Some("full_attention") => Ok(false),
            other => Err(refused(
                &format!("layer_types entry {other:?}"),
                "only full_attention and sliding_attention layers are implemented",
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn first_u32(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads a HF `config.json`, as [`from_hf_config`](Self::from_hf_config); refusals
    /// name the file ([`ModelError::BadFile`]).
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::bad_file(path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::bad_file(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_config(&cfg).map_err(|e| match e {
            ModelError::BadInput(m) => ModelError::bad_file(path, m),
            other => other,
        })
    }

    /// Reads a parsed HF `config.json` (transformers 4 or 5 keys; a multimodal Gemma 3
    /// config through its `text_config`). A field that would change the computation
    /// but is not implemented is refused by name ([`ModelError::BadInput`]), never
    /// ignored; an unknown `model_type` is [`ModelError::UnsupportedArchitecture`].
    pub fn from_hf_config(cfg: &Value) -> Result<Self> {
        let model_type = get_str(cfg, "model_type")
            .ok_or_else(|| ModelError::BadInput("config has no `model_type`".into()))?;
        // Multimodal Gemma 3 (4B and up) wraps the text model's config.
        if model_type == "gemma3" {
            return match cfg.get("text_config").filter(|t| t.is_object()) {
                Some(text) => {
                    let mut text = text.clone();
                    text["model_type"] = Value::from("gemma3_text");
                    Self::from_hf_config(&text)
                }
                None => Err(ModelError::BadInput(
                    "model_type `gemma3` without a `text_config`: expected Gemma 3's multimodal config (or a `gemma3_text` one)".into(),
                )),
            };
        }
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
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadInput(format!(
                "num_attention_heads ({n_heads}) must be a positive multiple of num_key_value_heads ({n_kv_heads})"
            )));
        }
        if n_layers > MAX_LAYERS {
            return Err(ModelError::BadInput(format!(
                "num_hidden_layers = {n_layers} is not a plausible layer count (at most {MAX_LAYERS})"
            )));
        }
        let d_head = get_usize(cfg, &["head_dim"]).unwrap_or(d_model / n_heads);
        let n_ctx = need(&["max_position_embeddings", "n_positions", "n_ctx"])?;
        let d_mlp = match arch {
            Architecture::Gpt2 => get_usize(cfg, &["n_inner"]).unwrap_or(4 * d_model),
            _ => need(&["intermediate_size"])?,
        };
        let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
        let act_name = if gemma {
            get_str(cfg, "hidden_activation").or_else(|| get_str(cfg, "hidden_act"))
        } else {
            get_str(cfg, "hidden_act").or_else(|| get_str(cfg, "activation_function"))
        }
        .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let activation = Activation::parse(act_name)?;
        let tied_default = !matches!(arch, Architecture::GptNeox);
        let tied_embeddings = get_bool(cfg, "tie_word_embeddings").unwrap_or(tied_default);
        let global_rope = rope_params(cfg, "full_attention");
        let rope_theta = get_f64(cfg, &["rope_theta"])
            .or_else(|| global_rope.and_then(|r| get_f64(r, &["rope_theta"])))
            .unwrap_or(10000.0);
        let rope_scaling = parse_rope_scaling(global_rope)?;
        // transformers 4's key beside transformers 5's: both must say the same.
        if cfg.get("rope_parameters").is_some_and(Value::is_object) {
            if let Some(legacy) = cfg.get("rope_scaling").filter(|v| v.is_object()) {
                if parse_rope_scaling(Some(legacy))? != rope_scaling {
                    return Err(refused(
                        "rope_scaling",
                        "it disagrees with the config's rope_parameters",
                    ));
                }
            }
        }
        let partial_rotary = get_f64(cfg, &["partial_rotary_factor", "rotary_pct"])
            .or_else(|| global_rope.and_then(|r| get_f64(r, &["partial_rotary_factor"])))
            .unwrap_or(1.0);
        if !(partial_rotary > 0.0 && partial_rotary <= 1.0) {
            return Err(ModelError::BadInput(format!(
                "partial_rotary_factor = {partial_rotary} must lie in (0, 1]"
            )));
        }
        let attention_bias = get_bool(cfg, "attention_bias");
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
            tied_embeddings,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: first_u32(cfg.get("bos_token_id")),
            eos_token_id: first_u32(cfg.get("eos_token_id")),
        };
        let window = get_usize(cfg, &["sliding_window"]);
        match arch {
            Architecture::Llama => {
                c.qkv_bias = attention_bias.unwrap_or(false);
                c.o_bias = c.qkv_bias;
                c.mlp_bias = get_bool(cfg, "mlp_bias").unwrap_or(false);
            }
            Architecture::Mistral => {
                c.set_window(cfg, window, |_| true)?;
            }
            Architecture::Qwen2 | Architecture::Qwen3 => {
                if arch == Architecture::Qwen2 {
                    c.qkv_bias = true;
                } else {
                    c.qkv_bias = attention_bias.unwrap_or(false);
                    c.o_bias = c.qkv_bias;
                    c.qk_norm = Some(QkNorm::PerHead);
                }
                // HF keeps the window only with use_sliding_window, and then only from
                // layer max_window_layers on.
                if get_bool(cfg, "use_sliding_window") == Some(true) {
                    let from = get_usize(cfg, &["max_window_layers"]).unwrap_or(28);
                    c.set_window(cfg, window, |l| l >= from)?;
                }
            }
            Architecture::Gemma2 | Architecture::Gemma3 => {
                c.norm = NormKind::RmsNormUnitOffset;
                c.post_sublayer_norms = true;
                c.embed_scale = Some((d_model as f64).sqrt());
                c.qkv_bias = attention_bias.unwrap_or(false);
                c.o_bias = c.qkv_bias;
                if let Some(s) = get_f64(cfg, &["query_pre_attn_scalar"]) {
                    c.attn_scale = 1.0 / s.sqrt();
                }
                c.attn_softcap = get_f64(cfg, &["attn_logit_softcapping"]);
                c.final_softcap = get_f64(cfg, &["final_logit_softcapping"]);
                if arch == Architecture::Gemma3 && c.attn_softcap.is_some() {
                    // HF's Gemma 3 reads the field but never passes it to attention.
                    return Err(refused(
                        "attn_logit_softcapping",
                        "HF transformers' Gemma 3 ignores it, so no result would match the reference",
                    ));
                }
                if arch == Architecture::Gemma2 {
                    // Gemma 2 default: even layers slide, odd layers attend globally.
                    c.set_window(cfg, window, |l| l % 2 == 0)?;
                } else {
                    c.qk_norm = Some(QkNorm::PerHead);
                    let pattern =
                        get_usize(cfg, &["sliding_window_pattern", "_sliding_window_pattern"])
                            .unwrap_or(6)
                            .max(1);
                    c.set_window(cfg, window, |l| (l + 1) % pattern != 0)?;
                    let local =
                        rope_params(cfg, "sliding_attention").filter(|_| is_per_layer_rope(cfg));
                    if parse_rope_scaling(local)? != RopeScaling::Default {
                        return Err(ModelError::BadInput(
                            "rope_parameters.sliding_attention: only the default rope type is supported on Gemma 3's local layers".into(),
                        ));
                    }
                    c.rope_local_theta = Some(
                        get_f64(cfg, &["rope_local_base_freq"])
                            .or_else(|| local.and_then(|r| get_f64(r, &["rope_theta"])))
                            .unwrap_or(10000.0),
                    );
                }
                if get_bool(cfg, "use_bidirectional_attention") == Some(true) {
                    return Err(refused(
                        "use_bidirectional_attention = true",
                        "only causal attention is implemented",
                    ));
                }
            }
            Architecture::Phi3 => {
                c.set_window(cfg, window, |_| true)?;
            }
            Architecture::Olmo2 => {
                c.qkv_bias = attention_bias.unwrap_or(false);
                c.o_bias = c.qkv_bias;
                c.qk_norm = Some(QkNorm::AllHeads);
                c.pre_norms = false;
                c.post_sublayer_norms = true;
            }
            Architecture::Gpt2 => {
                c.norm = NormKind::LayerNorm;
                c.gated_mlp = false;
                c.rotary_dim = None;
                c.qkv_bias = true;
                c.o_bias = true;
                c.mlp_bias = true;
                c.tied_embeddings = true;
                if get_bool(cfg, "scale_attn_by_inverse_layer_idx") == Some(true) {
                    return Err(refused(
                        "scale_attn_by_inverse_layer_idx = true",
                        "not implemented for gpt2",
                    ));
                }
                if get_bool(cfg, "scale_attn_weights") == Some(false) {
                    return Err(refused(
                        "scale_attn_weights = false",
                        "not implemented for gpt2",
                    ));
                }
            }
            Architecture::GptNeox => {
                c.norm = NormKind::LayerNorm;
                c.gated_mlp = false;
                c.qkv_bias = attention_bias.unwrap_or(true);
                c.o_bias = c.qkv_bias;
                c.mlp_bias = true;
                c.parallel_residual = get_bool(cfg, "use_parallel_residual").unwrap_or(true);
                c.rope_theta = get_f64(cfg, &["rotary_emb_base"]).unwrap_or(rope_theta);
            }
        }
        if matches!(arch, Architecture::Phi3 | Architecture::GptNeox) {
            let rot = (d_head as f64 * partial_rotary) as usize;
            if rot == 0 || !rot.is_multiple_of(2) {
                return Err(ModelError::BadInput(format!(
                    "partial_rotary_factor = {partial_rotary} gives a rotary width of {rot} of {d_head} dims; it must be even and positive"
                )));
            }
            c.rotary_dim = Some(rot);
        } else if partial_rotary != 1.0 {
            return Err(refused(
                &format!("partial_rotary_factor = {partial_rotary}"),
                &format!("{} rotates every head dimension", arch.name()),
            ));
        }
        c.refuse_unimplemented(cfg)?;
        Ok(c)
    }

    /// Sets the sliding window from `sliding_window` and `layer_types` (or `default`
    /// per layer when the config has no `layer_types`).
    fn set_window(
        &mut self,
        cfg: &Value,
        window: Option<usize>,
        default: impl Fn(usize) -> bool,
    ) -> Result<()> {
        let Some(w) = window else {
            return Ok(());
        };
        if w == 0 {
            return Err(ModelError::BadInput(
                "sliding_window = 0 would let no token see any other".into(),
            ));
        }
        self.sliding_window = Some(w);
        self.sliding_layers = match layer_types(cfg, self.n_layers)? {
            Some(types) => types,
            None => (0..self.n_layers).map(default).collect(),
        };
        Ok(())
    }

    /// Config fields that would change the computation but are not implemented for
    /// this architecture: refused by name, never ignored.
    fn refuse_unimplemented(&self, cfg: &Value) -> Result<()> {
        let arch = self.architecture.name();
        let set = |k: &str| {
            cfg.get(k)
                .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        };
        let gemma = matches!(
            self.architecture,
            Architecture::Gemma2 | Architecture::Gemma3
        );
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if set(key) && !gemma {
                return Err(refused(key, &format!("{arch} has no soft-capping")));
            }
        }
        if self.sliding_window.is_none() {
            let types = layer_types(cfg, self.n_layers)?;
            if types.is_some_and(|t| t.iter().any(|&s| s)) {
                return Err(refused(
                    "layer_types with sliding_attention",
                    "the config sets no sliding_window for them",
                ));
            }
            let honoured = matches!(self.architecture, Architecture::Qwen2 | Architecture::Qwen3);
            if set("sliding_window") && !honoured {
                return Err(refused(
                    "sliding_window",
                    &format!("{arch} has no sliding-window attention in HF transformers"),
                ));
            }
        }
        if set("use_qk_norm") && self.qk_norm.is_none() {
            return Err(refused("use_qk_norm", &format!("{arch} has no q/k norm")));
        }
        if set("mlp_bias") && !self.mlp_bias {
            return Err(refused("mlp_bias", &format!("{arch}'s MLP has no biases")));
        }
        if set("attention_bias") && !self.qkv_bias {
            return Err(refused(
                "attention_bias",
                &format!("{arch}'s attention has no biases"),
            ));
        }
        for key in [
            "clip_qkv",
            "logit_scale",
            "embedding_multiplier",
            "residual_multiplier",
        ] {
            if set(key) {
                return Err(refused(key, "not implemented"));
            }
        }
        Ok(())
    }

    /// Query heads sharing one key/value head (`n_heads / n_kv_heads`; 1 without
    /// grouped-query attention).
    pub fn n_query_groups(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}
