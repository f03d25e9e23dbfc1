//! `glassbox explain`: each chosen feature explained by an OpenAI-compatible endpoint
//! and the explanation scored on held-out contexts (delphi's detection and fuzzing),
//! stored in the run's `features.sqlite`. Resumable: features already explained by the
//! same explainer model and prompt version are skipped.

use crate::commands::features::resolve_spec;
use crate::open::{open_dictionary, open_model, progress};
use anyhow::{bail, Context as _, Result};
use glassbox_explain::client::Endpoint;
use glassbox_explain::explain::{explain_feature, feature_seed, Options, Outcome};
use glassbox_explain::material::{material, Material};
use glassbox_explain::negatives::QuietSpans;
use glassbox_explain::prompts::PROMPT_VERSION;
use glassbox_features::explanations::{Explanation, ExplanationWriter};
use glassbox_features::store::{FeatureStore, Order};
use glassbox_features::UnitKind;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The run directory (or its features.sqlite) whose features are explained; build
    /// the store first with `glassbox features build`
    #[arg(long)]
    run: PathBuf,
    /// Features to explain: `0..500` (500 excluded), `0..=9`, a list `3,7,11`, or a mix
    #[arg(long, conflicts_with = "sample")]
    features: Option<String>,
    /// Explain N features drawn at random (by --seed) among those that fired
    #[arg(long)]
    sample: Option<usize>,
    /// The explainer: an OpenAI-compatible base URL (`glassbox serve-model`, vLLM,
    /// llama.cpp's server, Ollama, a hosted API), e.g. http://127.0.0.1:8000/v1
    #[arg(long)]
    explainer: String,
    /// The `model` field of the explainer's requests
    #[arg(long)]
    explainer_model: String,
    /// The scorer's base URL (default: the explainer's)
    #[arg(long)]
    scorer: Option<String>,
    /// The scorer's model (default: the explainer's)
    #[arg(long)]
    scorer_model: Option<String>,
    /// An environment variable holding the API key, sent as a bearer token to both
    #[arg(long)]
    api_key_env: Option<String>,
    /// Features explained at once (requests in flight)
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of --sample, of the scorer's shuffles and of fuzzing's random marks
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Non-activating contexts per feature in detection (verified zero by running the
    /// model and the dictionary)
    #[arg(long, default_value_t = 20)]
    non_activating: usize,
    /// Held-out windows run to find non-activating contexts
    #[arg(long, default_value_t = 64)]
    quiet_windows: usize,
    /// Excerpts per scorer request
    #[arg(long, default_value_t = 5)]
    scorer_batch: usize,
    /// The longest one request may take, in seconds (then it is retried, 3 times)
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Explain features again that this explainer model already explained
    #[arg(long)]
    redo: bool,
    /// The model to run for non-activating contexts (default: the one the store names)
    #[arg(long)]
    model: Option<String>,
}

/// What `features build` recorded in the store's `meta` that explaining needs.
fn meta_value<'a>(
    meta: &'a std::collections::BTreeMap<String, String>,
    key: &str,
    store: &Path,
) -> Result<&'a str> {
    meta.get(key).map(String::as_str).with_context(|| {
        format!(
            "{} records no `{key}`; rebuild it with `glassbox features build` (stores \
             written by hand or by an old glassbox lack it)",
            store.display()
        )
    })
}

fn endpoint(url: &str, model: &str, key: &Option<String>, timeout: u64) -> Result<Endpoint> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("`{url}` is not an http(s) URL; give the endpoint's base, e.g. http://127.0.0.1:8000/v1");
    }
    let mut e = Endpoint::new(url, model);
    e.api_key = key.clone();
    e.timeout = Duration::from_secs(timeout.max(1));
    Ok(e)
}

