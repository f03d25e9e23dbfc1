//! Shared argument handling: resolving `--model` and turning prompts into tokens.

use anyhow::{Context, Result};
use glassbox_model::{Model, TlProcessing};

/// `--process`: how weights are rewritten when a model is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Processing {
    /// as stored (TransformerLens' `from_pretrained_no_processing`)
    None,
    /// TransformerLens' default processing
    Tl,
}

static PROCESSING: std::sync::OnceLock<Processing> = std::sync::OnceLock::new();

pub fn set_processing(p: Processing) {
    let _ = PROCESSING.set(p);
}

/// The processing every opened model gets, as TransformerLens names its steps.
pub fn processing() -> TlProcessing {
    match PROCESSING.get().copied().unwrap_or(Processing::None) {
        Processing::None => TlProcessing::none(),
        Processing::Tl => TlProcessing::default(),
    }
}

/// `--model` accepts a HF directory, a `.gguf` file, a HF repo id, or the default's name
/// ([`glassbox_hub::open_model`], processed as `--process` asks).
pub fn open_model(spec: &str) -> Result<Model> {
    let opts = glassbox_hub::OpenOptions {
        processing: processing(),
        ..Default::default()
    };
    Ok(glassbox_hub::open_model(spec, &opts)?)
}

/// Warns when a dictionary was trained on a model processed differently from how this
/// one was opened (SAELens records it in `cfg.json`'s `model_from_pretrained_kwargs`).
pub fn warn_on_processing_mismatch(dict_dir: &std::path::Path, model: &Model) {
    let Ok(text) = std::fs::read_to_string(dict_dir.join("cfg.json")) else {
        return;
    };
    let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let Some(kwargs) = cfg
        .get("model_from_pretrained_kwargs")
        .filter(|k| k.is_object())
    else {
        return;
    };
    // SAELens' default is HookedTransformer.from_pretrained's: all four steps on.
    let trained = TlProcessing::from_kwargs(kwargs);
    let opened = processing();
    if !trained.same_effect(&opened, model.config()) {
        eprintln!(
            "warning: {} was trained on a model opened with {} but this model is opened with {} ({}); its features may not read what they were trained on",
            dict_dir.display(),
            trained.describe(),
            opened.describe(),
            if opened == TlProcessing::none() {
                "add --process tl"
            } else {
                "drop --process tl"
            }
        );
    }
}

/// `--sae` accepts a dictionary folder (SAELens or sparsify) or `hf:ORG/REPO[/SUB/FOLDER]`
/// (fetched into the HF cache by `glassbox_hub::resolve_dictionary`). Returns the
/// dictionary and the local folder it was read from.
pub fn open_dictionary(
    spec: &std::path::Path,
) -> Result<(glassbox_sae::Dictionary, std::path::PathBuf)> {
    let dir = glassbox_hub::resolve_dictionary(spec)?;
    let dict = glassbox_sae::format::load(&dir).with_context(|| {
        if dir == spec {
            format!("cannot open dictionary {}", spec.display())
        } else {
            format!(
                "cannot open dictionary {} (fetched to {})",
                spec.display(),
                dir.display()
            )
        }
    })?;
    Ok((dict, dir))
}

/// A whole prompt's ids, by the one rule every command, the server and the library
/// share (`TextTokenizer::encode_prompt`, HF's `tokenizer(text)`): BOS first when the
/// model's tokenizer asks for it (Gemma, Llama 3), the text alone otherwise (SmolLM2).
/// Says on stderr how many tokens the prompt is and whether it starts with BOS.
pub fn encode(model: &Model, text: &str) -> Result<Vec<u32>> {
    let ids = encode_quiet(model, text)?;
    eprintln!(
        "prompt {}: {}",
        short_quote(text),
        model.tokenizer()?.prompt_summary(&ids)
    );
    Ok(ids)
}

