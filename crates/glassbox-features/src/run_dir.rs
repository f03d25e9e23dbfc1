//! Reading a `train-sae` run directory: its dictionary and the `config.toml` that says
//! which model, hook, corpus and windows it was trained on.

use crate::{bad, Result};
use std::path::Path;

/// What a run directory says about how its dictionary was trained: the one reader of
/// `config.toml`, owned by the crate that writes it.
pub use glassbox_train::RunConfig;

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
    // a missing config.toml (a dictionary folder made into a run by hand) says nothing
    Ok(RunConfig::read(dir)
        .map_err(|e| bad(format!("{e:#}")))?
        .unwrap_or_default())
}