fn chosen_features(a: &Args, store: &FeatureStore) -> Result<Vec<u32>> {
    let d_sae = store.count(UnitKind::Feature)? as usize;
    match (&a.features, a.sample) {
        (Some(spec), _) => Ok(crate::names::parse_ranges("--features", spec, d_sae, "feature")?
            .into_iter()
            .map(|f| f as u32)
            .collect()),
        (None, Some(n)) => {
            let mut alive: Vec<u32> = store
                .units(UnitKind::Feature, Order::Id, true, usize::MAX >> 1, 0)?
                .into_iter()
                .map(|u| u.id)
                .collect();
            alive.shuffle(&mut rand::rngs::StdRng::seed_from_u64(a.seed));
            alive.truncate(n);
            alive.sort_unstable();
            Ok(alive)
        }
        (None, None) => bail!(
            "say which features to explain: --features 0..50 (ids) or --sample 50 (drawn among those that fired)"
        ),
    }
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(a.scorer_batch > 0, "--scorer-batch must be at least 1");
    let store = FeatureStore::open(&a.run)?;
    let features = chosen_features(&a, &store)?;
    let key = match &a.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!("--api-key-env {var}: the environment variable {var} is not set")
        })?),
        None => None,
    };
    let explainer = endpoint(&a.explainer, &a.explainer_model, &key, a.timeout)?;
    let scorer_model = a.scorer_model.clone().unwrap_or(a.explainer_model.clone());
    let scorer = endpoint(
        a.scorer.as_deref().unwrap_or(&a.explainer),
        &scorer_model,
        &key,
        a.timeout,
    )?;

    let mut writer = ExplanationWriter::open(&store.path)?;
    let done = if a.redo {
        Default::default()
    } else {
        writer.explained(&a.explainer_model, PROMPT_VERSION)?
    };
    let mut todo = Vec::new();
    let (mut dead, mut skipped) = (0usize, 0usize);
    for &f in &features {
        if done.contains(&f) {
            skipped += 1;
            continue;
        }
        let detail = store
            .unit(UnitKind::Feature, f)?
            .with_context(|| format!("the store has no feature {f}"))?;
        if detail.unit.density <= 0.0 || detail.examples.is_empty() {
            dead += 1;
            continue;
        }
        todo.push(material(&detail, 10));
    }
    if dead > 0 {
        eprintln!("{dead} of the chosen features never fired on the store's text: nothing to explain, left out");
    }
    if skipped > 0 {
        eprintln!(
            "{skipped} already explained by {} ({PROMPT_VERSION}): skipped (--redo explains them again)",
            a.explainer_model
        );
    }
    if todo.is_empty() {
        println!("nothing to explain");
        return Ok(());
    }
    let meter = glassbox_audit::ledger::Meter::start("explain");
    let quiet = quiet_spans(&a, &store)?;
    let negatives: Vec<_> = todo
        .iter()
        .map(|m| {
            quiet
                .spans
                .for_feature(m.feature, a.non_activating, feature_seed(a.seed, m.feature))
        })
        .collect();
    let opts = Options {
        batch: a.scorer_batch,
        seed: a.seed,
        ..Options::default()
    };
    eprintln!(
        "explaining {} features with {} at {} (scorer {} at {}), {} at a time",
        todo.len(),
        a.explainer_model,
        explainer.base_url,
        scorer_model,
        scorer.base_url,
        a.concurrency
    );
    let bar = progress(todo.len(), "explaining features");
    let clock = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (send, recv) = std::sync::mpsc::channel::<(usize, Result<Outcome>)>();
    let mut totals = Totals::default();
    let mut first_error = None;
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..a.concurrency.min(todo.len()) {
            let send = send.clone();
            let (todo, negatives, next, stop) = (&todo, &negatives, &next, &stop);
            let (explainer, scorer, opts) = (&explainer, &scorer, &opts);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= todo.len() || stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = explain_feature(explainer, scorer, &todo[i], &negatives[i], opts);
                if send.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(send);
        for (i, r) in recv {
            match r {
                Ok(o) => {
                    let row = record(&todo[i], &o, &a, &scorer_model);
                    writer.put(&row)?;
                    totals.add(&row);
                    bar.inc(1);
                }
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    totals.print(&writer, clock.elapsed().as_secs_f64(), &a.explainer_model)?;
    // the endpoints' tokens are in the explanations; the ledger has the local model pass
    if let Some(dir) = store.path.parent() {
        crate::commands::audit::record_stage(dir, meter, quiet.tokens as u64, quiet.flops);
    }
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "explaining stopped; the {} features finished are stored in {} and a rerun resumes after them",
            totals.stored,
            writer.path().display()
        )));
    }
    Ok(())
}

