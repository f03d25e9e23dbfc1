//! The serving policy: a TOML file naming the edits applied to every request and the
//! monitors read on every generated token, with what each monitor does when it fires.
//! Everything it names (vectors, dictionaries, probes) is loaded and checked against the
//! model before the server starts; a mistake is refused with the file and line.
//!
//! ```toml
//! refusal = "I can't continue with that."      # the content of a blocked completion
//!
//! [[edit]]
//! name = "calm"
//! kind = "steer"                # steer | clamp | ablate-feature | ablate-heads | ablate-neurons
//! hook = "blocks.6.hook_resid_post"
//! vector = "calm.safetensors"   # or: pairs = "calm.tsv" (contrastive prompt pairs)
//! strength = 4.0
//! enabled = false               # off until a monitor's `steer` action or a request turns it on
//!
//! [[edit]]
//! name = "no-feature-26"
//! kind = "clamp"                # the feature held at `value` (ablate-feature: at 0)
//! sae = "runs/quickstart/sae"
//! feature = 26
//! value = 0.0
//!
//! [[edit]]
//! name = "heads"
//! kind = "ablate-heads"
//! units = "9.6,L3.H1"           # ablate-neurons: "9.120,L3.N5"
//!
//! [[monitor]]
//! name = "truth"
//! probe = "probes/truth"        # a folder written by `glassbox probe train`
//! threshold = 0.3               # fires when p(true), averaged over `window` tokens, is below
//! window = 1
//! action = "block"              # annotate | flag | block | steer
//!
//! [[monitor]]
//! name = "feature-26"
//! sae = "runs/quickstart/sae"
//! feature = 26
//! threshold = 5.0               # fires when the activation's window mean is above
//! window = 4
//! action = "steer"
//! edit = "calm"                 # the edit a `steer` action switches on
//!
//! [requests]
//! allow = ["calm", "truth"]     # what a request may switch on or off (extra_body)
//! ```
//!
//! Paths are relative to the policy file's folder.

use anyhow::{anyhow, bail, Context, Result};
use glassbox_analysis::ablation::Unit;
use glassbox_analysis::steering::{
    contrastive_direction, load_pairs, load_vector, FeatureClamp, Steering,
};
use glassbox_model::{HookFilter, Model};
use glassbox_probes::probe::Probe;
use glassbox_sae::Dictionary;
use serde::Deserialize;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// The content of a blocked completion when the policy names none.
pub const DEFAULT_REFUSAL: &str = "I can't continue with that response.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    refusal: Option<String>,
    #[serde(default)]
    edit: Vec<Spanned<EditSpec>>,
    #[serde(default)]
    monitor: Vec<Spanned<MonitorSpec>>,
    #[serde(default)]
    requests: RequestSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditSpec {
    name: String,
    kind: String,
    hook: Option<String>,
    vector: Option<PathBuf>,
    pairs: Option<PathBuf>,
    strength: Option<f64>,
    positions: Option<Vec<usize>>,
    sae: Option<PathBuf>,
    feature: Option<usize>,
    value: Option<f64>,
    units: Option<String>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorSpec {
    name: String,
    probe: Option<PathBuf>,
    sae: Option<PathBuf>,
    feature: Option<usize>,
    hook: Option<String>,
    threshold: f64,
    window: Option<usize>,
    action: String,
    edit: Option<String>,
    allow_other_model: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    allow: Vec<String>,
}

/// What an edit does to the activation at its hook.
#[derive(Clone)]
pub enum EditOp {
    /// add `strength · direction` (a vector file or contrastive pairs)
    Steer(Steering),
    /// hold a dictionary feature at a value (ablation: at 0), keeping the SAE's error
    Clamp(FeatureClamp),
    /// zero these heads of `blocks.L.attn.hook_z`
    Heads(Vec<usize>),
    /// zero these neurons of `blocks.L.mlp.hook_post`
    Neurons(Vec<usize>),
}

/// One named edit of the policy.
#[derive(Clone)]
pub struct Edit {
    /// its name in the policy, responses and requests
    pub name: String,
    /// the hook it acts at
    pub hook: String,
    /// what it does there
    pub op: EditOp,
    /// on for every request unless a request or monitor says otherwise
    pub enabled: bool,
}

/// What a monitor reads at each generated token.
#[derive(Clone)]
pub enum Reader {
    /// a truth probe's p(true); fires below the threshold
    Probe(Arc<Probe>),
    /// a dictionary feature's activation; fires above the threshold
    Feature {
        /// the dictionary (an SAE at the hook)
        dictionary: Arc<Dictionary>,
        /// the feature's index
        feature: usize,
    },
}

/// What happens when a monitor fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// scores and the verdict in the response's `glassbox` field only
    Annotate,
    /// also logged to the audit trail and named in the `x-glassbox-flagged` header
    Flag,
    /// stop generating; the response is the policy's refusal, `finish_reason:
    /// "content_filter"`
    Block,
    /// switch an edit on from the next token on (the edit's index)
    Steer(usize),
}

