//! How a long job reports what it is doing. The library never draws: the CLI turns these
//! calls into indicatif bars, the Python package into tqdm bars, tests into counters.

/// The stages of a training run that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// running the model over corpus windows to collect activations (units: windows)
    Harvest,
    /// optimisation steps (units: steps)
    Train,
    /// the held-out evaluation (units: windows)
    Evaluate,
    /// collecting activations for `export_acts` (units: rows)
    Export,
}

/// A training step's numbers, as `metrics.jsonl` records them.
pub use crate::run_dir::MetricsLine;

/// Receives a job's progress. Every method has a default that does nothing, so an
/// observer implements only what it shows. Calls come from the thread running the job.
pub trait Progress: Sync {
    /// `stage` begins: `total` units, of which `done` are already done (a resumed run).
    fn begin(&self, _stage: Stage, _label: &str, _total: u64, _done: u64) {}
    /// `n` more units of `stage` are done.
    fn advance(&self, _stage: Stage, _n: u64) {}
    /// A training step's numbers (every [`crate::LOG_EVERY_STEPS`] steps and the last).
    fn step(&self, _line: &MetricsLine) {}
    /// A short line on how `stage` is going (a bar's message).
    fn status(&self, _stage: Stage, _text: &str) {}
    /// One line worth telling a person: the corpus read, the store's size, a resume.
    fn note(&self, _text: &str) {}
    /// `stage` is over (finished, or abandoned by an error).
    fn end(&self, _stage: Stage) {}
    /// Polled between steps: `true` stops the run after saving a checkpoint
    /// (the Python package answers a pending Ctrl-C here).
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that shows nothing.
pub struct Silent;

impl Progress for Silent {}
