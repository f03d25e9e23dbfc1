//! Hook points with TransformerLens names: which exist for a model, glob filters over
//! them, and the interventions (replace, add, ablate, scale, patch) that edit them.

use crate::config::{Architecture, ModelConfig, QkNorm};
use crate::error::{ModelError, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// How a hook point's axes are laid out; interventions use it to find the position
/// and head axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookLayout {
    /// `[batch, pos, width]`
    Stream,
    /// `[batch, pos, head, d_head]`
    PerHead,
    /// `[batch, head, query_pos, key_pos]`
    Pattern,
}

impl HookLayout {
    /// The layout of the hook point `name`, from its last component: `hook_q`, `hook_k`,
    /// `hook_v`, `hook_z`, `hook_rot_q`, `hook_rot_k` are [`PerHead`](Self::PerHead),
    /// `hook_attn_scores` and `hook_pattern` are [`Pattern`](Self::Pattern), every other
    /// name [`Stream`](Self::Stream) (including `attn.hook_result`, `hook_q_input` and
    /// the q/k-norm hooks, although they have a head axis).
    pub fn of(name: &str) -> HookLayout {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        match leaf {
            "hook_q" | "hook_k" | "hook_v" | "hook_z" | "hook_rot_q" | "hook_rot_k" => {
                HookLayout::PerHead
            }
            "hook_attn_scores" | "hook_pattern" => HookLayout::Pattern,
            _ => HookLayout::Stream,
        }
    }
    /// The sequence-position axis (the query position for patterns).
    pub fn pos_axis(self) -> usize {
        match self {
            HookLayout::Stream | HookLayout::PerHead => 1,
            HookLayout::Pattern => 2,
        }
    }
    /// The head axis; `None` for [`Stream`](Self::Stream).
    pub fn head_axis(self) -> Option<usize> {
        match self {
            HookLayout::Stream => None,
            HookLayout::PerHead => Some(2),
            HookLayout::Pattern => Some(1),
        }
    }
}

/// One dimension of a hook point's shape: a name, and its size when the model fixes it
/// (`d_model = 576`), not when the input does (`batch`, `pos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim {
    /// `batch`, `pos`, `head`, `d_head`, `d_model`, `d_mlp`, `query_pos`, …; empty for a
    /// unit dimension (a norm's scale)
    pub name: &'static str,
    /// the size the model fixes; `None` when the input decides it
    pub size: Option<usize>,
}

impl Dim {
    /// A dimension the input decides.
    pub const fn free(name: &'static str) -> Dim {
        Dim { name, size: None }
    }

    /// A dimension the model fixes.
    pub const fn sized(name: &'static str, size: usize) -> Dim {
        Dim {
            name,
            size: Some(size),
        }
    }
}

