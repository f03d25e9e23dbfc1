//! The live views: run the model on a prompt and encode it with the dictionary, or
//! generate with and without steering. The model is loaded on first use. Every view
//! takes a [`Cancel`] and stops at its next check once the request's deadline has
//! passed or its client has gone.

use crate::error::{ApiError, ApiResult};
use crate::limits::Cancel;
use candle_core::Tensor;
use glassbox_analysis::steering::Steering;
use glassbox_model::hooks::HookLayout;
use glassbox_model::{Batch, HookFilter, LogitsMode, Model, Run, SamplingOptions};
use glassbox_sae::Dictionary;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Prompts longer than this are cut to their first `MAX_PROMPT_TOKENS` tokens (with a
/// message in the response).
pub const MAX_PROMPT_TOKENS: usize = 256;
/// Features listed per token in the prompt view.
pub const TOP_FEATURES_PER_TOKEN: usize = 5;
/// Most tokens a steering request may generate.
pub const MAX_NEW_TOKENS: usize = 200;
/// Default number of generated tokens for steering.
pub const DEFAULT_NEW_TOKENS: usize = 30;
/// Most features one steering request may combine.
pub const MAX_STEER_FEATURES: usize = 16;

/// The dictionary (loaded when the server starts) and the model (loaded on first use).
pub struct Live {
    /// the run's dictionary (SAE or transcoder)
    pub dictionary: Arc<Dictionary>,
    /// the folder it was loaded from
    pub dictionary_dir: PathBuf,
    /// the model spec from config.toml (or the store's meta), if any
    pub model_spec: Option<String>,
    model: Mutex<Option<Arc<Model>>>,
}

/// Expands a leading `~/` with `$HOME`.
fn expand_home(spec: &str) -> String {
    match (spec.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest).to_string_lossy().into_owned(),
        _ => spec.to_string(),
    }
}

/// Opens the model named by `spec` (a path, `~/…`, a fetched packaged model such as
/// `default`, or a HF repo id already in the HF cache): what every view that runs a
/// model uses. Never downloads: specs come from files (a run's config.toml, a graph's
/// `metadata.model`), and no file the server reads may make it fetch gigabytes.
/// Blocking.
pub(crate) fn open_model(spec: &str) -> ApiResult<Model> {
    let spec = expand_home(spec);
    eprintln!("loading the model {spec} ...");
    let opts = glassbox_hub::OpenOptions {
        offline: true,
        ..Default::default()
    };
    glassbox_hub::open_model(&spec, &opts).map_err(|e| ApiError::unavailable(e.to_string()))
}

fn model_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("model error: {e}"))
}

impl Live {
    /// The live views of `dictionary` (loaded from `dictionary_dir`) on the model
    /// `model_spec` names; nothing is loaded yet.
    pub fn new(
        dictionary: Dictionary,
        dictionary_dir: PathBuf,
        model_spec: Option<String>,
    ) -> Self {
        Live {
            dictionary: Arc::new(dictionary),
            dictionary_dir,
            model_spec,
            model: Mutex::new(None),
        }
    }

    /// Whether the model has been loaded (by an earlier live request).
    pub fn model_loaded(&self) -> bool {
        self.model.lock().map(|m| m.is_some()).unwrap_or(false)
    }

    /// The model, loading it on first use. Blocking: call from a blocking task.
    pub fn model(&self) -> ApiResult<Arc<Model>> {
        let mut slot = self
            .model
            .lock()
            .map_err(|_| ApiError::internal("the model slot was poisoned"))?;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let spec = self.model_spec.as_deref().ok_or_else(|| {
            ApiError::unavailable(
                "this run directory names no model (no `model = \"...\"` in config.toml): the live views need one",
            )
        })?;
        let model = open_model(spec)?;
        model.tokenizer().map_err(|e| {
            ApiError::unavailable(format!("the model has no tokenizer for text prompts: {e}"))
        })?;
        let model = Arc::new(model);
        *slot = Some(model.clone());
        Ok(model)
    }

    fn read_hook(&self) -> ApiResult<String> {
        self.dictionary.hook_name.clone().ok_or_else(|| {
            ApiError::unavailable("the dictionary's cfg.json names no hook (metadata.hook_name)")
        })
    }

