//! Attribution graphs: the `*.json` files `glassbox trace` writes into `DIR/graphs/`,
//! interventions on their features (the model and the transcoder set loaded on first
//! use and kept), and the feature stores of a transcoder set's layers
//! (`SET/layer_XX/features.sqlite`).
//!
//! Graph names come from the URL: a name is looked up among the files `graphs/` holds
//! (regular files only, no links), so no request can reach a file outside it.

use crate::error::{ApiError, ApiResult};
use crate::limits::Cancel;
use crate::live::open_model;
use crate::store::{Kind, Store, STORE_FILE};
use glassbox_circuits::{
    intervene, CircuitError, FeatureEdit, InterventionMode, ReplacementState, TranscoderSet,
    SET_INDEX,
};
use glassbox_model::Model;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The folder of graph files inside the served directory.
pub const GRAPHS_DIR: &str = "graphs";
/// Most edits one intervention request may carry.
pub const MAX_EDITS: usize = 256;
/// Most tokens an intervention reports before and after.
pub const MAX_TOP: usize = 100;
/// Replacement states (one clean pass each) kept for repeated interventions.
const STATES_KEPT: usize = 4;

/// A transcoder set's `index.json`: its folder, model label and layers.
#[derive(Debug, Clone)]
pub struct SetIndex {
    /// the set's folder (where `index.json` is)
    pub dir: PathBuf,
    /// the model the set was trained on, as `index.json` records it
    pub model: Option<String>,
    /// (layer, folder relative to `dir`)
    pub layers: Vec<(usize, String)>,
}

impl SetIndex {
    /// Reads `dir/index.json` (`glassbox_circuits::SetIndex`, its one reader); `Ok(None)`
    /// when there is none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<SetIndex>> {
        let Some(index) = glassbox_circuits::SetIndex::read(dir)? else {
            return Ok(None);
        };
        Ok(Some(SetIndex {
            dir: dir.to_path_buf(),
            model: index.model,
            layers: index
                .layers
                .into_iter()
                .map(|l| (l.layer, l.path))
                .collect(),
        }))
    }

    fn layer_dir(&self, layer: usize) -> Option<PathBuf> {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, p)| self.dir.join(p))
    }

    /// `[{layer, path, features}]`: whether each layer has a feature store.
    pub fn describe(&self) -> Value {
        Value::Array(
            self.layers
                .iter()
                .map(|(l, p)| {
                    json!({
                        "layer": l,
                        "path": p,
                        "features": self.dir.join(p).join(STORE_FILE).is_file(),
                    })
                })
                .collect(),
        )
    }
}

fn circuit_err(e: CircuitError) -> ApiError {
    match e {
        CircuitError::BadInput(m) => ApiError::bad_request(m),
        e => ApiError::internal(format!("circuit error: {e}")),
    }
}

fn poisoned<T>(_: T) -> ApiError {
    ApiError::internal("a cache lock was poisoned by an earlier failure; restart the server")
}

/// Checks a graph name from a URL: a file stem (`.json` may be given), no path
/// separators, no `..`, no leading dot, no control characters.
pub fn check_graph_name(name: &str) -> ApiResult<&str> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let bad = stem.is_empty()
        || stem.len() > 200
        || stem.starts_with('.')
        || stem.contains("..")
        || stem
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(ApiError::bad_request(format!(
            "bad graph name {name:?}: a graph is named by its file name in graphs/ (no path separators, no `..`)"
        )));
    }
    Ok(stem)
}

type StateKey = (String, PathBuf, Vec<u32>);

/// The graphs of the served directory and what interventions need, loaded lazily.
pub struct Graphs {
    /// the served directory
    pub dir: PathBuf,
    /// `dir/graphs`
    pub graphs_dir: PathBuf,
    /// set when the served directory is a transcoder set
    pub set_index: Option<SetIndex>,
    summaries: Mutex<HashMap<String, (SystemTime, u64, Value)>>,
    stores: Mutex<HashMap<PathBuf, Arc<Store>>>,
    models: Mutex<HashMap<String, Arc<Model>>>,
    sets: Mutex<HashMap<PathBuf, Arc<TranscoderSet>>>,
    states: Mutex<Vec<(StateKey, Arc<ReplacementState>)>>,
}

impl Graphs {
    /// The graphs of `dir` (in `dir/graphs/`; the folder may be absent), with
    /// `set_index` when `dir` is a transcoder set. Reads nothing yet.
    pub fn new(dir: &Path, set_index: Option<SetIndex>) -> Self {
        Graphs {
            dir: dir.to_path_buf(),
            graphs_dir: dir.join(GRAPHS_DIR),
            set_index,
            summaries: Mutex::default(),
            stores: Mutex::default(),
            models: Mutex::default(),
            sets: Mutex::default(),
            states: Mutex::default(),
        }
    }