/// `batch`, `d_model=576`, or `1` for a unit dimension (TransformerLens' notation).
impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name, self.size) {
            ("", Some(n)) => write!(f, "{n}"),
            (name, Some(n)) => write!(f, "{name}={n}"),
            (name, None) => f.write_str(name),
        }
    }
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One hook point of a model, as [`hook_points`] lists it (and `glassbox inspect` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct HookPointInfo {
    /// the TransformerLens name, e.g. `blocks.3.hook_resid_post`
    pub name: String,
    /// e.g. `[batch, pos, d_model=576]` (serialised as those strings)
    pub shape: Vec<Dim>,
}

impl HookPointInfo {
    /// The width of one row of an activation laid out `[batch, pos, …]` with every
    /// later dimension fixed (per-head hooks flatten head × d_head); `None` for the
    /// attention patterns, whose last dimensions follow the input.
    pub fn row_width(&self) -> Option<usize> {
        match self.shape.get(..2) {
            Some([a, b]) if a.name == "batch" && b.name == "pos" => {}
            _ => return None,
        }
        self.shape[2..]
            .iter()
            .map(|d| d.size)
            .product::<Option<usize>>()
            .filter(|&w| w > 0)
    }

    /// The size of the dimension called `name`, when the model fixes it.
    pub fn size_of(&self, name: &str) -> Option<usize> {
        self.shape.iter().find(|d| d.name == name)?.size
    }

    /// The shape as TransformerLens writes it: `["batch", "pos", "d_model=576"]`.
    pub fn shape_strings(&self) -> Vec<String> {
        self.shape.iter().map(Dim::to_string).collect()
    }
}

/// Every hook point the model exposes, in execution order, with its shape. Which exist
/// depends on the config: `hook_pos_embed` for gpt2 only, `hook_attn_in` only without
/// grouped-query attention, `ln1`/`ln2` only with pre-norms, `ln1_post`/`ln2_post`
/// with post-sublayer norms, `attn.q_norm`/`attn.k_norm` with q/k norms, `hook_rot_q`/
/// `hook_rot_k` with rotary positions, `hook_resid_mid` unless attention and MLP run in
/// parallel, `mlp.hook_pre_linear` for gated MLPs.
pub fn hook_points(c: &ModelConfig) -> Vec<HookPointInfo> {
    let dim = Dim::sized;
    let (batch, pos) = (Dim::free("batch"), Dim::free("pos"));
    let stream = |w: Dim| vec![batch, pos, w];
    let heads = |h: usize| vec![batch, pos, dim("head", h), dim("d_head", c.d_head)];
    let pattern = vec![
        batch,
        dim("head", c.n_heads),
        Dim::free("query_pos"),
        Dim::free("key_pos"),
    ];
    let unit = Dim::sized("", 1);
    let scale = vec![batch, pos, unit];
    let dm = || dim("d_model", c.d_model);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<Dim>| out.push(HookPointInfo { name, shape });
    push("hook_embed".into(), stream(dm()));
    if c.architecture == Architecture::Gpt2 {
        push("hook_pos_embed".into(), stream(dm()));
    }
    for l in 0..c.n_layers {
        let b = format!("blocks.{l}");
        push(format!("{b}.hook_resid_pre"), stream(dm()));
        // per-head copies of the attention input (TransformerLens' split inputs)
        let inputs = |h: usize| vec![batch, pos, dim("head", h), dim("d_model", c.d_model)];
        if c.n_kv_heads == c.n_heads {
            push(format!("{b}.hook_attn_in"), inputs(c.n_heads));
        }
        push(format!("{b}.hook_q_input"), inputs(c.n_heads));
        push(format!("{b}.hook_k_input"), inputs(c.n_kv_heads));
        push(format!("{b}.hook_v_input"), inputs(c.n_kv_heads));
        if c.pre_norms {
            push(format!("{b}.ln1.hook_scale"), scale.clone());
            push(format!("{b}.ln1.hook_normalized"), stream(dm()));
        }
        if let Some(kind) = c.qk_norm {
            // per head: [batch, pos, head, 1]; across heads: [batch, pos, 1]
            for (which, n) in [("q_norm", c.n_heads), ("k_norm", c.n_kv_heads)] {
                let (scale_shape, normalized) = match kind {
                    QkNorm::PerHead => (vec![batch, pos, dim("head", n), unit], heads(n)),
                    QkNorm::AllHeads => (scale.clone(), stream(dim("head·d_head", n * c.d_head))),
                };
                push(format!("{b}.attn.{which}.hook_scale"), scale_shape);
                push(format!("{b}.attn.{which}.hook_normalized"), normalized);
            }
        }
        push(format!("{b}.attn.hook_q"), heads(c.n_heads));
        push(format!("{b}.attn.hook_k"), heads(c.n_kv_heads));
        push(format!("{b}.attn.hook_v"), heads(c.n_kv_heads));
        if c.rotary_dim.is_some() {
            push(format!("{b}.attn.hook_rot_q"), heads(c.n_heads));
            push(format!("{b}.attn.hook_rot_k"), heads(c.n_kv_heads));
        }
        push(format!("{b}.attn.hook_attn_scores"), pattern.clone());
        push(format!("{b}.attn.hook_pattern"), pattern.clone());
        push(format!("{b}.attn.hook_z"), heads(c.n_heads));
        push(format!("{b}.attn.hook_result"), inputs(c.n_heads));
        if c.post_sublayer_norms {
            push(format!("{b}.ln1_post.hook_scale"), scale.clone());
            push(format!("{b}.ln1_post.hook_normalized"), stream(dm()));
        }
        push(format!("{b}.hook_attn_out"), stream(dm()));
        if !c.parallel_residual {
            push(format!("{b}.hook_resid_mid"), stream(dm()));
        }
        push(format!("{b}.hook_mlp_in"), stream(dm()));
        if c.pre_norms {
            push(format!("{b}.ln2.hook_scale"), scale.clone());
            push(format!("{b}.ln2.hook_normalized"), stream(dm()));
        }
        push(format!("{b}.mlp.hook_pre"), stream(dim("d_mlp", c.d_mlp)));
        if c.gated_mlp {
            push(
                format!("{b}.mlp.hook_pre_linear"),
                stream(dim("d_mlp", c.d_mlp)),
            );
        }
        push(format!("{b}.mlp.hook_post"), stream(dim("d_mlp", c.d_mlp)));
        if c.post_sublayer_norms {
            push(format!("{b}.ln2_post.hook_scale"), scale.clone());
            push(format!("{b}.ln2_post.hook_normalized"), stream(dm()));
        }
        push(format!("{b}.hook_mlp_out"), stream(dm()));
        push(format!("{b}.hook_resid_post"), stream(dm()));
    }
    push("ln_final.hook_scale".into(), scale);
    push("ln_final.hook_normalized".into(), stream(dm()));
    out
}

/// A comma-free list of glob patterns (`*` matches any run of characters, dots included).
#[derive(Debug, Clone, Default)]
pub struct HookFilter {
    patterns: Vec<String>,
}

fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known hook name closest to `name`, for "did you mean" messages.
pub fn nearest_hook(name: &str, known: &[HookPointInfo]) -> Option<String> {
    known
        .iter()
        .map(|h| (edit_distance(name, &h.name), &h.name))
        .min()
        .map(|(_, n)| n.clone())
}

impl HookFilter {
    /// Matches every hook point (`*`).
    pub fn all() -> Self {
        HookFilter {
            patterns: vec!["*".into()],
        }
    }

    /// Parses `a,b,c` and checks that each pattern names at least one hook point.
    pub fn parse(spec: &str, cfg: &ModelConfig) -> Result<Self> {
        let patterns: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Self::new(patterns, cfg)
    }

    /// A filter of these glob patterns; [`ModelError::UnknownHook`] (with the nearest
    /// hook name as a suggestion) for a pattern that matches no hook point of `cfg`.
    pub fn new(patterns: Vec<String>, cfg: &ModelConfig) -> Result<Self> {
        let known = hook_points(cfg);
        for p in &patterns {
            if !known.iter().any(|h| glob_match(p, &h.name)) {
                // Suggest in the pattern's own terms: keep a `blocks.*` wildcard.
                let wildcard_layer = p.starts_with("blocks.*.");
                let suggestion = nearest_hook(&p.replace('*', "0"), &known)
                    .map(|n| match (wildcard_layer, layer_of(&n)) {
                        (true, Some(l)) => n.replacen(&format!("blocks.{l}."), "blocks.*.", 1),
                        _ => n,
                    })
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                return Err(ModelError::UnknownHook {
                    name: p.clone(),
                    suggestion,
                });
            }
        }
        Ok(HookFilter { patterns })
    }

    /// Whether any of the patterns matches the hook name `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, name))
    }

    /// How deep a pass must run to reach every matched hook: `Some(Some(l))`, the
    /// deepest block index any matched hook lives in; `Some(None)` when a matched hook
    /// is past the last block (`ln_final.*`); `None` when no matched hook lives in or
    /// after a block (only `hook_embed` / `hook_pos_embed`, or nothing).
    pub fn last_layer(&self, cfg: &ModelConfig) -> Option<Option<usize>> {
        let mut deepest = None;
        for h in hook_points(cfg).iter().filter(|h| self.matches(&h.name)) {
            let layer = layer_of(&h.name);
            if layer.is_none() && h.name.starts_with("ln_final") {
                return Some(None);
            }
            deepest = deepest.max(layer);
        }
        deepest.map(Some)
    }
}

