//! Shared argument handling: resolving `--model` and turning prompts into tokens.

use anyhow::{Context, Result};
use glassbox_model::{load_model, Model};

/// `--model` accepts a HF directory, a `.gguf` file, a HF repo id, or the default's name.
pub fn open_model(spec: &str) -> Result<Model> {
    let path = glassbox_hub::resolve_model(spec)?;
    let model = load_model(&path).with_context(|| format!("cannot open model `{spec}`"))?;
    Ok(model)
}

pub fn encode(model: &Model, text: &str) -> Result<Vec<u32>> {
    let ids = model.tokenizer()?.encode(text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty: nothing to run");
    Ok(ids)
}

/// Writes a file atomically: a temporary sibling, then a rename.
pub fn atomic_write(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|_| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move output to {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
