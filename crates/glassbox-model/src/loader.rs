//! Opening a model from a path: a HF directory or a `.gguf` file.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::load_gguf_with;
use crate::tokenizer::TextTokenizer;
use crate::transformer::Transformer;
use crate::weights::load_hf_weights_with;
use std::path::{Path, PathBuf};

/// A runnable model and, when the checkpoint has one, its tokenizer.
pub struct Model {
    /// the config and weights, ready to run
    pub transformer: Transformer,
    /// `tokenizer.json` of a HF directory, or the one a GGUF's metadata describes
    pub tokenizer: Option<TextTokenizer>,
    /// the directory or `.gguf` file it was loaded from
    pub source: PathBuf,
}

impl Model {
    /// The checkpoint's file or folder name, as run directories, stores and graphs record
    /// it for people.
    pub fn label(&self) -> String {
        self.source
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    }

    /// The transformer's config.
    pub fn config(&self) -> &ModelConfig {
        &self.transformer.config
    }

    /// The tokenizer; [`ModelError::Tokenizer`] when the checkpoint has none (then only
    /// token ids can be run).
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{} has no tokenizer (no tokenizer.json); pass token ids instead of text",
                self.source.display()
            ))
        })
    }
}

/// How a checkpoint is held in memory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Keep blocks in f32 after their first use when all of them fit in this many bytes;
    /// otherwise each layer is expanded from its stored precision just before it runs.
    pub keep_expanded_bytes: usize,
}

impl Default for LoadOptions {
    /// 2 GiB, or `$GLASSBOX_KEEP_EXPANDED_MIB` when set (trade memory for speed: a 1B
    /// bf16 model kept expanded needs its f32 size on top of its own).
    fn default() -> Self {
        let from_env = std::env::var("GLASSBOX_KEEP_EXPANDED_MIB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|mib| mib.saturating_mul(1 << 20));
        LoadOptions {
            keep_expanded_bytes: from_env.unwrap_or(crate::weights::DEFAULT_KEEP_EXPANDED_BYTES),
        }
    }
}

/// Opens a HF model directory (`config.json` + safetensors) or a `.gguf` file, with the
/// default [`LoadOptions`]. A path that is neither is [`ModelError::BadFile`].
pub fn load_model(path: &Path) -> Result<Model> {
    load_model_with(path, &LoadOptions::default())
}

/// [`load_model`] with these options.
pub fn load_model_with(path: &Path, opts: &LoadOptions) -> Result<Model> {
    if !path.exists() {
        return Err(ModelError::bad_file(path, "no such file or directory"));
    }
    if path.is_dir() {
        load_hf_dir_with(path, opts)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        let g = load_gguf_with(path, opts.keep_expanded_bytes)?;
        // A GGUF without tokenizer metadata still runs on token ids.
        let tokenizer = if g.content.metadata.contains_key("tokenizer.ggml.model") {
            Some(TextTokenizer::from_gguf(&g.content)?)
        } else {
            None
        };
        Ok(Model {
            transformer: Transformer::new(g.config, g.weights),
            tokenizer,
            source: path.to_path_buf(),
        })
    } else {
        Err(ModelError::bad_file(
            path,
            "expected a HF model directory (config.json + model.safetensors) or a .gguf file",
        ))
    }
}

/// Opens a HF model directory with the default [`LoadOptions`].
pub fn load_hf_dir(dir: &Path) -> Result<Model> {
    load_hf_dir_with(dir, &LoadOptions::default())
}

/// Opens a HF model directory: `config.json`, the safetensors weights (one file or an
/// index's shards) and, when present, `tokenizer.json`, with BOS/EOS from the config and
/// `add_bos_token` and the chat template from `tokenizer_config.json`.
pub fn load_hf_dir_with(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(ModelError::bad_file(
            dir,
            "no config.json: not a HF model directory",
        ));
    }
    let config = ModelConfig::from_hf_config_file(&config_path)?;
    let weights = load_hf_weights_with(dir, &config, opts.keep_expanded_bytes)?;
    let tok_path = dir.join("tokenizer.json");
    let mut tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    if let Some(t) = tokenizer.as_mut() {
        t.bos_token_id = config.bos_token_id;
        t.eos_token_id = config.eos_token_id;
        let tok_config = read_tokenizer_config(dir);
        t.chat_template = tok_config
            .as_ref()
            .and_then(|v| v.get("chat_template")?.as_str().map(str::to_string));
        // HF's rule for `tokenizer(text)`: `add_bos_token` when the config states it,
        // else whatever the post-processor does.
        t.add_bos_token = match tok_config
            .as_ref()
            .and_then(|v| v.get("add_bos_token")?.as_bool())
        {
            Some(b) => b,
            None => config
                .bos_token_id
                .is_some_and(|b| t.post_processor_adds(b)),
        };
    }
    Ok(Model {
        transformer: Transformer::new(config, weights),
        tokenizer,
        source: dir.to_path_buf(),
    })
}

fn read_tokenizer_config(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    serde_json::from_str(&text).ok()
}