/// Block index of a `blocks.{l}.…` hook name.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// What an intervention does to the selected entries of an activation.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Put this tensor in place — also how patching from another run's cache works.
    /// Same shape as the activation, or batch 1 (broadcast over the batch).
    Replace(Tensor),
    /// Add a vector over the last axis (`[width]`) or a tensor of the activation's shape.
    Add(Tensor),
    /// Set to zero.
    ZeroAblate,
    /// Replace by a mean: the given tensor (broadcast over batch and position), or, when
    /// `None`, the mean of this activation over batch and positions.
    MeanAblate(Option<Tensor>),
    /// Multiply by this factor.
    Scale(f64),
}

/// An [`Edit`], optionally restricted to some positions and heads: what
/// [`Run::intervene`](crate::Run::intervene) applies at each hook point its filter matches.
#[derive(Debug, Clone)]
pub struct Intervention {
    /// what is done to the selected entries
    pub edit: Edit,
    /// restrict to these sequence positions (query positions for attention patterns)
    pub positions: Option<Vec<usize>>,
    /// restrict to these heads (hooks with a head axis only)
    pub heads: Option<Vec<usize>>,
}

impl Intervention {
    /// The edit at every position and head.
    pub fn new(edit: Edit) -> Self {
        Intervention {
            edit,
            positions: None,
            heads: None,
        }
    }

