//! Tracing a prompt, end to end: the prompt and its logit targets checked, the
//! replacement model's active features, the attribution graph, pruning, and the graph
//! in circuit-tracer's JSON shape. `glassbox trace` and the Python package's
//! `glassbox.trace` are both [`trace_prompt`].

use crate::{
    attribute, bad, graph_json, prune, Attribution, AttributionOptions, GraphContext, GraphJson,
    PruneOptions, Pruned, ReplacementState, Result, TranscoderSet,
};
use glassbox_model::Model;

/// The longest prompt traced by default: the graph's memory grows with the square of
/// its length.
pub const MAX_TRACE_TOKENS: usize = 64;

/// What a trace is asked for.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// logit targets as text (single tokens, e.g. `" Austin"`); none: the most probable
    pub targets: Vec<String>,
    /// attribution: the feature-node budget, target selection and batching
    /// (`targets` there is filled from the texts above)
    pub attribution: AttributionOptions,
    /// the node and edge thresholds of the pruned graph
    pub prune: PruneOptions,
    /// refuse longer prompts (the CLI and Python default: [`MAX_TRACE_TOKENS`])
    pub max_tokens: usize,
}

/// A finished trace.
pub struct Trace {
    /// the prompt's token ids, as traced
    pub tokens: Vec<u32>,
    /// the unpruned graph
    pub graph: Attribution,
    /// what pruning kept, the influences and the scores
    pub pruned: Pruned,
    /// the pruned graph, as `glassbox trace --out` writes it
    pub json: GraphJson,
    /// what a person should know (missing layers, another model's set, the BOS rule)
    pub notes: Vec<String>,
    /// wall time of the whole trace
    pub seconds: f64,
}

/// `text` as one token of the vocabulary (its own entry first, then its encoding).
pub fn target_token(model: &Model, text: &str) -> Result<u32> {
    let tok = model.tokenizer()?;
    if let Some(id) = tok.token_to_id(text) {
        return Ok(id);
    }
    let ids = tok.encode(text)?;
    if ids.len() != 1 {
        return Err(bad(format!(
            "target `{text}` is not one token of the vocabulary (it encodes to {} tokens: {:?}); pick a single token, often with its leading space, e.g. \" Austin\"",
            ids.len(),
            ids.iter().map(|&i| tok.token_text(i)).collect::<Vec<_>>()
        )));
    }
    Ok(ids[0])
}

/// A prompt's ids for a graph (at least 2, at most `max_tokens`), and a note when
/// position 0 is a word rather than BOS (its features are left out).
pub fn prompt_tokens(
    model: &Model,
    prompt: &str,
    max_tokens: usize,
) -> Result<(Vec<u32>, Option<String>)> {
    let tok = model.tokenizer()?;
    let tokens = tok.encode_prompt(prompt)?;
    if tokens.len() < 2 {
        return Err(bad(format!(
            "the prompt is {} ({:?}): a graph needs at least 2 tokens",
            tok.prompt_summary(&tokens),
            tok.token_texts(&tokens)
        )));
    }
    if tokens.len() > max_tokens {
        return Err(bad(format!(
            "the prompt is {} tokens; the limit is {max_tokens} (--max-tokens; the graph's memory grows with the square of its length)",
            tokens.len()
        )));
    }
    let note = match (tok.bos_status(&tokens), tok.bos_token_id) {
        ("none", Some(b)) => Some(format!(
            "position 0 ({:?}) is the attention sink, whose features are left out as in training; start the prompt with {:?} to keep every word",
            tok.token_text(tokens[0]),
            tok.token_text(b)
        )),
        _ => None,
    };
    Ok((tokens, note))
}

/// Traces `prompt` through `set` (read from `set_dir`); `model_spec` is recorded in the
/// graph's metadata. Errors: the prompt is under 2 or over `opts.max_tokens` tokens, a
/// target is not one token, or the set does not fit the model ([`CircuitError::BadInput`]).
///
/// [`CircuitError::BadInput`]: crate::CircuitError::BadInput
pub fn trace_prompt(
    model: &Model,
    model_spec: &str,
    set: &TranscoderSet,
    set_dir: &str,
    prompt: &str,
    opts: &TraceOptions,
) -> Result<Trace> {
    let tok = model.tokenizer()?;
    let (tokens, bos_note) = prompt_tokens(model, prompt, opts.max_tokens)?;
    let mut notes: Vec<String> = bos_note.into_iter().collect();
    let missing: Vec<usize> = (0..model.config().n_layers)
        .filter(|&l| set.by_layer.get(l).is_none_or(|t| t.is_none()))
        .collect();
    if !missing.is_empty() {
        notes.push(format!(
            "layers {missing:?} have no transcoder: their whole MLP output is an error node"
        ));
    }
    let label = model.label();
    if let Some(trained) = &set.model {
        if *trained != label {
            notes.push(format!(
                "the set was trained on `{trained}`; tracing `{label}`"
            ));
        }
    }
    let attribution = AttributionOptions {
        targets: opts
            .targets
            .iter()
            .map(|t| target_token(model, t))
            .collect::<Result<_>>()?,
        ..opts.attribution.clone()
    };
    let started = std::time::Instant::now();
    let state = ReplacementState::new(
        &model.transformer,
        set,
        &tokens,
        attribution.max_feature_nodes,
    )?;
    notes.push(format!(
        "{} tokens, {} feature nodes ({} active features folded into error nodes: position 0 and past the feature-node budget)",
        tokens.len(),
        state.features.len(),
        state.features_folded
    ));
    let graph = attribute(&model.transformer, set, &state, &attribution)?;
    let pruned = prune(&graph, opts.prune)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = |id: u32| tok.token_text(id);
    let json = graph_json(
        &graph,
        &pruned,
        opts.prune,
        &GraphContext {
            prompt,
            model: model_spec,
            transcoders: set_dir,
            token_text: &text,
        },
    );
    Ok(Trace {
        tokens,
        graph,
        pruned,
        json,
        notes,
        seconds,
    })
}
