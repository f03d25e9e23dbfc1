//! glassbox-data: text corpora, packing them into fixed context windows, and
//! harvesting a hook's activations over those windows.

use glassbox_model::{Batch, HookFilter, LogitsMode, Model, Run};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;

fn bad(m: impl Into<String>) -> DataError {
    DataError::BadInput(m.into())
}

/// Token windows, each `context_size` long.
pub type Windows = Vec<Vec<u32>>;

/// Plain-text documents: one `.txt` file, or every `.txt` file in a folder (sorted).
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))
    };
    if path.is_file() {
        return Ok(vec![read(path)?]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(format!("{} holds no .txt files", path.display())));
    }
    files.iter().map(|p| read(p)).collect()
}

/// Tokenises documents and packs them into windows of `context_size` tokens, each
/// beginning with `bos` when given; documents are joined by `bos` (or nothing).
/// Windows are shuffled with `seed`; the first `eval_fraction` become the held-out
/// set, so training and evaluation never share a window.
pub fn pack(
    model: &Model,
    texts: &[String],
    context_size: usize,
    bos: Option<u32>,
    seed: u64,
    eval_fraction: f64,
) -> Result<(Windows, Windows)> {
    if context_size < 2 || context_size > model.config().n_ctx {
        return Err(bad(format!(
            "context size {context_size} must be between 2 and the model's context {}",
            model.config().n_ctx
        )));
    }
    let tok = model.tokenizer()?;
    let body = context_size - usize::from(bos.is_some());
    let mut stream: Vec<u32> = Vec::new();
    for t in texts {
        stream.extend(tok.encode(t)?);
        stream.extend(bos);
    }
    let mut windows: Vec<Vec<u32>> = stream
        .chunks_exact(body)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect();
    if windows.len() < 2 {
        return Err(bad(format!(
            "the corpus gives {} window(s) of {context_size} tokens; it needs at least 2",
            windows.len()
        )));
    }
    windows.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_eval =
        ((windows.len() as f64 * eval_fraction).ceil() as usize).clamp(1, windows.len() - 1);
    let train = windows.split_off(n_eval);
    Ok((train, windows))
}

/// Activations of `hook` over `windows` as rows `[n, width]`, leaving out the first
/// position of every window (the attention sink, whose norm dwarfs the rest) and
/// stopping after the hook's block. `on_window` is called after each batch.
pub fn harvest(
    model: &Model,
    windows: &[Vec<u32>],
    hook: &str,
    batch_windows: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let cfg = model.config();
    let filter = HookFilter::parse(hook, cfg)?;
    let layer = glassbox_model::hooks::layer_of(hook);
    let mut rows = Vec::new();
    let mut width = 0;
    for chunk in windows.chunks(batch_windows.max(1)) {
        let mut run = Run::new().cache(filter.clone()).logits(LogitsMode::None);
        if let Some(l) = layer {
            if l + 1 < cfg.n_layers {
                run = run.stop_at_layer(l + 1);
            }
        }
        let out = model
            .transformer
            .run(&Batch::new(chunk.to_vec()), &mut run)?;
        let a = &out.cache[hook];
        let (_, s, w) = a.dims3()?;
        width = w;
        rows.extend(a.narrow(1, 1, s - 1)?.flatten_all()?.to_vec1::<f32>()?);
        on_batch(chunk.len());
    }
    Ok((rows, width))
}