/// Held-out windows run through the model and the dictionary: the store's model,
/// dictionary, hook, corpus, window length and split seed, its contexts' length.
fn quiet_spans(a: &Args, store: &FeatureStore) -> Result<Quiet> {
    let meta = store.meta()?;
    let at = &store.path;
    let spec = match &a.model {
        Some(m) => m.clone(),
        None => resolve_spec(
            meta.get("model_spec")
                .map(String::as_str)
                .unwrap_or(meta_value(&meta, "model", at)?),
        ),
    };
    let model = open_model(&spec)?;
    let (dict, _) = open_dictionary(Path::new(
        meta.get("sae_spec")
            .map(String::as_str)
            .unwrap_or(meta_value(&meta, "sae_dir", at)?),
    ))?;
    let hook = meta_value(&meta, "hook", at)?;
    let corpus = PathBuf::from(meta_value(&meta, "corpus", at)?);
    let text_field = meta.get("text_field").cloned().unwrap_or("text".into());
    let number = |key: &str| -> Result<u64> {
        meta_value(&meta, key, at)?
            .parse()
            .with_context(|| format!("the store's `{key}` is not a number"))
    };
    let context_size = number("context_size")? as usize;
    let radius = number("context_radius")? as usize;
    let seed = meta
        .get("split_seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    glassbox_features::check_hooks(&model.transformer, &dict, hook, false)?;
    let read = glassbox_data::read_corpus(&corpus, &text_field)?;
    let bos = model.tokenizer()?.bos_token_id;
    let (_, held_out) = glassbox_data::pack(
        &model,
        &read.texts,
        context_size,
        bos,
        seed,
        glassbox_data::HELD_OUT_FRACTION,
    )?;
    if held_out.is_empty() {
        bail!(
            "the corpus {} has no held-out windows of {context_size} tokens",
            corpus.display()
        );
    }
    // the last held-out windows: the store's contexts come from the first ones
    let windows = &held_out[held_out.len().saturating_sub(a.quiet_windows.max(1))..];
    let span = (2 * radius + 1).min(context_size - 1);
    let tok = model.tokenizer()?;
    let bar = progress(windows.len(), "non-activating contexts (windows)");
    let quiet = QuietSpans::find(
        &model.transformer,
        &dict,
        hook,
        windows,
        span,
        &|t| tok.token_text(t),
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    eprintln!(
        "{} spans of {span} tokens from {} held-out windows for non-activating contexts",
        quiet.len(),
        windows.len()
    );
    let tokens = windows.len() * context_size;
    let flops = tokens as f64
        * (crate::commands::audit::forward_flops_to(&model, hook, context_size)
            + glassbox_audit::cost::dictionary_forward_flops(dict.d_in, dict.d_sae, dict.d_out));
    Ok(Quiet {
        spans: quiet,
        tokens,
        flops,
    })
}

/// The non-activating spans and what finding them cost.
struct Quiet {
    spans: QuietSpans,
    tokens: usize,
    flops: f64,
}

fn record(m: &Material, o: &Outcome, a: &Args, scorer_model: &str) -> Explanation {
    let ba =
        |s: &Option<glassbox_explain::score::Score>| s.as_ref().and_then(|s| s.balanced_accuracy);
    Explanation {
        feature: m.feature,
        explainer_model: a.explainer_model.clone(),
        prompt_version: PROMPT_VERSION.into(),
        scorer_model: scorer_model.into(),
        explanation: o.explanation.clone(),
        failure: o.failure.clone(),
        detection: ba(&o.detection),
        fuzzing: ba(&o.fuzzing),
        details: o.details.clone(),
        prompt_tokens: o.prompt_tokens,
        completion_tokens: o.completion_tokens,
        seconds: o.seconds,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    }
}

/// `text` on one line, cut to `n` characters.
fn clip(text: &str, n: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= n {
        return line;
    }
    let mut cut: String = line.chars().take(n).collect();
    cut.push('…');
    cut
}

#[derive(Default)]
struct Totals {
    stored: usize,
    explained: usize,
    prompt_tokens: u64,
    completion_tokens: u64,
    detection: Vec<f64>,
    fuzzing: Vec<f64>,
    rows: Vec<Explanation>,
}

impl Totals {
    fn add(&mut self, e: &Explanation) {
        self.stored += 1;
        self.explained += usize::from(e.explanation.is_some());
        self.prompt_tokens += e.prompt_tokens;
        self.completion_tokens += e.completion_tokens;
        self.detection.extend(e.detection);
        self.fuzzing.extend(e.fuzzing);
        self.rows.push(e.clone());
    }

    fn print(&mut self, w: &ExplanationWriter, seconds: f64, model: &str) -> Result<()> {
        self.rows.sort_by_key(|r| r.feature);
        let score = |v: Option<f64>| v.map_or("  -  ".to_string(), |v| format!("{v:.3}"));
        println!("feature  detection  fuzzing  explanation");
        for r in &self.rows {
            let text = match (&r.explanation, &r.failure) {
                (Some(e), _) => e.clone(),
                (None, Some(f)) => format!("(failed: {f})"),
                (None, None) => "(failed)".into(),
            };
            println!(
                "#{:<7} {:>9}  {:>7}  {}",
                r.feature,
                score(r.detection),
                score(r.fuzzing),
                clip(&text, 120)
            );
        }
        let median =
            |v: &[f64]| glassbox_audit::median(v).map_or("-".to_string(), |m| format!("{m:.3}"));
        println!(
            "{} of {} features explained by {model} ({PROMPT_VERSION}); median detection {} over {} scored, fuzzing {} over {}; stored in {}",
            self.explained,
            self.stored,
            median(&self.detection),
            self.detection.len(),
            median(&self.fuzzing),
            self.fuzzing.len(),
            w.path().display()
        );
        println!(
            "cost: {} prompt + {} completion tokens (explainer and scorer, as the endpoints counted them), {seconds:.1} s",
            self.prompt_tokens, self.completion_tokens
        );
        Ok(())
    }
}