impl Action {
    /// The name used in policies, responses and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Action::Annotate => "annotate",
            Action::Flag => "flag",
            Action::Block => "block",
            Action::Steer(_) => "steer",
        }
    }
}

/// One named monitor of the policy.
#[derive(Clone)]
pub struct Monitor {
    /// its name in the policy, responses, metrics and requests
    pub name: String,
    /// the hook it reads
    pub hook: String,
    /// what it reads there
    pub reader: Reader,
    /// the score's threshold (p(true) for probes, the activation for features)
    pub threshold: f64,
    /// tokens the score is averaged over before it is compared
    pub window: usize,
    /// what it does when it fires
    pub action: Action,
    /// on for every request unless a request turns it off
    pub enabled: bool,
}

impl Monitor {
    /// The score of one activation row (the hook's last axis).
    pub fn score(&self, row: &[f32]) -> Result<f64> {
        match &self.reader {
            Reader::Probe(p) => Ok(p.prob(row)),
            Reader::Feature {
                dictionary,
                feature,
            } => {
                let x = candle_core::Tensor::from_slice(
                    row,
                    (1, row.len()),
                    &candle_core::Device::Cpu,
                )?;
                let f = dictionary.encode(&x)?;
                Ok(f.get(0)?.get(*feature)?.to_scalar::<f32>()? as f64)
            }
        }
    }

    /// Whether a window mean `score` fires the monitor.
    pub fn fires(&self, score: f64) -> bool {
        match self.reader {
            Reader::Probe(_) => score < self.threshold,
            Reader::Feature { .. } => score > self.threshold,
        }
    }
}

/// A loaded, checked policy.
#[derive(Clone)]
pub struct Policy {
    /// the edits, in file order
    pub edits: Vec<Edit>,
    /// the monitors, in file order
    pub monitors: Vec<Monitor>,
    /// names a request may switch on or off
    pub allow: Vec<String>,
    /// the content of a blocked completion
    pub refusal: String,
    /// the first 16 hex digits of the policy file's SHA-256 (`none` without a policy)
    pub hash: String,
}

impl Policy {
    /// No edits, no monitors.
    pub fn empty() -> Self {
        Policy {
            edits: Vec::new(),
            monitors: Vec::new(),
            allow: Vec::new(),
            refusal: DEFAULT_REFUSAL.into(),
            hash: "none".into(),
        }
    }

    /// Reads and checks `path` against `model`: every file it names loads, every hook
    /// exists, features are within their dictionary, probes were trained on this model
    /// and hook, actions are known. Errors name the file and line.
    pub fn load(path: &Path, model: &Model) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the policy {}", path.display()))?;
        let file: PolicyFile =
            toml::from_str(&text).map_err(|e| anyhow!("policy {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let at = |span: std::ops::Range<usize>| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("policy {} line {line}", path.display())
        };
        let mut policy = Policy {
            refusal: file.refusal.unwrap_or_else(|| DEFAULT_REFUSAL.into()),
            hash: {
                let digest = sha2::Sha256::digest(text.as_bytes());
                digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
            },
            ..Policy::empty()
        };
        let mut names: Vec<String> = Vec::new();
        let mut unique = |name: &str, place: &str| -> Result<()> {
            if names.iter().any(|n| n == name) {
                bail!("{place}: the name `{name}` is used twice; edits and monitors need distinct names");
            }
            names.push(name.to_string());
            Ok(())
        };
        for spec in &file.edit {
            let place = at(spec.span());
            unique(&spec.get_ref().name, &place)?;
            let edit = load_edit(spec.get_ref(), base, model).with_context(|| place.clone())?;
            policy.edits.push(edit);
        }
        for spec in &file.monitor {
            let place = at(spec.span());
            unique(&spec.get_ref().name, &place)?;
            let monitor = load_monitor(spec.get_ref(), base, model, &policy.edits)
                .with_context(|| place.clone())?;
            policy.monitors.push(monitor);
        }
        for name in &file.requests.allow {
            let known = policy.edits.iter().any(|e| &e.name == name)
                || policy.monitors.iter().any(|m| &m.name == name);
            if !known {
                bail!(
                    "policy {}: [requests] allow names `{name}`, which is no edit or monitor of the policy",
                    path.display()
                );
            }
        }
        policy.allow = file.requests.allow;
        Ok(policy)
    }

