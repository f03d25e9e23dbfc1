//! A feature store over held-out text: the corpus read and packed into windows with the
//! training run's seed, the held-out share kept (the same split as training,
//! [`glassbox_data::HELD_OUT_FRACTION`]), and [`build`] over them with the training's
//! token rule. `glassbox features build`, `quickstart` and the Python package all build
//! stores through [`build_held_out`]; [`build_for_run`] reads everything from a run
//! directory.

use crate::{bad, build, BuildOptions, BuildReport, Result};
use glassbox_model::Model;
use glassbox_sae::Dictionary;
use std::path::{Path, PathBuf};

/// The held-out text a store is built over, and what its `meta` table records.
pub struct HeldOutStore<'a> {
    /// the model, with its tokenizer (it packs the corpus and shows the tokens)
    pub model: &'a Model,
    /// the model as given (what `serve` reopens; recorded as `model_spec`)
    pub model_spec: String,
    /// the dictionary whose features are described
    pub dict: &'a Dictionary,
    /// the folder the dictionary was read from (recorded as `sae_dir`)
    pub dict_dir: PathBuf,
    /// the hook the dictionary reads
    pub hook: String,
    /// the training corpus: a .txt/.jsonl/.parquet file or folder
    pub corpus: PathBuf,
    /// the JSONL field or Parquet column holding the text
    pub text_field: String,
    /// tokens per window, BOS first (the training run's)
    pub context_size: usize,
    /// the training run's seed: it decides which windows were held out
    pub seed: u64,
    /// evaluated tokens (`None`: every held-out window)
    pub tokens: Option<usize>,
    /// extra `meta` entries (e.g. `sae_spec` for a fetched dictionary)
    pub meta: Vec<(String, String)>,
}

/// Builds the store at `out` over `input`'s held-out windows. `opts.rows` is replaced by
/// the training's rule (the model's special tokens, the dictionary's massive-activation
/// threshold). `note` receives what a person would want to read (the corpus, how many
/// windows, what was left out); `on_batch(done, total)` the windows done after each batch
/// and how many there are.
pub fn build_held_out(
    input: &HeldOutStore,
    opts: &BuildOptions,
    out: &Path,
    note: &mut dyn FnMut(&str),
    mut on_batch: impl FnMut(usize, usize),
) -> Result<BuildReport> {
    let model = input.model;
    let dict = input.dict;
    let hooks = crate::check_hooks(&model.transformer, dict, &input.hook, opts.neurons)?;
    let read = glassbox_data::read_corpus(&input.corpus, &input.text_field)
        .map_err(|e| bad(e.to_string()))?;
    note(&format!(
        "corpus {}: {}",
        input.corpus.display(),
        read.report
    ));
    let bos = model.tokenizer()?.bos_token_id;
    let (_, held_out) = glassbox_data::pack(
        model,
        &read.texts,
        input.context_size,
        bos,
        input.seed,
        glassbox_data::HELD_OUT_FRACTION,
    )
    .map_err(|e| bad(e.to_string()))?;
    let per_window = input.context_size - 1;
    let want = input
        .tokens
        .map_or(held_out.len(), |t| t.div_ceil(per_window));
    if want > held_out.len() {
        note(&format!(
            "note: the corpus has {} held-out windows (about {} tokens); {} tokens want {want}: using all of them",
            held_out.len(),
            held_out.len() * per_window,
            input.tokens.unwrap_or(0)
        ));
    }
    let windows = &held_out[..want.min(held_out.len())];
    let tok = model.tokenizer()?;
    let token_text = |t: u32| tok.token_text(t);
    let opts = BuildOptions {
        rows: glassbox_model::RowRule::for_model(model)
            .with_massive(glassbox_model::MassiveNorm::from_cfg(&dict.extra_cfg)),
        ..opts.clone()
    };
    let mut meta = vec![
        ("model".to_string(), model.label()),
        ("model_spec".into(), input.model_spec.clone()),
        ("sae_dir".into(), input.dict_dir.display().to_string()),
        ("architecture".into(), dict.architecture.name().into()),
        ("corpus".into(), input.corpus.display().to_string()),
        ("text_field".into(), input.text_field.clone()),
        ("split_seed".into(), input.seed.to_string()),
        (
            "eval_fraction".into(),
            glassbox_data::HELD_OUT_FRACTION.to_string(),
        ),
        ("held_out".into(), "true".into()),
    ];
    meta.extend(input.meta.iter().cloned());
    let excluded = match opts.rows.massive() {
        Some(m) => format!(
            "position 0, special tokens and massive-activation rows ({} norm over {:.1}) excluded",
            m.hook, m.threshold
        ),
        None => "position 0 and special tokens excluded; this dictionary records no \
                 massive-activation threshold"
            .into(),
    };
    note(&format!(
        "{} features of {} and {} neurons of {} over {} held-out windows of {} tokens ({excluded})",
        dict.d_sae,
        hooks.hook,
        hooks.d_mlp,
        hooks.neuron_hook.as_deref().unwrap_or("-"),
        windows.len(),
        input.context_size,
    ));
    build(
        &crate::BuildInput {
            model: &model.transformer,
            dict,
            hook: &input.hook,
            windows,
            token_text: &token_text,
            meta,
        },
        &opts,
        out,
        |n| on_batch(n, windows.len()),
    )
}

/// Builds `run_dir/features.sqlite` for a training run directory with `model` (the one
/// its `config.toml` names, opened by the caller): the run's dictionary, hook, corpus
/// (`None` in the file: the default corpus at `default_corpus`), window length and seed.
#[allow(clippy::too_many_arguments)]
pub fn build_for_run(
    model: &Model,
    model_spec: &str,
    run_dir: &Path,
    default_corpus: impl FnOnce() -> Option<PathBuf>,
    tokens: Option<usize>,
    opts: &BuildOptions,
    note: &mut dyn FnMut(&str),
    on_batch: impl FnMut(usize, usize),
) -> Result<BuildReport> {
    let cfg = crate::run_dir::read_run(run_dir)?;
    let dict = glassbox_sae::format::load(run_dir)?;
    let hook = cfg
        .hook
        .clone()
        .or_else(|| dict.hook_name.clone())
        .ok_or_else(|| bad(format!("{} names no hook", run_dir.display())))?;
    let corpus = cfg
        .corpus
        .clone()
        .map(PathBuf::from)
        .or_else(default_corpus)
        .ok_or_else(|| {
            bad(format!(
                "{} names no corpus and the default corpus is not available",
                run_dir.display()
            ))
        })?;
    let input = HeldOutStore {
        model,
        model_spec: model_spec.to_string(),
        dict: &dict,
        dict_dir: run_dir.to_path_buf(),
        hook,
        corpus,
        text_field: cfg.text_field.clone().unwrap_or_else(|| "text".into()),
        context_size: cfg
            .context_size
            .or_else(|| dictionary_context_size(&dict))
            .unwrap_or(128),
        seed: cfg.seed(),
        tokens,
        meta: Vec::new(),
    };
    build_held_out(
        &input,
        opts,
        &run_dir.join(crate::STORE_FILE),
        note,
        on_batch,
    )
}

/// The window length a dictionary's `cfg.json` records (`metadata.context_size`).
pub fn dictionary_context_size(dict: &Dictionary) -> Option<usize> {
    dict.extra_cfg
        .get("metadata")
        .and_then(|m| m.get("context_size"))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
}