    /// The graph names (file stems of the regular `*.json` files in graphs/), sorted.
    pub fn names(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.graphs_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|n| check_graph_name(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// The file of graph `name`, which must be one of [`Graphs::names`].
    pub fn path(&self, name: &str) -> ApiResult<(String, PathBuf)> {
        let stem = check_graph_name(name)?;
        if !self.names().iter().any(|n| n == stem) {
            return Err(ApiError::not_found(format!(
                "no graph `{stem}` in {}: `glassbox trace … --out {}/{stem}.json` writes one",
                self.graphs_dir.display(),
                self.graphs_dir.display()
            )));
        }
        Ok((
            stem.to_string(),
            self.graphs_dir.join(format!("{stem}.json")),
        ))
    }

    /// Graph `name` as JSON.
    pub fn get(&self, name: &str) -> ApiResult<Value> {
        let (_, path) = self.path(name)?;
        read_json(&path)
    }

    /// One line per graph: name, prompt, counts, scores (or the error reading it).
    pub fn list(&self) -> ApiResult<Value> {
        let mut out = Vec::new();
        let mut cache = self.summaries.lock().map_err(poisoned)?;
        let names = self.names();
        cache.retain(|k, _| names.contains(k));
        for name in names {
            let path = self.graphs_dir.join(format!("{name}.json"));
            let md = std::fs::metadata(&path).ok();
            let stamp = md
                .as_ref()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if let (Some((t, n)), Some((ct, cn, v))) = (stamp, cache.get(&name)) {
                if *ct == t && *cn == n {
                    out.push(v.clone());
                    continue;
                }
            }
            let v = match read_json(&path) {
                Ok(g) => summary(&name, &g),
                Err(e) => json!({"name": name, "error": e.message}),
            };
            if let Some((t, n)) = stamp {
                cache.insert(name, (t, n, v.clone()));
            }
            out.push(v);
        }
        Ok(json!({"dir": self.graphs_dir.display().to_string(), "graphs": out}))
    }

    /// The transcoder set for a graph: the served directory when it is a set, else the
    /// graph's `metadata.transcoders` (relative to the served directory, or as given).
    fn set_index_for(&self, metadata: Option<&Value>) -> ApiResult<SetIndex> {
        if let Some(s) = &self.set_index {
            return Ok(s.clone());
        }
        let named = metadata
            .and_then(|m| m.get("transcoders"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let Some(named) = named else {
            return Err(ApiError::not_found(format!(
                "{} is not a transcoder set (no {SET_INDEX}) and the graph names none in metadata.transcoders",
                self.dir.display()
            )));
        };
        for cand in [self.dir.join(named), PathBuf::from(named)] {
            if let Ok(Some(s)) = SetIndex::read(&cand) {
                return Ok(s);
            }
        }
        Err(ApiError::not_found(format!(
            "the graph's transcoder set `{named}` (metadata.transcoders) was not found, neither under {} nor from the working directory",
            self.dir.display()
        )))
    }

    /// The stored feature page of `id` at `layer` of the served set (or of graph
    /// `graph`'s set), with `layer` added.
    pub fn layer_feature(&self, layer: usize, id: i64, graph: Option<&str>) -> ApiResult<Value> {
        let (set, model_hint) = match (&self.set_index, graph) {
            (Some(s), _) => (s.clone(), None),
            (None, Some(g)) => {
                let v = self.get(g)?;
                let meta = v.get("metadata");
                let model = meta
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (self.set_index_for(meta)?, model)
            }
            (None, None) => {
                return Err(ApiError::not_found(format!(
                    "{} is not a transcoder set (no {SET_INDEX}): give ?graph=NAME to use a graph's set",
                    self.dir.display()
                )))
            }
        };
        let layer_dir = set.layer_dir(layer).ok_or_else(|| {
            ApiError::not_found(format!(
                "the transcoder set {} has no layer {layer}; it has layers {:?}",
                set.dir.display(),
                set.layers.iter().map(|l| l.0).collect::<Vec<_>>()
            ))
        })?;
        let db = layer_dir.join(STORE_FILE);
        if !db.is_file() {
            let model = model_hint
                .or_else(|| set.model.clone())
                .unwrap_or_else(|| "M".into());
            return Err(ApiError::not_found(format!(
                "layer {layer} has no feature store ({} is missing): build it with `glassbox features build --sae {} --model {model}`",
                db.display(),
                layer_dir.display()
            )));
        }
        let store = {
            let mut stores = self.stores.lock().map_err(poisoned)?;
            match stores.get(&db) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Store::open(&db)?);
                    stores.insert(db.clone(), s.clone());
                    s
                }
            }
        };
        match store.unit(Kind::Feature, id)? {
            Some(mut u) => {
                u["layer"] = json!(layer);
                Ok(u)
            }
            None => Err(ApiError::not_found(format!(
                "no feature {id} in the feature store of layer {layer} ({})",
                db.display()
            ))),
        }
    }

    fn model(&self, spec: &str) -> ApiResult<Arc<Model>> {
        let mut models = self.models.lock().map_err(poisoned)?;
        if let Some(m) = models.get(spec) {
            return Ok(m.clone());
        }
        let m = Arc::new(open_model(spec)?);
        models.insert(spec.to_string(), m.clone());
        Ok(m)
    }

    fn set(&self, index: &SetIndex, model: &Model) -> ApiResult<Arc<TranscoderSet>> {
        let mut sets = self.sets.lock().map_err(poisoned)?;
        if let Some(s) = sets.get(&index.dir) {
            return Ok(s.clone());
        }
        eprintln!("loading the transcoder set {} ...", index.dir.display());
        let s = TranscoderSet::load(&index.dir, model.config()).map_err(|e| {
            ApiError::unavailable(format!(
                "cannot load the transcoder set {}: {e}",
                index.dir.display()
            ))
        })?;
        let s = Arc::new(s);
        sets.insert(index.dir.clone(), s.clone());
        Ok(s)
    }

    fn state(
        &self,
        key: StateKey,
        model: &Model,
        set: &TranscoderSet,
    ) -> ApiResult<Arc<ReplacementState>> {
        let mut states = self.states.lock().map_err(poisoned)?;
        if let Some(i) = states.iter().position(|(k, _)| *k == key) {
            let hit = states.remove(i);
            let s = hit.1.clone();
            states.push(hit);
            return Ok(s);
        }
        // every active feature stays a feature: interventions may name any of them
        let s = ReplacementState::new(&model.transformer, set, &key.2, usize::MAX)
            .map_err(circuit_err)?;
        let s = Arc::new(s);
        states.push((key, s.clone()));
        if states.len() > STATES_KEPT {
            states.remove(0);
        }
        Ok(s)
    }

    /// Applies `edits` to the prompt of graph `name` and compares the last position's
    /// distribution before and after (`glassbox_circuits::intervene`), with token text.
    pub fn intervene(
        &self,
        name: &str,
        mode: InterventionMode,
        edits: &[FeatureEdit],
        top: usize,
        cancel: &Cancel,
    ) -> ApiResult<Value> {
        if top == 0 || top > MAX_TOP {
            return Err(ApiError::bad_request(format!(
                "`top` must be between 1 and {MAX_TOP}, got {top}"
            )));
        }
        if edits.len() > MAX_EDITS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_EDITS} edits per request, got {}",
                edits.len()
            )));
        }
        let graph = self.get(name)?;
        let meta = graph.get("metadata").ok_or_else(|| {
            ApiError::unavailable("the graph file has no `metadata`: not a glassbox graph")
        })?;
        let tokens: Vec<u32> = meta
            .get("prompt_token_ids")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| {
                ApiError::unavailable(
                    "the graph file has no metadata.prompt_token_ids (token ids): cannot rerun its prompt",
                )
            })?;
        let spec = meta
            .get("model")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unavailable(
                    "the graph names no model (metadata.model): interventions need one",
                )
            })?;
        let index = self.set_index_for(Some(meta))?;
        let model = self.model(spec)?;
        cancel.check()?;
        let vocab = model.config().d_vocab;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::bad_request(format!(
                "the graph's prompt has token id {t}, outside the vocabulary of `{spec}` (0..{vocab}): it was traced on another model"
            )));
        }
        let set = self.set(&index, &model)?;
        cancel.check()?;
        let state = self.state((spec.to_string(), index.dir.clone(), tokens), &model, &set)?;
        cancel.check()?;
        let out =
            intervene(&model.transformer, &set, &state, edits, mode, top).map_err(circuit_err)?;
        let mut v = serde_json::to_value(&out)
            .map_err(|e| ApiError::internal(format!("cannot encode the outcome: {e}")))?;

        // token text: the model's tokenizer, else what the graph's nodes recorded
        let tok = model.tokenizer().ok();
        let mut known: HashMap<u64, String> = HashMap::new();
        for n in graph
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(t), Some(s)) = (
                n.get("token").and_then(Value::as_u64),
                n.get("token_str").and_then(Value::as_str),
            ) {
                known.insert(t, s.to_string());
            }
        }
        for side in ["before", "after"] {
            for t in v[side].as_array_mut().into_iter().flatten() {
                let id = t["token"].as_u64().unwrap_or(0);
                let text = match &tok {
                    Some(tok) => tok.token_text(id as u32),
                    None => known.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
                };
                t["token_str"] = json!(text);
            }
        }
        v["graph"] = json!(name);
        v["model"] = json!(spec);
        v["transcoders"] = json!(index.dir.display().to_string());
        Ok(v)
    }
}

fn read_json(path: &Path) -> ApiResult<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("{} is not valid JSON: {e}", path.display())))
}

fn summary(name: &str, g: &Value) -> Value {
    let m = &g["metadata"];
    let nodes = g["nodes"].as_array();
    let count = |t: &str| {
        nodes.map_or(0, |n| {
            n.iter()
                .filter(|x| x["feature_type"].as_str() == Some(t))
                .count()
        })
    };
    json!({
        "name": name,
        "prompt": m["prompt"],
        "model": m["model"],
        "n_nodes": nodes.map_or(0, Vec::len),
        "n_links": g["links"].as_array().map_or(0, Vec::len),
        "n_features": count("transcoder"),
        "n_errors": count("mlp reconstruction error"),
        "n_logits": count("logit"),
        "replacement_score": m["replacement_score"],
        "completeness_score": m["completeness_score"],
        "node_threshold": m["node_threshold"],
        "edge_threshold": m["edge_threshold"],
    })
}
