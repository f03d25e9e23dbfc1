//! The whole build: the streaming pass, the weight-only effects, the summaries and the
//! comparison, written to one store.

use crate::describe::{compare, summarise, Summary};
use crate::effects::{
    logit_effects, logit_effects_of, neighbours, neighbours_of, neuron_directions, TokenEffects,
};
use crate::pass::{analyse, check_hooks, Analysis};
use crate::write::{write_store, StoreInput};
use crate::{BuildOptions, Result};
use glassbox_model::Transformer;
use glassbox_sae::Dictionary;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a build reads.
pub struct BuildInput<'a> {
    /// the model the windows run through
    pub model: &'a Transformer,
    /// the dictionary (SAE or transcoder) whose features are described
    pub dict: &'a Dictionary,
    /// the hook the dictionary reads (one TransformerLens name, e.g.
    /// `blocks.3.hook_resid_post`)
    pub hook: &'a str,
    /// held-out token windows, all the same length
    pub windows: &'a [Vec<u32>],
    /// the display text of a token id
    pub token_text: &'a dyn Fn(u32) -> String,
    /// extra `meta` entries (model, sae_dir, corpus, ...)
    pub meta: Vec<(String, String)>,
}

/// What a build did.
#[derive(Debug)]
pub struct BuildReport {
    /// the store written
    pub path: PathBuf,
    /// statistics rows (tokens) evaluated: the windows' tokens less the left-out ones
    pub tokens: u64,
    /// windows run
    pub windows: usize,
    /// wall time of the whole build
    pub seconds: f64,
    /// (phase, seconds): pass (of which: forward, encode, feature stats, neuron
    /// stats), logit effects, neighbours, summaries, write
    pub phases: Vec<(&'static str, f64)>,
    /// the features-vs-neurons numbers of the `comparison` table
    /// ([`compare`](crate::describe::compare))
    pub comparison: Vec<(String, f64)>,
    /// the streaming pass's statistics
    pub analysis: Analysis,
    /// per feature: its top examples' tokens
    pub feature_summaries: Vec<Summary>,
    /// per neuron, when neurons were analysed
    pub neuron_summaries: Option<Vec<Summary>>,
    /// per feature, its direct logit effects (`None`: the dictionary's output width is
    /// not the model's, or `logit_effects` is 0)
    pub logit_effects: Option<Vec<TokenEffects>>,
    /// per feature, its nearest features by decoder cosine: (id, cosine)
    pub neighbours: Vec<Vec<(u32, f32)>>,
    /// the MLP neurons' own, from their output weights (with neurons)
    pub neuron_logit_effects: Option<Vec<TokenEffects>>,
    /// per neuron, its nearest neurons by output-weight cosine (empty without neurons)
    pub neuron_neighbours: Vec<Vec<(u32, f32)>>,
}

/// Builds the feature store at `out` (atomically). A dictionary that does not fit the
/// hook fails before any work. `on_batch` gets the number of windows of each finished
/// batch.
pub fn build(
    input: &BuildInput,
    opts: &BuildOptions,
    out: &Path,
    on_batch: impl FnMut(usize),
) -> Result<BuildReport> {
    let started = Instant::now();
    check_hooks(input.model, input.dict, input.hook, opts.neurons)?;
    let mut phases = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, phases: &mut Vec<(&'static str, f64)>| {
        phases.push((name, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let analysis = analyse(
        input.model,
        input.dict,
        input.hook,
        input.windows,
        opts,
        on_batch,
    )?;
    lap("pass", &mut phases);
    phases.extend(analysis.seconds.iter().map(|&(n, s)| (n, s)));
    let effects = logit_effects(input.model, input.dict, opts.logit_effects)?;
    lap("logit effects", &mut phases);
    let near = neighbours(input.dict, opts.neighbours)?;
    lap("neighbours", &mut phases);
    // the neurons' own: from what each writes to the residual stream (its output weights)
    let neuron_layer = analysis
        .hooks
        .neuron_hook
        .as_deref()
        .and_then(glassbox_model::hooks::layer_of)
        .filter(|_| analysis.neurons.is_some());
    let (neuron_effects, neuron_near) = match neuron_layer {
        Some(l) => {
            let rows = neuron_directions(input.model, l)?;
            let fx = (opts.logit_effects > 0)
                .then(|| logit_effects_of(input.model, &rows, opts.logit_effects))
                .transpose()?;
            (fx, neighbours_of(&rows, opts.neighbours)?)
        }
        None => (None, Vec::new()),
    };
    lap("neuron effects", &mut phases);
    let fs: Vec<Summary> = analysis.features.units.par_iter().map(summarise).collect();
    let ns: Option<Vec<Summary>> = analysis
        .neurons
        .as_ref()
        .map(|g| g.units.par_iter().map(summarise).collect());
    let mut groups = vec![&analysis.features];
    let mut sums: Vec<&[Summary]> = vec![&fs];
    if let (Some(g), Some(s)) = (analysis.neurons.as_ref(), ns.as_ref()) {
        groups.push(g);
        sums.push(s);
    }
    let comparison = compare(&groups, &sums);
    lap("summaries", &mut phases);
    write_store(
        out,
        &StoreInput {
            analysis: &analysis,
            feature_summaries: &fs,
            neuron_summaries: ns.as_deref(),
            logit_effects: effects.as_deref(),
            neighbours: &near,
            neuron_logit_effects: neuron_effects.as_deref(),
            neuron_neighbours: &neuron_near,
            comparison: &comparison,
            windows: input.windows,
            token_text: input.token_text,
            meta: {
                // how many rows the massive-activation rule left out, and its threshold
                let mut meta = input.meta.clone();
                meta.push((
                    "massive_rows_excluded".into(),
                    analysis.massive_excluded.to_string(),
                ));
                if let Some(m) = opts.rows.massive() {
                    meta.push(("massive_norm".into(), m.to_json().to_string()));
                }
                meta
            },
            started,
        },
    )?;
    lap("write", &mut phases);
    Ok(BuildReport {
        path: out.to_path_buf(),
        tokens: analysis.tokens,
        windows: analysis.windows,
        seconds: started.elapsed().as_secs_f64(),
        phases,
        comparison,
        analysis,
        feature_summaries: fs,
        neuron_summaries: ns,
        logit_effects: effects,
        neighbours: near,
        neuron_logit_effects: neuron_effects,
        neuron_neighbours: neuron_near,
    })
}
