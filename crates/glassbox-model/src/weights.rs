//! Architecture-neutral weight layout and the HF safetensors loader. Every loader
//! produces `ModelWeights` in HF orientation (`[out, in]` for linear maps) so the
//! forward pass has a single shape convention.

use crate::config::{Architecture, ModelConfig, QkNorm};
use crate::error::{ModelError, Result};
use crate::stored::{SafetensorsFile, StoredTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A linear map in f32, `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    /// `[out]`, when the map has one
    pub bias: Option<Tensor>,
}

/// A norm's parameters in f32 (Gemma's `1 +` offset already folded into the weight).
#[derive(Debug, Clone)]
pub struct Norm {
    /// the scale `[width]`
    pub weight: Tensor,
    /// the shift `[width]` (LayerNorm only)
    pub bias: Option<Tensor>,
}

/// A linear map as stored: the weight in its checkpoint precision, the bias in f32.
#[derive(Debug, Clone)]
pub struct StoredLinear {
    /// `[out, in]`
    pub weight: StoredTensor,
    /// `[out]`, when the map has one
    pub bias: Option<Tensor>,
}

impl StoredLinear {
    /// The map in f32.
    pub fn expand(&self) -> Result<Linear> {
        Ok(Linear {
            weight: self.weight.expand()?,
            bias: self.bias.clone(),
        })
    }
    /// Rows `start..start+len` (fused checkpoint matrices: Phi-3's qkv and gate_up).
    fn rows(&self, start: usize, len: usize) -> Result<StoredLinear> {
        let weight = match &self.weight {
            StoredTensor::Dense(t) => StoredTensor::Dense(t.narrow(0, start, len)?),
            q => StoredTensor::Dense(q.expand()?.narrow(0, start, len)?),
        };
        Ok(StoredLinear {
            weight,
            bias: match &self.bias {
                Some(b) => Some(b.narrow(0, start, len)?),
                None => None,
            },
        })
    }
}

impl From<Linear> for StoredLinear {
    fn from(l: Linear) -> Self {
        StoredLinear {
            weight: StoredTensor::Dense(l.weight),
            bias: l.bias,
        }
    }
}

/// One block's weights as a loader reads them: matrices as stored, norms in f32.
#[derive(Debug, Clone)]
pub struct BlockParts {
    /// `None` where the architecture has no pre-norms (OLMo 2)
    pub ln1: Option<Norm>,
    /// the norm before the MLP (`None` for OLMo 2)
    pub ln2: Option<Norm>,
    /// the norm on the attention output (Gemma 2/3, OLMo 2)
    pub ln1_post: Option<Norm>,
    /// the norm on the MLP output (Gemma 2/3, OLMo 2)
    pub ln2_post: Option<Norm>,
    /// `W_Q` `[n_heads d_head, d_model]`
    pub q: StoredLinear,
    /// `W_K` `[n_kv_heads d_head, d_model]`
    pub k: StoredLinear,
    /// `W_V` `[n_kv_heads d_head, d_model]`
    pub v: StoredLinear,
    /// RMSNorm weights on queries and keys (`[d_head]` per head, or all heads' width)
    pub q_norm: Option<Norm>,
    /// RMSNorm weights on keys (as `q_norm`)
    pub k_norm: Option<Norm>,
    /// `W_O` `[d_model, n_heads d_head]`
    pub o: StoredLinear,
    /// up projection (gated) or the input projection (gpt2/neox)
    pub mlp_in: StoredLinear,
    /// gate projection `[d_mlp, d_model]` of a gated MLP
    pub mlp_gate: Option<StoredLinear>,
    /// down (output) projection `[d_model, d_mlp]`
    pub mlp_out: StoredLinear,
}

impl BlockParts {
    fn matrices(&self) -> impl Iterator<Item = &StoredTensor> {
        [
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.mlp_in,
            &self.mlp_out,
        ]
        .into_iter()
        .chain(self.mlp_gate.as_ref())
        .map(|l| &l.weight)
    }
    /// Bytes the block's matrices take in f32 (norms and biases not counted).
    pub fn expanded_bytes(&self) -> usize {
        self.matrices().map(StoredTensor::expanded_bytes).sum()
    }
    fn all_f32(&self) -> bool {
        self.matrices().all(StoredTensor::is_f32)
    }
}

/// A block as the model holds it: ready in f32 (f32 checkpoints, or small enough to
/// keep expanded after first use), or stored and expanded each time it runs.
#[derive(Debug)]
pub enum Block {
    /// f32 weights, used as they are
    Ready(BlockWeights),
    /// weights in another precision, expanded when the block runs
    Stored {
        /// the weights as stored
        parts: Box<BlockParts>,
        /// `Some`: expand once, on first use, and keep it
        keep: Option<std::sync::OnceLock<BlockWeights>>,
        /// how many times this block has been expanded
        expansions: std::sync::atomic::AtomicUsize,
    },
}

impl Block {
    /// `keep_expanded`: keep the f32 form after first use instead of expanding per pass.
    pub fn new(parts: BlockParts, keep_expanded: bool) -> Result<Self> {
        if parts.all_f32() {
            return Ok(Block::Ready(BlockWeights::fuse(&parts)?));
        }
        Ok(Block::Stored {
            parts: Box::new(parts),
            keep: keep_expanded.then(std::sync::OnceLock::new),
            expansions: Default::default(),
        })
    }

    /// The block's f32 weights, expanding them now if they are stored in another precision.
    pub fn get(&self) -> Result<std::borrow::Cow<'_, BlockWeights>> {
        use std::borrow::Cow;
        use std::sync::atomic::Ordering;
        match self {
            Block::Ready(w) => Ok(Cow::Borrowed(w)),
            Block::Stored {
                parts,
                keep: None,
                expansions,
            } => {
                expansions.fetch_add(1, Ordering::Relaxed);
                Ok(Cow::Owned(BlockWeights::fuse(parts)?))
            }
            Block::Stored {
                parts,
                keep: Some(cell),
                expansions,
            } => {
                if let Some(w) = cell.get() {
                    return Ok(Cow::Borrowed(w));
                }
                expansions.fetch_add(1, Ordering::Relaxed);
                let w = BlockWeights::fuse(parts)?;
                Ok(Cow::Borrowed(cell.get_or_init(|| w)))
            }
        }
    }

    /// How many times this block has been expanded from its stored precision.
    pub fn times_expanded(&self) -> usize {
        match self {
            Block::Ready(_) => 0,
            Block::Stored { expansions, .. } => {
                expansions.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
    }

    /// Whether this block is expanded each time it runs.
    pub fn expands_per_pass(&self) -> bool {
        matches!(self, Block::Stored { keep: None, .. })
    }
}

/// Blocks are kept expanded after first use when all of them together stay under this
/// (so generation on small models does not re-expand every token); larger models
/// expand one layer at a time. `LoadOptions::keep_expanded_bytes` overrides it.
pub const DEFAULT_KEEP_EXPANDED_BYTES: usize = 2 << 30;

/// Wraps every block, keeping them expanded if their f32 size fits `budget`.
pub fn make_blocks(parts: Vec<BlockParts>, budget: usize) -> Result<Vec<Block>> {
    let expanded: usize = parts
        .iter()
        .filter(|p| !p.all_f32())
        .map(BlockParts::expanded_bytes)
        .sum();
    let keep = expanded <= budget;
    parts.into_iter().map(|p| Block::new(p, keep)).collect()
}

/// One block's weights as the forward pass uses them: Q, K and V stacked into one
/// matrix, and gate and up stacked into one, so each is a single GEMM. The separate
/// matrices are views into that storage (held once).
#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// `None` where the architecture has no pre-norms (OLMo 2)
    pub ln1: Option<Norm>,
    /// the norm before the MLP (`None` for OLMo 2)
    pub ln2: Option<Norm>,
    /// the norm on the attention output (Gemma 2/3, OLMo 2)
    pub ln1_post: Option<Norm>,
    /// the norm on the MLP output (Gemma 2/3, OLMo 2)
    pub ln2_post: Option<Norm>,
    /// `[q; k; v]`: `[(n_heads + 2 n_kv_heads) d_head, d_model]`
    pub qkv: Linear,
    /// RMSNorm weights on queries (`[d_head]` per head, or all heads' width)
    pub q_norm: Option<Norm>,
    /// RMSNorm weights on keys (as `q_norm`)
    pub k_norm: Option<Norm>,
    /// `W_O` `[d_model, n_heads d_head]`
    pub o: Linear,
    /// gated: `[gate; up]` `[2 d_mlp, d_model]`; plain: the input projection `[d_mlp, d_model]`
    pub mlp_in: Linear,
    /// whether `mlp_in` stacks gate and up (llama family) or is one projection (gpt2, neox)
    pub gated: bool,
    /// down (output) projection `[d_model, d_mlp]`
    pub mlp_out: Linear,
    q_rows: usize,
    kv_rows: usize,
}

/// Stored linears expanded into one stacked f32 linear in a single pass.
fn expand_stack(parts: &[&StoredLinear]) -> Result<Linear> {
    let weights: Vec<&StoredTensor> = parts.iter().map(|l| &l.weight).collect();
    let weight = crate::stored::expand_stacked(&weights)?;
    let biases: Vec<Option<Tensor>> = parts.iter().map(|l| l.bias.clone()).collect();
    let bias = if biases.iter().all(Option::is_none) {
        None
    } else {
        // Mixed: give the bias-free parts zero biases so the stack stays exact.
        let filled: Vec<Tensor> = parts
            .iter()
            .zip(&biases)
            .map(|(l, b)| match b {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight.dims()[0], DType::F32, &Device::Cpu),
            })
            .collect::<candle_core::Result<_>>()?;
        Some(Tensor::cat(&filled, 0)?)
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
    /// Expands the stored matrices to f32, stacking Q/K/V and gate/up as it goes.
    pub fn fuse(p: &BlockParts) -> Result<Self> {
        let q_rows = p.q.weight.dims()[0];
        let kv_rows = p.k.weight.dims()[0];
        let qkv = expand_stack(&[&p.q, &p.k, &p.v])?;
        let (mlp_in, gated) = match &p.mlp_gate {
            Some(gate) => (expand_stack(&[gate, &p.mlp_in])?, true),
            None => (p.mlp_in.expand()?, false),
        };
        Ok(BlockWeights {
            ln1: p.ln1.clone(),
            ln2: p.ln2.clone(),
            ln1_post: p.ln1_post.clone(),
            ln2_post: p.ln2_post.clone(),
            qkv,
            q_norm: p.q_norm.clone(),
            k_norm: p.k_norm.clone(),
            o: p.o.expand()?,
            mlp_in,
            gated,
            mlp_out: p.mlp_out.expand()?,
            q_rows,
            kv_rows,
        })
    }
    /// `W_Q` as `[n_heads d_head, d_model]` (a view)
    pub fn q(&self) -> Result<Linear> {
        rows(&self.qkv, 0, self.q_rows)
    }
    /// `W_K` as `[n_kv_heads d_head, d_model]` (a view)
    pub fn k(&self) -> Result<Linear> {
        rows(&self.qkv, self.q_rows, self.kv_rows)
    }
    /// `W_V` as `[n_kv_heads d_head, d_model]` (a view)
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

/// All of a model's weights, in HF orientation; matrices in their stored precision.
#[derive(Debug)]
pub struct ModelWeights {
    /// `[vocab, d_model]`, as stored (rows are expanded when looked up)
    pub embed: StoredTensor,
    /// `[n_ctx, d_model]` learned positions (gpt2)
    pub pos_embed: Option<Tensor>,
    /// one per layer
    pub blocks: Vec<Block>,
    /// the final norm, before the unembedding
    pub ln_final: Norm,
    /// `[vocab, d_model]`, as stored; shares storage with `embed` when tied
    pub unembed: StoredTensor,
    /// `[vocab]`: only after TransformerLens processing folds a LayerNorm bias into it
    pub unembed_bias: Option<Tensor>,
}

impl ModelWeights {
    /// The unembedding in f32 (the whole matrix: for analyses, not the forward pass).
    pub fn unembed_f32(&self) -> Result<Tensor> {
        self.unembed.expand()
    }
}

/// Named f32 tensors from any checkpoint, with shape checks that name the culprit.
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
    prefixes: &'static [&'static str],
}

impl TensorMap {
    /// The tensors by checkpoint name; a name asked for is also looked up behind each of
    /// `prefixes` (`model.`, `transformer.`, …).
    pub fn new(tensors: HashMap<String, Tensor>, prefixes: &'static [&'static str]) -> Self {
        TensorMap { tensors, prefixes }
    }

    /// Whether `name` (bare or behind a prefix) is still in the map.
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn resolve(&self, name: &str) -> Option<String> {
        std::iter::once(String::new())
            .chain(self.prefixes.iter().map(|p| p.to_string()))
            .map(|p| format!("{p}{name}"))
            .find(|n| self.tensors.contains_key(n))
    }

    /// Removes and returns the tensor in f32, checking its shape and that it is stored as
    /// f32, bf16 or f16. Absent: [`ModelError::MissingTensor`]; another shape:
    /// [`ModelError::ShapeMismatch`].
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let key = self
            .resolve(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let t = self.tensors.remove(&key).expect("resolved key exists");
        check_shape(&key, &t, shape)?;
        check_float(&key, &t)?;
        crate::stored::to_f32(&t)
    }

    /// Removes and returns a weight matrix in its stored precision, checking its shape.
    pub fn take_stored(&mut self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        let key = self
            .resolve(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let t = self.tensors.remove(&key).expect("resolved key exists");
        check_shape(&key, &t, shape)?;
        check_float(&key, &t)?;
        Ok(StoredTensor::Dense(t))
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

    /// [`take`](Self::take), `None` when the checkpoint has no such tensor.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn check_float(name: &str, t: &Tensor) -> Result<()> {
    if matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return Ok(());
    }
    Err(ModelError::BadInput(format!(
        "tensor `{name}` is stored as {:?}; a weight must be f32, bf16 or f16",
        t.dtype()
    )))
}

/// [`ModelError::ShapeMismatch`] unless tensor `name` has exactly `shape`.
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

const HF_PREFIXES: &[&str] = &[
    "model.",
    "transformer.",
    "gpt_neox.",
    // multimodal Gemma 3: transformers 4 and 5 name its text model differently
    "language_model.model.",
    "language_model.",
    "model.language_model.",
];

/// Reads every tensor of the checkpoint one at a time, in its stored precision: the
/// peak is the checkpoint's size plus its largest tensor, never twice the file.
fn read_checkpoint(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for path in safetensor_files(dir)? {
        let mut file = SafetensorsFile::open(&path)?;
        let entries = std::mem::take(&mut file.entries);
        for (name, entry) in entries {
            let t = file.read(&entry).map_err(|e| {
                ModelError::bad_file(&path, format!("cannot read tensor `{name}`: {e}"))
            })?;
            tensors.insert(name, t);
        }
    }
    Ok(tensors)
}

/// Reads a HF directory's safetensors weights for `cfg`, blocks kept expanded when they
/// fit [`DEFAULT_KEEP_EXPANDED_BYTES`]. Every tensor must be used: one the config does
/// not describe is an error, never ignored.
pub fn load_hf_weights(dir: &Path, cfg: &ModelConfig) -> Result<ModelWeights> {
    load_hf_weights_with(dir, cfg, DEFAULT_KEEP_EXPANDED_BYTES)
}

/// As `load_hf_weights`, keeping blocks expanded after first use only if all of them
/// fit `keep_expanded_bytes` in f32.
pub fn load_hf_weights_with(
    dir: &Path,
    cfg: &ModelConfig,
    keep_expanded_bytes: usize,
) -> Result<ModelWeights> {
    let tensors = read_checkpoint(dir)?;
    let mut map = TensorMap::new(tensors, HF_PREFIXES);
    let weights = match cfg.architecture {
        Architecture::Gpt2 => gpt2_weights(&mut map, cfg)?,
        Architecture::GptNeox => neox_weights(&mut map, cfg)?,
        _ => llama_family_weights(&mut map, cfg)?,
    };
    map.finish()?;
    weights.into_model(keep_expanded_bytes)
}

fn linear(
    map: &mut TensorMap,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<StoredLinear> {
    let weight = map.take_stored(&format!("{name}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(map.take(&format!("{name}.bias"), &[out])?)
    } else {
        None
    };
    Ok(StoredLinear { weight, bias })
}

/// A loader's result before the blocks are wrapped for expansion.
pub struct LoadedWeights {
    /// `[vocab, d_model]`, as stored
    pub embed: StoredTensor,
    /// `[n_ctx, d_model]` learned positions (gpt2)
    pub pos_embed: Option<Tensor>,
    /// one per layer, as read
    pub blocks: Vec<BlockParts>,
    /// the final norm
    pub ln_final: Norm,
    /// `[vocab, d_model]`, as stored (a clone of `embed` when tied)
    pub unembed: StoredTensor,
}

impl LoadedWeights {
    /// The model's weights, blocks kept expanded after first use if all of them fit
    /// `keep_expanded_bytes` in f32 ([`make_blocks`]); no unembedding bias.
    pub fn into_model(self, keep_expanded_bytes: usize) -> Result<ModelWeights> {
        Ok(ModelWeights {
            embed: self.embed,
            pos_embed: self.pos_embed,
            blocks: make_blocks(self.blocks, keep_expanded_bytes)?,
            ln_final: self.ln_final,
            unembed: self.unembed,
            unembed_bias: None,
        })
    }
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

fn llama_family_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<LoadedWeights> {
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
                qkv.rows(0, hq)?,
                qkv.rows(hq, hkv)?,
                qkv.rows(hq + hkv, hkv)?,
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
            (gate_up.rows(m, m)?, gate_up.rows(0, m)?)
        } else {
            (
                linear(map, &format!("{p}.mlp.up_proj"), m, d, c.mlp_bias)?,
                linear(map, &format!("{p}.mlp.gate_proj"), m, d, c.mlp_bias)?,
            )
        };
        blocks.push(BlockParts {
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
        });
    }
    let embed = map.take_stored("embed_tokens.weight", &[c.d_vocab, d])?;
    let unembed = if c.tied_embeddings {
        // A tied checkpoint may still carry a copy of the embedding as lm_head; a
        // different one is a contradiction HF versions resolve differently.
        if map.contains("lm_head.weight") {
            let head = map.take_stored("lm_head.weight", &[c.d_vocab, d])?;
            if !head.same_values(&embed)? {
                return Err(ModelError::BadInput(
                    "config field `tie_word_embeddings` is true but the checkpoint's lm_head.weight differs from embed_tokens.weight; set it to false if the model is untied".into(),
                ));
            }
        }
        embed.clone()
    } else {
        map.take_stored("lm_head.weight", &[c.d_vocab, d])
            .map_err(|e| match e {
                ModelError::MissingTensor(_) => ModelError::MissingTensor(
                    "lm_head.weight (the config says tie_word_embeddings = false)".into(),
                ),
                other => other,
            })?
    };
    Ok(LoadedWeights {
        embed,
        pos_embed: None,
        blocks,
        ln_final: norm(map, "norm", d)?,
        unembed,
    })
}

/// GPT-2 stores Conv1D weights as `[in, out]`; transpose once so all linears are `[out, in]`.
fn conv1d(map: &mut TensorMap, name: &str, inp: usize, out: usize) -> Result<StoredLinear> {
    let w = map.take_stored(&format!("{name}.weight"), &[inp, out])?;
    Ok(StoredLinear {
        weight: StoredTensor::Dense(w.dense()?.t()?.contiguous()?),
        bias: Some(map.take(&format!("{name}.bias"), &[out])?),
    })
}

fn split_rows(l: &StoredLinear, parts: usize) -> Result<Vec<StoredLinear>> {
    let n = l.weight.dims()[0] / parts;
    (0..parts).map(|i| l.rows(i * n, n)).collect()
}

fn gpt2_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<LoadedWeights> {
    let (d, m) = (c.d_model, c.d_mlp);
    let mut blocks = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("h.{l}");
        let qkv = split_rows(&conv1d(map, &format!("{p}.attn.c_attn"), d, 3 * d)?, 3)?;
        let [q, k, v]: [StoredLinear; 3] = qkv.try_into().expect("three parts");
        blocks.push(BlockParts {
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
        });
    }
    let embed = map.take_stored("wte.weight", &[c.d_vocab, d])?;
    Ok(LoadedWeights {
        unembed: embed.clone(),
        embed,
        pos_embed: Some(map.take("wpe.weight", &[c.n_ctx, d])?),
        blocks,
        ln_final: norm(map, "ln_f", d, true)?,
    })
}

fn neox_weights(map: &mut TensorMap, c: &ModelConfig) -> Result<LoadedWeights> {
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
        let w = qkv.weight.dense()?.reshape((h, 3, dh, d))?;
        let b = match &qkv.bias {
            Some(b) => Some(b.reshape((h, 3, dh))?),
            None => None,
        };
        let part = |i: usize| -> Result<StoredLinear> {
            Ok(StoredLinear {
                weight: StoredTensor::Dense(w.narrow(1, i, 1)?.reshape((h * dh, d))?.contiguous()?),
                bias: match &b {
                    Some(b) => Some(b.narrow(1, i, 1)?.reshape(h * dh)?.contiguous()?),
                    None => None,
                },
            })
        };
        blocks.push(BlockParts {
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
        });
    }
    let embed = map.take_stored("embed_in.weight", &[c.d_vocab, d])?;
    let unembed = if c.tied_embeddings {
        if map.contains("embed_out.weight") {
            map.take_stored("embed_out.weight", &[c.d_vocab, d])?;
        }
        embed.clone()
    } else {
        map.take_stored("embed_out.weight", &[c.d_vocab, d])?
    };
    Ok(LoadedWeights {
        embed,
        pos_embed: None,
        blocks,
        ln_final: norm(map, "final_layer_norm", d, true)?,
        unembed,
    })
}