    /// Tokens of `text` and, per token, the activation of `feature` and the most active
    /// features. `labels` gives a feature's label for the response.
    pub fn prompt(
        &self,
        text: &str,
        feature: Option<usize>,
        labels: impl Fn(&[i64]) -> std::collections::HashMap<i64, String>,
        cancel: &Cancel,
    ) -> ApiResult<Value> {
        let d = &self.dictionary;
        if let Some(f) = feature {
            if f >= d.d_sae {
                return Err(ApiError::bad_request(format!(
                    "feature {f} does not exist: the dictionary has {} features (0..{})",
                    d.d_sae,
                    d.d_sae.saturating_sub(1)
                )));
            }
        }
        if text.trim().is_empty() {
            return Err(ApiError::bad_request("the prompt is empty"));
        }
        let hook = self.read_hook()?;
        if HookLayout::of(&hook) == HookLayout::Pattern {
            return Err(ApiError::unavailable(format!(
                "the dictionary reads `{hook}`, an attention pattern: the prompt view needs one vector per token"
            )));
        }
        let model = self.model()?;
        cancel.check()?;
        let tok = model.tokenizer().map_err(model_err)?;
        // the one rule every command follows (BOS where the tokenizer asks for it)
        let mut ids = tok.encode_prompt(text).map_err(model_err)?;
        if ids.is_empty() {
            return Err(ApiError::bad_request("the prompt has no tokens"));
        }
        let mut message = None;
        let full_len = ids.len();
        let limit = MAX_PROMPT_TOKENS.min(model.config().n_ctx);
        if ids.len() > limit {
            ids.truncate(limit);
            message = Some(format!(
                "the prompt has {full_len} tokens; only the first {limit} were run (the prompt view's limit)"
            ));
        }
        let m = &model.transformer;
        // the positions every statistic leaves out (the feature store's rule, with the
        // dictionary's massive-activation threshold), decided on this run
        let rule = glassbox_model::RowRule::for_model(&model)
            .with_massive(glassbox_model::MassiveNorm::from_cfg(&d.extra_cfg));
        let filter = HookFilter::new(rule.hooks_with_norm(std::slice::from_ref(&hook)), &m.config)
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "the dictionary's hook does not fit this model: {e}"
                ))
            })?;
        let mut run = Run::new().cache(filter).logits(LogitsMode::None);
        if let Some(l) = glassbox_model::hooks::layer_of(&hook) {
            run = run.stop_at_layer((l + 1).min(m.config.n_layers));
        }
        let out = m.run(&Batch::single(&ids), &mut run).map_err(model_err)?;
        let acts = out
            .cache
            .get(&hook)
            .ok_or_else(|| ApiError::internal(format!("the run did not reach {hook}")))?;
        // one row per token: a per-head hook's [seq, head, d_head] has its heads
        // flattened, as the feature store and the evaluation read it
        let x = acts
            .get(0)
            .and_then(|x| x.flatten_from(1))
            .map_err(model_err)?;
        let width = x.dim(1).map_err(model_err)?;
        if width != d.d_in {
            return Err(ApiError::unavailable(format!(
                "`{hook}` has {width} values per token in this model, the dictionary reads {}: it was trained on another model",
                d.d_in
            )));
        }
        let f = d.encode(&x).map_err(model_err)?;
        let rows: Vec<Vec<f32>> = f.to_vec2().map_err(model_err)?;

        let mut tops: Vec<Vec<(usize, f32)>> = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut idx: Vec<(usize, f32)> = row
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, a)| *a > 0.0)
                .collect();
            idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            idx.truncate(TOP_FEATURES_PER_TOKEN);
            tops.push(idx);
        }
        let mut wanted: Vec<i64> = tops.iter().flatten().map(|(i, _)| *i as i64).collect();
        wanted.extend(feature.map(|f| f as i64));
        wanted.sort_unstable();
        wanted.dedup();
        let names = labels(&wanted);
        let massive = rule
            .massive_flags(&out.cache, ids.len())
            .map_err(model_err)?;
        // characters split across byte-level tokens shown whole, not as "�"
        let texts = tok.token_texts(&ids);
        let tokens: Vec<Value> = ids
            .iter()
            .zip(rows.iter().zip(&tops))
            .enumerate()
            .map(|(i, (&id, (row, top)))| {
                json!({
                    "index": i,
                    "id": id,
                    "text": texts[i],
                    "act": feature.map(|f| row[f]),
                    "excluded": rule.exclusion_after(&ids, i, massive[i]).map(|e| e.reason()),
                    "top": top.iter().map(|(f, a)| json!({
                        "id": f, "act": a, "label": names.get(&(*f as i64)),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "hook": hook,
            "feature": feature,
            "feature_label": feature.and_then(|f| names.get(&(f as i64))),
            "n_tokens": ids.len(),
            "input_ids": ids,
            "bos": tok.bos_status(&ids),
            "summary": tok.prompt_summary(&ids),
            "prompt_tokens": full_len,
            "limit": limit,
            "truncated": full_len > ids.len(),
            "message": message,
            "tokens": tokens,
        }))
    }

    /// Greedy continuations of `prompt` without and with the features' decoder rows
    /// (× strength, summed) added at the dictionary's hook at every position.
    pub fn steer(
        &self,
        prompt: &str,
        features: &[(usize, f64)],
        max_new_tokens: usize,
        cancel: &Cancel,
    ) -> ApiResult<Value> {
        let d = &self.dictionary;
        if prompt.trim().is_empty() {
            return Err(ApiError::bad_request("the prompt is empty"));
        }
        if features.is_empty() {
            return Err(ApiError::bad_request(
                "give at least one feature: \"features\": [{\"id\": F, \"strength\": S}]",
            ));
        }
        if features.len() > MAX_STEER_FEATURES {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_STEER_FEATURES} features per request"
            )));
        }
        if max_new_tokens == 0 || max_new_tokens > MAX_NEW_TOKENS {
            return Err(ApiError::bad_request(format!(
                "max_new_tokens must be between 1 and {MAX_NEW_TOKENS}"
            )));
        }
        for &(f, s) in features {
            if f >= d.d_sae {
                return Err(ApiError::bad_request(format!(
                    "feature {f} does not exist: the dictionary has {} features (0..{})",
                    d.d_sae,
                    d.d_sae.saturating_sub(1)
                )));
            }
            if !s.is_finite() || s.abs() > 1e4 {
                return Err(ApiError::bad_request(format!(
                    "strength {s} for feature {f} must be a finite number of magnitude at most 10000"
                )));
            }
        }
        // a feature's decoder row writes to the hook the dictionary reconstructs: the
        // output hook of a transcoder, the read hook of an SAE
        let hook = match &d.hook_name_out {
            Some(h) => h.clone(),
            None => self.read_hook()?,
        };
        let model = self.model()?;
        cancel.check()?;
        let tok = model.tokenizer().map_err(model_err)?;
        let ids = tok.encode_prompt(prompt).map_err(model_err)?;
        if ids.is_empty() {
            return Err(ApiError::bad_request("the prompt has no tokens"));
        }
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(ApiError::bad_request(format!(
                "the prompt has {} tokens; the steering playground takes at most {MAX_PROMPT_TOKENS}",
                ids.len()
            )));
        }
        let m = &model.transformer;
        let mut direction: Option<Tensor> = None;
        for &(f, s) in features {
            let row = (d.decoder_row(f).map_err(model_err)? * s).map_err(model_err)?;
            direction = Some(match direction {
                Some(acc) => (acc + row).map_err(model_err)?,
                None => row,
            });
        }
        let direction = direction.expect("at least one feature");
        let norm = direction
            .sqr()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.sqrt())
            .and_then(|t| t.to_scalar::<f32>())
            .map_err(model_err)?;
        let steering_run = |direction: Tensor| -> ApiResult<Run<'static>> {
            match HookLayout::of(&hook) {
                HookLayout::Stream => Steering::new(&hook, direction, 1.0)
                    .and_then(|s| s.run(m))
                    .map_err(model_err),
                HookLayout::PerHead => per_head_steering(m, &hook, direction),
                HookLayout::Pattern => Err(ApiError::unavailable(format!(
                    "the dictionary writes `{hook}`, an attention pattern: it cannot be steered"
                ))),
            }
        };
        let mut run = steering_run(direction.clone())?;
        // the next-token effect at the prompt's end, as `glassbox steer` reports it
        let next_token = {
            let last = |r: &mut Run| -> ApiResult<Vec<f32>> {
                let out = m.run(&Batch::single(&ids), r).map_err(model_err)?;
                out.logits()
                    .and_then(|l| Ok(l.flatten_all()?.to_vec1::<f32>()?))
                    .map_err(model_err)
            };
            let plain = last(&mut Run::new().logits(LogitsMode::Last))?;
            let steered = last(&mut steering_run(direction)?.logits(LogitsMode::Last))?;
            next_token_effect(tok, &plain, &steered)
        };
        cancel.check()?;
        let opts = SamplingOptions {
            max_new_tokens,
            stop_tokens: tok.stop_tokens(),
            ..Default::default()
        };
        // each generation stops after the token at which the request is cancelled
        let baseline = m
            .generate_while(&ids, &opts, &mut Run::new(), |_| !cancel.stopped())
            .map_err(model_err)?;
        cancel.check()?;
        let steered = m
            .generate_while(&ids, &opts, &mut run, |_| !cancel.stopped())
            .map_err(model_err)?;
        cancel.check()?;
        Ok(json!({
            "prompt": prompt,
            "hook": hook,
            "features": features.iter().map(|(f, s)| json!({"id": f, "strength": s})).collect::<Vec<_>>(),
            "direction_norm": norm,
            "max_new_tokens": max_new_tokens,
            "baseline": tok.decode(&baseline).map_err(model_err)?,
            "steered": tok.decode(&steered).map_err(model_err)?,
            "next_token": next_token,
        }))
    }
}