    /// The hooks any edit or monitor acts at, for the engine's hook filters.
    pub fn hooks(&self) -> Vec<String> {
        let mut hooks: Vec<String> = self
            .edits
            .iter()
            .map(|e| e.hook.clone())
            .chain(self.monitors.iter().map(|m| m.hook.clone()))
            .collect();
        hooks.sort();
        hooks.dedup();
        hooks
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn open_sae(base: &Path, p: &Path) -> Result<Arc<Dictionary>> {
    let dir = resolve(base, p);
    let d = glassbox_sae::format::load(&dir)
        .with_context(|| format!("cannot load the dictionary {}", dir.display()))?;
    Ok(Arc::new(d))
}

fn check_hook(hook: &str, model: &Model) -> Result<()> {
    HookFilter::parse(hook, model.config())
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

/// The hook a dictionary edit or monitor acts at: the dictionary's own, or `given` when
/// it agrees (a feature only means something where it was trained).
fn dictionary_hook(given: Option<&String>, d: &Dictionary, model: &Model) -> Result<String> {
    let hook = match (given, &d.hook_name) {
        (Some(h), Some(dh)) if h != dh => bail!(
            "hook `{h}` differs from the dictionary's hook `{dh}`, where its features were trained"
        ),
        (Some(h), _) => h.clone(),
        (None, Some(dh)) => dh.clone(),
        (None, None) => bail!("the dictionary names no hook; give `hook`"),
    };
    check_hook(&hook, model)?;
    Ok(hook)
}

fn feature_in(feature: Option<usize>, d: &Dictionary) -> Result<usize> {
    let f = feature.context("a dictionary edit or monitor needs `feature`")?;
    if f >= d.d_sae {
        bail!(
            "feature {f} is beyond the dictionary's width ({} features, 0..{})",
            d.d_sae,
            d.d_sae.saturating_sub(1)
        );
    }
    Ok(f)
}

fn load_edit(s: &EditSpec, base: &Path, model: &Model) -> Result<Edit> {
    let enabled = s.enabled.unwrap_or(true);
    let (hook, op) = match s.kind.as_str() {
        "steer" => {
            let hook = s.hook.clone().context("a steer edit needs `hook`")?;
            check_hook(&hook, model)?;
            let direction = match (&s.vector, &s.pairs) {
                (Some(v), None) => load_vector(&resolve(base, v))?,
                (None, Some(p)) => contrastive_direction(
                    &model.transformer,
                    model.tokenizer()?,
                    &load_pairs(&resolve(base, p))?,
                    &hook,
                )?,
                _ => bail!("a steer edit needs one of `vector` or `pairs`"),
            };
            let width = direction.dim(0)?;
            let last = glassbox_model::hook_points(model.config())
                .into_iter()
                .find(|h| h.name == hook)
                .and_then(|h| h.shape.last().and_then(|d| d.size));
            if let Some(want) = last.filter(|&w| w != width) {
                bail!("the steering vector has {width} entries; the last axis of {hook} has {want}");
            }
            let mut st = Steering::new(
                &hook,
                direction,
                s.strength.context("a steer edit needs `strength`")?,
            )?;
            st.positions = s.positions.clone();
            (hook, EditOp::Steer(st))
        }
        "clamp" | "ablate-feature" => {
            let d = open_sae(base, s.sae.as_deref().context("a feature edit needs `sae`")?)?;
            let hook = dictionary_hook(s.hook.as_ref(), &d, model)?;
            let feature = feature_in(s.feature, &d)?;
            let value = match s.kind.as_str() {
                "clamp" => s.value.context("a clamp edit needs `value`")?,
                _ => 0.0,
            };
            (hook.clone(), EditOp::Clamp(FeatureClamp::new(&hook, d, feature, value)?))
        }
        "ablate-heads" | "ablate-neurons" => {
            let heads = s.kind == "ablate-heads";
            let units = Unit::parse_list(
                s.units.as_deref().context("an ablation needs `units`")?,
                heads,
                &model.transformer,
            )?;
            let layers: Vec<usize> = units
                .iter()
                .filter_map(|u| match u {
                    Unit::Head { layer, .. } | Unit::Neuron { layer, .. } => Some(*layer),
                    Unit::Feature { .. } => None,
                })
                .collect();
            let layer = layers[0];
            if layers.iter().any(|&l| l != layer) {
                bail!("one ablation edit acts at one layer; write one edit per layer");
            }
            let idx: Vec<usize> = units
                .iter()
                .filter_map(|u| match u {
                    Unit::Head { head, .. } => Some(*head),
                    Unit::Neuron { index, .. } => Some(*index),
                    Unit::Feature { .. } => None,
                })
                .collect();
            if heads {
                (format!("blocks.{layer}.attn.hook_z"), EditOp::Heads(idx))
            } else {
                (format!("blocks.{layer}.mlp.hook_post"), EditOp::Neurons(idx))
            }
        }
        other => bail!(
            "unknown edit kind `{other}`; use steer, clamp, ablate-feature, ablate-heads or ablate-neurons"
        ),
    };
    Ok(Edit {
        name: s.name.clone(),
        hook,
        op,
        enabled,
    })
}

fn load_monitor(s: &MonitorSpec, base: &Path, model: &Model, edits: &[Edit]) -> Result<Monitor> {
    if !s.threshold.is_finite() {
        bail!("`threshold` must be a finite number");
    }
    let window = s.window.unwrap_or(1);
    if window == 0 {
        bail!("`window` must be at least 1 token");
    }
    let action = match s.action.as_str() {
        "annotate" => Action::Annotate,
        "flag" => Action::Flag,
        "block" => Action::Block,
        "steer" => {
            let name = s
                .edit
                .as_deref()
                .context("a steer action needs `edit`, the edit it switches on")?;
            let i = edits
                .iter()
                .position(|e| e.name == name)
                .with_context(|| format!("the steer action names edit `{name}`, which the policy does not define (edits come before monitors)"))?;
            Action::Steer(i)
        }
        other => bail!("unknown action `{other}`; use annotate, flag, block or steer"),
    };
    let (hook, reader) = match (&s.probe, &s.sae) {
        (Some(p), None) => {
            let dir = resolve(base, p);
            let (probe, meta) = glassbox_probes::store::load(&dir)?;
            glassbox_probes::store::check_compatible(&meta, &probe, model)?;
            let here = glassbox_probes::store::model_name(model);
            if meta.model != here && !s.allow_other_model.unwrap_or(false) {
                bail!(
                    "the probe {} was trained on {}, not {here}; train it on this model (or set allow_other_model = true)",
                    dir.display(),
                    meta.model
                );
            }
            if let Some(h) = s.hook.as_ref().filter(|h| **h != meta.hook) {
                bail!(
                    "the monitor reads `{h}` but the probe was trained at `{}`",
                    meta.hook
                );
            }
            (meta.hook.clone(), Reader::Probe(Arc::new(probe)))
        }
        (None, Some(p)) => {
            let d = open_sae(base, p)?;
            let f = feature_in(s.feature, &d)?;
            let hook = dictionary_hook(s.hook.as_ref(), &d, model)?;
            (
                hook,
                Reader::Feature {
                    dictionary: d,
                    feature: f,
                },
            )
        }
        _ => bail!("a monitor reads one of `probe` or `sae` (with `feature`)"),
    };
    Ok(Monitor {
        name: s.name.clone(),
        hook,
        reader,
        threshold: s.threshold,
        window,
        action,
        enabled: true,
    })
}
