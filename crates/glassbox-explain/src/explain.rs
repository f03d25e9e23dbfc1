//! One feature, start to end: the explainer asked (a reply it cannot read is asked once
//! more, then recorded as a failure, never as an explanation), then detection and
//! fuzzing scored on the held-out and non-activating contexts.

use crate::client::Chat;
use crate::context::Context;
use crate::material::Material;
use crate::prompts::{explainer_messages, parse_explanation, PROMPT_VERSION};
use crate::score::{detection_items, fuzzing_items, score, Score, Test, FUZZ_MARK_FRACTION};
use anyhow::Result;
use serde_json::json;
use std::time::Instant;

/// How a feature is explained and scored.
#[derive(Debug, Clone)]
pub struct Options {
    /// excerpts per scorer request
    pub batch: usize,
    /// the longest explainer reply, in tokens
    pub explainer_max_tokens: usize,
    /// the run's seed; each feature's is derived from it ([`feature_seed`])
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 5,
            explainer_max_tokens: 120,
            seed: 0,
        }
    }
}

/// The seed of one feature's shuffles and random marks.
pub fn feature_seed(seed: u64, feature: u32) -> u64 {
    seed ^ (feature as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What came of one feature.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// the explanation; `None` when the explainer never gave a readable one
    pub explanation: Option<String>,
    /// why there is no explanation, or why a score is missing
    pub failure: Option<String>,
    /// detection's result (absent without an explanation)
    pub detection: Option<Score>,
    /// fuzzing's result (absent without an explanation)
    pub fuzzing: Option<Score>,
    /// the seed, what was shown and held out, the prompt version, both scores
    pub details: serde_json::Value,
    /// prompt tokens over every request
    pub prompt_tokens: u64,
    /// completion tokens over every request
    pub completion_tokens: u64,
    /// wall time
    pub seconds: f64,
}

/// Explains `m` with `explainer` and scores the explanation with `scorer` on its held-out
/// contexts and `non_activating`. An endpoint that cannot be reached is an error (the
/// caller stops; what it already stored stays); an unreadable reply is not.
pub fn explain_feature(
    explainer: &dyn Chat,
    scorer: &dyn Chat,
    m: &Material,
    non_activating: &[Context],
    opts: &Options,
) -> Result<Outcome> {
    let clock = Instant::now();
    let seed = feature_seed(opts.seed, m.feature);
    let shown: Vec<String> = m
        .shown
        .iter()
        .map(|c| c.marked(&c.marks(FUZZ_MARK_FRACTION)))
        .collect();
    let messages = explainer_messages(&shown, &m.promoted, &m.suppressed);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut explanation = Err(String::new());
    for _ in 0..2 {
        let reply = explainer.chat(&messages, opts.explainer_max_tokens)?;
        prompt_tokens += reply.prompt_tokens;
        completion_tokens += reply.completion_tokens;
        explanation = parse_explanation(&reply.text).map_err(|e| format!("{e:#}"));
        if explanation.is_ok() {
            break;
        }
    }
    let mut details = json!({
        "prompt_version": PROMPT_VERSION,
        "seed": seed,
        "shown": m.shown.len(),
        "held_out": m.held_out.iter().map(Vec::len).collect::<Vec<_>>(),
        "non_activating": non_activating.len(),
        "fuzz_mark_fraction": FUZZ_MARK_FRACTION,
        "scorer_batch": opts.batch,
    });
    let explanation = match explanation {
        Ok(e) => e,
        Err(why) => {
            return Ok(Outcome {
                explanation: None,
                failure: Some(format!("the explainer's reply was unreadable twice: {why}")),
                detection: None,
                fuzzing: None,
                details,
                prompt_tokens,
                completion_tokens,
                seconds: clock.elapsed().as_secs_f64(),
            })
        }
    };
    let detection = score(
        scorer,
        Test::Detection,
        &explanation,
        &detection_items(&m.held_out, non_activating, seed),
        opts.batch,
    )?;
    let activating: Vec<Context> = m.held_out.concat();
    let fuzzing = score(
        scorer,
        Test::Fuzzing,
        &explanation,
        &fuzzing_items(&activating, FUZZ_MARK_FRACTION, seed),
        opts.batch,
    )?;
    let mut missing = Vec::new();
    for s in [&detection, &fuzzing] {
        if s.balanced_accuracy.is_none() {
            let why = if s.positives == 0 || s.negatives == 0 {
                format!(
                    "{} positive and {} negative excerpts",
                    s.positives, s.negatives
                )
            } else {
                format!(
                    "{} of {} excerpts answered readably ({} of {} batches unreadable)",
                    s.answered,
                    s.positives + s.negatives,
                    s.failed_batches,
                    (s.positives + s.negatives).div_ceil(opts.batch.max(1))
                )
            };
            missing.push(format!("no {} score: {why}", test_name(s.test)));
        }
    }
    for s in [&detection, &fuzzing] {
        prompt_tokens += s.prompt_tokens;
        completion_tokens += s.completion_tokens;
    }
    details["detection"] = serde_json::to_value(&detection)?;
    details["fuzzing"] = serde_json::to_value(&fuzzing)?;
    Ok(Outcome {
        explanation: Some(explanation),
        failure: (!missing.is_empty()).then(|| missing.join("; ")),
        detection: Some(detection),
        fuzzing: Some(fuzzing),
        details,
        prompt_tokens,
        completion_tokens,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

fn test_name(t: Test) -> &'static str {
    match t {
        Test::Detection => "detection",
        Test::Fuzzing => "fuzzing",
    }
}