    /// Restricts the edit to these sequence positions (query positions on attention
    /// patterns); a position past the sequence is an error when it is applied.
    pub fn at_positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// Restricts the edit to these heads; applied at a hook without a head axis (see
    /// [`HookLayout::of`]) it is [`ModelError::BadIntervention`].
    pub fn at_heads(mut self, heads: Vec<usize>) -> Self {
        self.heads = Some(heads);
        self
    }

    /// Applies the edit to `x`, the activation at hook `name`; entries outside the
    /// selected positions and heads keep their values. A tensor that does not fit `x`,
    /// or a position or head out of range, is [`ModelError::BadIntervention`].
    pub fn apply(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        let bad = |problem: String| ModelError::BadIntervention {
            hook: name.to_string(),
            problem,
        };
        let layout = HookLayout::of(name);
        let edited = match &self.edit {
            Edit::Replace(t)
                if t.dims() != x.dims()
                    && t.rank() == x.rank()
                    && t.dim(0)? == 1
                    && t.dims()[1..] == x.dims()[1..] =>
            {
                t.to_dtype(x.dtype())?
                    .broadcast_as(x.shape())?
                    .contiguous()?
            }
            Edit::Replace(t) => {
                if t.dims() != x.dims() {
                    return Err(bad(format!(
                        "replacement has shape {:?}, the activation has shape {:?}",
                        t.dims(),
                        x.dims()
                    )));
                }
                t.to_dtype(x.dtype())?
            }
            Edit::Add(t) => {
                let last = *x.dims().last().unwrap_or(&0);
                if t.dims() == [last] || t.dims() == x.dims() {
                    x.broadcast_add(&t.to_dtype(x.dtype())?)?
                } else {
                    return Err(bad(format!(
                        "added tensor has shape {:?}; expected [{last}] or {:?}",
                        t.dims(),
                        x.dims()
                    )));
                }
            }
            Edit::ZeroAblate => x.zeros_like()?,
            Edit::Scale(s) => (x * *s)?,
            Edit::MeanAblate(Some(m)) => {
                let mut want = x.dims().to_vec();
                want[0] = 1;
                want[layout.pos_axis()] = 1;
                let tail = &x.dims()[1..];
                let m = if m.dims() == want.as_slice() {
                    m.clone()
                } else if m.dims() == &want[1..]
                    || (layout != HookLayout::Pattern && m.dims() == &tail[1..])
                {
                    m.reshape(want.as_slice())?
                } else {
                    return Err(bad(format!(
                        "mean has shape {:?}; expected the activation's shape without batch and position, {:?}",
                        m.dims(),
                        { let mut w = x.dims().to_vec(); w.remove(layout.pos_axis()); w.remove(0); w }
                    )));
                };
                m.to_dtype(x.dtype())?
                    .broadcast_as(x.shape())?
                    .contiguous()?
            }
            Edit::MeanAblate(None) => {
                let m = x.mean_keepdim(0)?.mean_keepdim(layout.pos_axis())?;
                m.broadcast_as(x.shape())?.contiguous()?
            }
        };
        if self.positions.is_none() && self.heads.is_none() {
            return Ok(edited);
        }
        let mask = self.selection_mask(name, x.dims(), layout)?;
        Ok(mask.to_device(x.device())?.where_cond(&edited, x)?)
    }