/// [`encode`] without the echo, for commands that run many prompts and summarise them.
pub fn encode_quiet(model: &Model, text: &str) -> Result<Vec<u32>> {
    let ids = model.tokenizer()?.encode_prompt(text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty: nothing to run");
    Ok(ids)
}

/// The prompt as echoed: quoted, cut after 40 characters.
fn short_quote(text: &str) -> String {
    let mut cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Writes a file atomically ([`glassbox_atomic::write_with`]) with an `anyhow` writer.
pub fn atomic_write(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    glassbox_atomic::write_with(path, write)
}

/// Runs `work` under a spinner on stderr (hidden when stderr is not a terminal).
pub fn with_spinner<T>(message: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let started = std::time::Instant::now();
    let out = work();
    bar.finish_and_clear();
    if out.is_ok() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "{message}: done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    out
}

/// A progress bar over `len` steps on stderr.
pub fn progress(len: usize, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64).with_message(message.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // no terminal to draw on (CI, `2> log`): a plain line every
        // GLASSBOX_PROGRESS_EVERY seconds (30) instead, when the bar moved (a bar waiting
        // on another stage repeats nothing stale); a weak handle, so the thread ends when
        // the bar is finished or dropped
        let every = std::env::var("GLASSBOX_PROGRESS_EVERY")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(30.0);
        let weak = bar.downgrade();
        let mut last = None;
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs_f64(every));
            let Some(watched) = weak.upgrade().filter(|b| !b.is_finished()) else {
                break;
            };
            if last == Some(watched.position()) {
                continue;
            }
            last = Some(watched.position());
            eprintln!("{}", log_line(&watched));
        });
    }
    bar
}

/// A bar's state as one log line: "harvesting … 120/146 (3.1/s, 39 s, eta 8 s)".
fn log_line(bar: &indicatif::ProgressBar) -> String {
    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
    let elapsed = bar.elapsed().as_secs_f64();
    let rate = pos as f64 / elapsed.max(1e-9);
    let eta = if rate > 0.0 && len >= pos {
        format!("eta {:.0} s", (len - pos) as f64 / rate)
    } else {
        "eta unknown".into()
    };
    format!(
        "{} {pos}/{len} ({rate:.1}/s, {elapsed:.0} s, {eta})",
        bar.message()
    )
}

/// Draws a library job's progress ([`glassbox_train::Progress`]) as stacked bars on
/// stderr, one per stage, and its notes as plain lines; the training bar carries the
/// latest step's throughput and losses.
pub struct Bars {
    bars: indicatif::MultiProgress,
    live: std::sync::Mutex<Vec<(glassbox_train::Stage, indicatif::ProgressBar)>>,
    arch: String,
}

impl Bars {
    pub fn new(arch: &str) -> Self {
        Bars {
            bars: indicatif::MultiProgress::new(),
            live: std::sync::Mutex::new(Vec::new()),
            arch: arch.to_string(),
        }
    }

    fn with_bar(&self, stage: glassbox_train::Stage, f: impl FnOnce(&indicatif::ProgressBar)) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bar)) = live.iter().find(|(s, _)| *s == stage) {
            f(bar);
        }
    }
}

impl glassbox_train::Progress for Bars {
    fn begin(&self, stage: glassbox_train::Stage, label: &str, total: u64, done: u64) {
        let bar = self.bars.add(progress(total as usize, label));
        bar.set_position(done);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(s, _)| *s != stage);
        live.push((stage, bar));
    }

    fn advance(&self, stage: glassbox_train::Stage, n: u64) {
        self.with_bar(stage, |b| b.inc(n));
    }

    fn step(&self, l: &glassbox_train::MetricsLine) {
        self.with_bar(glassbox_train::Stage::Train, |b| {
            b.set_message(format!(
                "{}: {:.0} tok/s, L0 {:.1}, FVU {:.3}, dead {:.1} %",
                self.arch,
                l.tokens_per_s,
                l.l0,
                l.fvu,
                l.dead_fraction * 100.0
            ))
        });
    }

    fn status(&self, stage: glassbox_train::Stage, text: &str) {
        self.with_bar(stage, |b| b.set_message(text.to_string()));
    }

    fn note(&self, text: &str) {
        let _ = self.bars.println(text);
        if self.bars.is_hidden() {
            eprintln!("{text}");
        }
    }

    fn end(&self, stage: glassbox_train::Stage) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = live.iter().position(|(s, _)| *s == stage) {
            live.remove(i).1.finish_and_clear();
        }
    }
}

/// A bar that appears on the first report of a job that learns its length only once it
/// has started (`on_batch(done, total)` callbacks).
pub struct LateBar {
    label: &'static str,
    bar: std::cell::RefCell<Option<indicatif::ProgressBar>>,
}

impl LateBar {
    pub fn new(label: &'static str) -> Self {
        LateBar {
            label,
            bar: std::cell::RefCell::new(None),
        }
    }

    pub fn advance(&self, n: usize, total: usize) {
        self.bar
            .borrow_mut()
            .get_or_insert_with(|| progress(total, self.label))
            .inc(n as u64);
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.borrow().as_ref() {
            b.finish_and_clear();
        }
    }
}

/// A training run's error in the command line's words (the library speaks of options).
pub fn in_flag_words(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<glassbox_train::RunError>() {
        Some(glassbox_train::RunError::AlreadyTrained(dir)) => anyhow::anyhow!(
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            dir.display()
        ),
        _ => e,
    }
}