/// KL(plain ‖ steered) of the next-token distributions and the tokens that move: the
/// five likeliest before and after, with both probabilities and Δ log p.
fn next_token_effect(tok: &glassbox_model::TextTokenizer, plain: &[f32], steered: &[f32]) -> Value {
    let log_softmax = |l: &[f32]| -> Vec<f64> {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z = l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
        l.iter().map(|&x| x as f64 - z).collect()
    };
    let (a, b) = (log_softmax(plain), log_softmax(steered));
    let kl: f64 = a.iter().zip(&b).map(|(&p, &q)| p.exp() * (p - q)).sum();
    let top = |lp: &[f64]| {
        let mut idx: Vec<usize> = (0..lp.len()).collect();
        idx.sort_by(|&i, &j| lp[j].total_cmp(&lp[i]));
        idx.truncate(5);
        idx
    };
    let mut ids = top(&a);
    for i in top(&b) {
        if !ids.contains(&i) {
            ids.push(i);
        }
    }
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&i| {
            json!({
                "id": i, "text": tok.token_text(i as u32),
                "p_before": a[i].exp(), "p_after": b[i].exp(), "delta_log_p": b[i] - a[i],
            })
        })
        .collect();
    json!({ "kl": kl.max(0.0), "tokens": tokens })
}

/// A run that adds `direction` (`[n_heads · d_head]`, a per-head dictionary's decoder
/// rows) at a per-head hook `[batch, pos, head, d_head]` at every position, split into
/// its heads as the dictionary flattened them.
fn per_head_steering<'h>(
    m: &glassbox_model::Transformer,
    hook: &str,
    direction: Tensor,
) -> ApiResult<Run<'h>> {
    let filter = HookFilter::parse(hook, &m.config).map_err(|e| {
        ApiError::unavailable(format!(
            "the dictionary's hook does not fit this model: {e}"
        ))
    })?;
    let width = direction.dim(0).map_err(model_err)?;
    let name = hook.to_string();
    Ok(Run::new().hook(filter, move |_, x| {
        let dims = x.dims().to_vec();
        let (heads, d_head) = match dims[..] {
            [_, _, h, dh] if h * dh == width => (h, dh),
            _ => {
                return Err(glassbox_model::ModelError::BadIntervention {
                    hook: name.clone(),
                    problem: format!(
                        "the steering direction has {width} entries, the activation is {dims:?}"
                    ),
                })
            }
        };
        let add = direction.reshape((heads, d_head))?.to_dtype(x.dtype())?;
        Ok(x.broadcast_add(&add)?)
    }))
}