    /// A u8 tensor of `shape`: 1 where the edit applies.
    fn selection_mask(&self, name: &str, shape: &[usize], layout: HookLayout) -> Result<Tensor> {
        let bad = |problem: String| ModelError::BadIntervention {
            hook: name.to_string(),
            problem,
        };
        let pos_axis = layout.pos_axis();
        let n_pos = shape[pos_axis];
        if let Some(ps) = &self.positions {
            if let Some(p) = ps.iter().find(|&&p| p >= n_pos) {
                return Err(bad(format!(
                    "position {p} is out of range: the sequence has {n_pos} positions"
                )));
            }
        }
        let head_axis = match (&self.heads, layout.head_axis()) {
            (Some(_), None) => {
                return Err(bad("this hook has no head axis; per-head edits apply to attn.hook_q/k/v/z/pattern/attn_scores".into()))
            }
            (_, axis) => axis,
        };
        if let (Some(hs), Some(ax)) = (&self.heads, head_axis) {
            if let Some(h) = hs.iter().find(|&&h| h >= shape[ax]) {
                return Err(bad(format!(
                    "head {h} is out of range: this hook has {} heads",
                    shape[ax]
                )));
            }
        }
        let total: usize = shape.iter().product();
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        let mut data = vec![0u8; total];
        for (i, v) in data.iter_mut().enumerate() {
            let idx = |axis: usize| (i / strides[axis]) % shape[axis];
            let pos_ok = self
                .positions
                .as_ref()
                .is_none_or(|ps| ps.contains(&idx(pos_axis)));
            let head_ok = match (&self.heads, head_axis) {
                (Some(hs), Some(ax)) => hs.contains(&idx(ax)),
                _ => true,
            };
            *v = u8::from(pos_ok && head_ok);
        }
        Ok(Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?.to_dtype(DType::U8)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match(
            "blocks.*.hook_resid_post",
            "blocks.12.hook_resid_post"
        ));
        assert!(!glob_match(
            "blocks.*.hook_resid_post",
            "blocks.12.hook_resid_pre"
        ));
        assert!(glob_match("*", "hook_embed"));
        assert!(glob_match("blocks.1.*", "blocks.1.attn.hook_q"));
        assert!(!glob_match("blocks.1.*", "blocks.10.attn.hook_q"));
        assert!(glob_match("*hook_z", "blocks.3.attn.hook_z"));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
