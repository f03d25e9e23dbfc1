use crate::open::{open_dictionary, open_model, progress, warn_on_processing_mismatch};
use anyhow::Result;
use glassbox_analysis::sae_eval::{evaluate, resolve_hooks, EvalOptions, SaeEval};
use std::path::PathBuf;

/// The held-out share of the packed windows; the same split as `train-sae`.
use glassbox_data::HELD_OUT_FRACTION as EVAL_FRACTION;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// The dictionary: a SAELens or sparsify directory, or hf:ORG/REPO[/SUB/FOLDER]
    #[arg(long)]
    sae: PathBuf,
    /// The hook the dictionary reads (default: its cfg.json's hook_name)
    #[arg(long)]
    hook: Option<String>,
    /// The hook a transcoder predicts (default: its cfg.json's hook_name_out)
    #[arg(long)]
    hook_out: Option<String>,
    /// A .txt file or a folder of .txt files (default: the fetched State of the Union corpus)
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Evaluated tokens (first positions of windows excluded), from the held-out windows
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Seed of the window shuffle and held-out split (use train-sae's to stay held out)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Windows per forward pass
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Print one JSON object with every number
    #[arg(long)]
    json: bool,
    /// What to measure: `core` (reconstruction, sparsity, CE/KL recovered), `probing`
    /// (SAEBench's sparse probing on the built-in statement datasets and --probe-data),
    /// `absorption` (feature absorption on the first-letter task), or `all`
    #[arg(long, value_enum, default_value = "core")]
    suite: Suite,
    /// More datasets for sparse probing: CSV files with `statement` and `label` columns
    #[arg(long, num_args = 1..)]
    probe_data: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// reconstruction, sparsity, CE and KL recovered on held-out text
    Core,
    /// sparse probing (k = 1, 2, 5 latents against the raw activations)
    Probing,
    /// feature absorption on the first letters of single-token words
    Absorption,
    /// all three
    All,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.tokens > 0, "--tokens must be at least 1");
    anyhow::ensure!(a.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        a.context_size >= 3,
        "--context-size must be at least 3 (position 0 is excluded and the loss needs a next token)"
    );
    // the dictionary first: a bad path or a failed fetch should not wait for the model
    let (dict, dict_dir) = open_dictionary(&a.sae)?;
    let model = open_model(&a.model)?;
    warn_on_processing_mismatch(&dict_dir, &model);
    // refuse a wrong hook or width before reading the corpus
    let hooks = resolve_hooks(
        &model.transformer,
        &dict,
        a.hook.as_deref(),
        a.hook_out.as_deref(),
    )?;
    if let (Some(h), Some(dh)) = (&a.hook, &dict.hook_name) {
        if h != dh {
            eprintln!("note: --hook {h} differs from the dictionary's hook {dh}");
        }
    }
    let probing = match a.suite {
        Suite::Probing | Suite::All => Some(sparse_probing(&a, &model, &dict, &hooks.hook_in)?),
        _ => None,
    };
    let absorbed = match a.suite {
        Suite::Absorption | Suite::All => Some(absorption(&model, &dict, &hooks.hook_in)?),
        _ => None,
    };
    if matches!(a.suite, Suite::Probing | Suite::Absorption) {
        if a.json {
            let v = serde_json::json!({"probing": probing, "absorption": absorbed});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            probing.iter().for_each(|p| print_probing(p));
            absorbed.iter().for_each(print_absorption);
        }
        return Ok(());
    }
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let texts = glassbox_data::read_texts(&corpus)?;
    let bos = model.tokenizer()?.bos_token_id;
    let (_, held_out) =
        glassbox_data::pack(&model, &texts, a.context_size, bos, a.seed, EVAL_FRACTION)?;
    let per_window = a.context_size - 1;
    let want = a.tokens.div_ceil(per_window);
    if held_out.len() < want {
        eprintln!(
            "note: the corpus has {} held-out windows ({} tokens); --tokens {} wants {want}: evaluating on all of them",
            held_out.len(),
            held_out.len() * per_window,
            a.tokens
        );
    }
    let windows = &held_out[..want.min(held_out.len())];
    let bar = progress(
        windows.len(),
        &format!("evaluating at {} (windows)", hooks.hook_out),
    );
    let opts = EvalOptions {
        hook: Some(hooks.hook_in.clone()),
        hook_out: Some(hooks.hook_out.clone()),
        batch_windows: a.batch,
        // the token rule and the dictionary's own massive-activation threshold, as in training
        rows: glassbox_model::RowRule::for_model(&model)
            .with_massive(glassbox_model::MassiveNorm::from_cfg(&dict.extra_cfg)),
        ..EvalOptions::default()
    };
    let r = evaluate(&model.transformer, &dict, windows, &opts, |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        let o = v.as_object_mut().expect("an object");
        o.insert("model".into(), model.label().into());
        o.insert("sae".into(), a.sae.display().to_string().into());
        o.insert("corpus".into(), corpus.display().to_string().into());
        o.insert("seed".into(), a.seed.into());
        o.insert("eval_fraction".into(), EVAL_FRACTION.into());
        o.insert("held_out".into(), true.into());
        if let Some(p) = &probing {
            o.insert("probing".into(), serde_json::to_value(p)?);
        }
        if let Some(ab) = &absorbed {
            o.insert("absorption".into(), serde_json::to_value(ab)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    report(&r, &model.label(), &a);
    if let Some(p) = &probing {
        print_probing(p);
    }
    if let Some(ab) = &absorbed {
        print_absorption(ab);
    }
    Ok(())
}

/// Words per first letter in the absorption task, and the fewest a letter needs.
const WORDS_PER_LETTER: usize = 60;
const MIN_WORDS_PER_LETTER: usize = 30;

/// Feature absorption on the first-letter task: single-token lowercase words of three
/// letters or more (` cat`) from the model's vocabulary, read at the dictionary's hook as
/// the last token of `Word:{word}`; one word in five held out.
fn absorption(
    model: &glassbox_model::Model,
    dict: &glassbox_sae::Dictionary,
    hook: &str,
) -> Result<glassbox_probes::absorption::Absorption> {
    let tok = model.tokenizer()?;
    let mut by_letter: std::collections::BTreeMap<char, Vec<String>> = Default::default();
    for id in 0..model.transformer.config.d_vocab as u32 {
        let text = tok.token_text(id);
        let Some(word) = text.strip_prefix(' ') else {
            continue;
        };
        if word.len() < 3 || !word.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let first = word.chars().next().unwrap_or('a');
        let list = by_letter.entry(first).or_default();
        if list.len() >= WORDS_PER_LETTER {
            continue;
        }
        // the word must stay one token, the last, after the prefix
        let prompt = format!("Word:{text}");
        if tok.encode(&prompt)?.last() == Some(&id) {
            list.push(prompt);
        }
    }
    let (mut texts, mut letters) = (Vec::new(), Vec::new());
    for (letter, words) in by_letter
        .iter()
        .filter(|(_, w)| w.len() >= MIN_WORDS_PER_LETTER)
    {
        for w in words {
            texts.push(w.clone());
            letters.push(*letter);
        }
    }
    anyhow::ensure!(
        !texts.is_empty(),
        "the vocabulary has no letter with {MIN_WORDS_PER_LETTER} single-token lowercase words: the absorption task needs a word-level vocabulary"
    );
    let (raw, latents) = last_token_rows(model, dict, hook, &texts)?;
    let raw = &raw;
    let decoder: Vec<Vec<f32>> = dict.w_dec.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    let (train, test): (Vec<usize>, Vec<usize>) = (0..texts.len()).partition(|i| i % 5 != 0);
    Ok(glassbox_probes::absorption::absorption(
        raw,
        &latents,
        &decoder,
        &letters,
        &train,
        &test,
        MIN_WORDS_PER_LETTER / 5,
    )?)
}

fn print_absorption(a: &glassbox_probes::absorption::Absorption) {
    println!(
        "feature absorption (first letters of single-token words): mean absorption rate {:.3}, main latent silent on {:.3} of the probe's true positives",
        a.mean_absorption_rate, a.mean_missed_rate
    );
    println!("  letter  words  probe acc  main latent  absorbed / true positives");
    for l in &a.letters {
        println!(
            "  {:>6}  {:>5}  {:>9.3}  {:>11}  {} / {} ({:.3})",
            l.letter,
            l.test_words,
            l.probe_accuracy,
            format!("#{}", l.main_latent),
            l.absorbed,
            l.true_positives,
            l.absorption_rate
        );
    }
}

/// Each text's last-token activation at `hook` and its encoding by `dict`.
type Rows = Vec<Vec<f32>>;
fn last_token_rows(
    model: &glassbox_model::Model,
    dict: &glassbox_sae::Dictionary,
    hook: &str,
    texts: &[String],
) -> Result<(Rows, Rows)> {
    let layer =
        glassbox_model::hooks::layer_of(hook).unwrap_or(model.transformer.config.n_layers - 1);
    let mut acts = glassbox_probes::activations::collect(
        model,
        texts,
        hook,
        &[layer],
        glassbox_probes::activations::Position::Last,
        None,
    )?;
    let raw = acts.swap_remove(0);
    let flat: Vec<f32> = raw.iter().flatten().copied().collect();
    let x = candle_core::Tensor::from_vec(flat, (raw.len(), dict.d_in), &candle_core::Device::Cpu)?;
    let latents = dict.encode(&x)?.to_vec2()?;
    Ok((raw, latents))
}

/// One dataset's sparse probing, named.
#[derive(serde::Serialize)]
struct DatasetProbing {
    dataset: String,
    #[serde(flatten)]
    result: glassbox_probes::sparse::SparseProbing,
}

/// SAEBench's sparse probing on each dataset: the statements' last-token activations at
/// the dictionary's hook, a stratified 75/25 split by `--seed`.
fn sparse_probing(
    a: &Args,
    model: &glassbox_model::Model,
    dict: &glassbox_sae::Dictionary,
    hook: &str,
) -> Result<Vec<DatasetProbing>> {
    use glassbox_probes::dataset::{Dataset, BUILTIN};
    let mut specs: Vec<String> = BUILTIN.iter().map(|b| format!("builtin:{b}")).collect();
    specs.extend(a.probe_data.iter().map(|p| p.display().to_string()));
    let mut out = Vec::new();
    for spec in specs {
        let data = Dataset::load(&spec)?;
        let texts: Vec<String> = data.statements.iter().map(|s| s.text.clone()).collect();
        let (raw, latents) = last_token_rows(model, dict, hook, &texts)?;
        let raw = &raw;
        let (train, test) = data.split(0.25, a.seed);
        let result = glassbox_probes::sparse::sparse_probing(
            raw,
            &latents,
            &data.labels(),
            &train,
            &test,
            &glassbox_probes::sparse::KS,
        )?;
        out.push(DatasetProbing {
            dataset: data.name.clone(),
            result,
        });
    }
    Ok(out)
}

fn print_probing(p: &[DatasetProbing]) {
    println!("sparse probing (held-out accuracy; the top-k latents by class-mean difference, then logistic regression):");
    println!(
        "  {:<14} {:>6} {:>6}   {:>6} {:>6} {:>6}   latents (k = 5)",
        "dataset", "n", "raw", "k=1", "k=2", "k=5"
    );
    for d in p {
        let acc = |k: usize| {
            d.result
                .sparse
                .iter()
                .find(|f| f.k == k)
                .map_or("-".to_string(), |f| format!("{:.3}", f.accuracy))
        };
        let top: Vec<String> = d
            .result
            .sparse
            .last()
            .map(|f| f.latents.iter().map(|l| format!("#{l}")).collect())
            .unwrap_or_default();
        println!(
            "  {:<14} {:>6} {:>6.3}   {:>6} {:>6} {:>6}   {}",
            d.dataset,
            d.result.train + d.result.test,
            d.result.raw_accuracy,
            acc(1),
            acc(2),
            acc(5),
            top.join(" ")
        );
    }
}

fn report(r: &SaeEval, model: &str, a: &Args) {
    let kind = if r.transcoder {
        format!("{} transcoder {} → {}", r.architecture, r.hook, r.hook_out)
    } else {
        format!("{} SAE at {}", r.architecture, r.hook)
    };
    println!(
        "{kind} (d_sae {}) on {model}: {} held-out tokens ({} windows of {} tokens, seed {})",
        r.d_sae, r.tokens, r.windows, r.context_size, a.seed
    );
    println!(
        "position 0 of every window (BOS / attention sink) is excluded from every number and is not spliced"
    );
    let pct = |v: f64| format!("{:.2} %", v * 100.0);
    let rows = [
        ("L0 (active features / token)", format!("{:.2}", r.l0)),
        (
            "FVU",
            format!(
                "{:.4}   (explained variance {:.4})",
                r.fvu, r.explained_variance
            ),
        ),
        ("mean cosine(x, reconstruction)", format!("{:.4}", r.cosine)),
        (
            "dead features",
            format!(
                "{}   (never fired in {} tokens)",
                pct(r.dead_fraction),
                r.window_tokens
            ),
        ),
        (
            "dense features",
            format!(
                "{}   (fired on > {:.0} % of tokens)",
                pct(r.dense_fraction),
                r.dense_threshold * 100.0
            ),
        ),
        (
            "CE loss",
            format!(
                "clean {:.4}, spliced {:.4}, zero-ablated {:.4}",
                r.ce_clean, r.ce_spliced, r.ce_zero_ablated
            ),
        ),
        ("CE loss recovered", format!("{:.4}", r.ce_recovered)),
        (
            "KL(clean ‖ ·)",
            format!(
                "spliced {:.5}, zero-ablated {:.5} nats/token",
                r.kl_spliced, r.kl_zero_ablated
            ),
        ),
        ("KL recovered", format!("{:.4}", r.kl_recovered)),
    ];
    for (name, value) in rows {
        println!("  {name:<32} {value}");
    }
    let h = &r.density_histogram;
    let w = (h.log10_max - h.log10_min) / h.counts.len() as f64;
    println!("  feature density, log10(freq + 1e-10):");
    for (i, c) in h.counts.iter().enumerate() {
        if *c > 0 {
            let lo = h.log10_min + i as f64 * w;
            println!("    [{lo:>5.1}, {:>5.1})  {c}", lo + w);
        }
    }
}
