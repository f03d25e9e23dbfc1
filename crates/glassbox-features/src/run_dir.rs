//! Reading a `train-sae` run directory: its dictionary and the `config.toml` that says
//! which model, hook, corpus and windows it was trained on.

use crate::{bad, FeaturesError, Result};
use std::path::{Path, PathBuf};

/// What a run directory says about how its dictionary was trained. Fields missing from
/// `config.toml` (or a missing `config.toml`) are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub dir: PathBuf,
    /// the model spec or label `train-sae` recorded
    pub model: Option<String>,
    pub hook: Option<String>,
    pub context_size: Option<usize>,
    pub corpus: Option<String>,
    pub text_field: Option<String>,
    /// the seed of the window shuffle and held-out split (`[train] seed`, default 0)
    pub seed: u64,
}

/// Whether `dir` holds a dictionary `glassbox_sae::format::load` reads.
pub fn has_dictionary(dir: &Path) -> bool {
    dir.join("cfg.json").is_file()
        && (dir.join("sae_weights.safetensors").is_file() || dir.join("sae.safetensors").is_file())
}

/// Reads a run directory; errors when it is missing or holds no dictionary yet.
pub fn read_run(dir: &Path) -> Result<RunConfig> {
    if !dir.is_dir() {
        return Err(bad(format!(
            "the run directory {} does not exist",
            dir.display()
        )));
    }
    if !has_dictionary(dir) {
        let training = if dir.join("checkpoint").exists() {
            " (it holds a checkpoint: training has not finished)"
        } else {
            ""
        };
        return Err(bad(format!(
            "{} holds no dictionary (cfg.json + sae_weights.safetensors){training}; \
             `glassbox train-sae --out DIR` writes one when training ends, or pass a dictionary folder with --sae DIR --model M",
            dir.display()
        )));
    }
    let path = dir.join("config.toml");
    let mut cfg = RunConfig {
        dir: dir.to_path_buf(),
        model: None,
        hook: None,
        context_size: None,
        corpus: None,
        text_field: None,
        seed: 0,
    };
    if !path.is_file() {
        return Ok(cfg);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| FeaturesError::Io {
        what: "read",
        path: path.clone(),
        source,
    })?;
    let v: toml::Table = toml::from_str(&text)
        .map_err(|e| bad(format!("{} is not valid TOML: {e}", path.display())))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    cfg.model = s("model");
    cfg.hook = s("hook");
    cfg.corpus = s("corpus");
    cfg.text_field = s("text_field");
    cfg.context_size = v
        .get("context_size")
        .and_then(|x| x.as_integer())
        .map(|x| x as usize);
    cfg.seed = v
        .get("train")
        .and_then(|t| t.get("seed"))
        .or_else(|| v.get("seed"))
        .and_then(|x| x.as_integer())
        .unwrap_or(0) as u64;
    Ok(cfg)
}
