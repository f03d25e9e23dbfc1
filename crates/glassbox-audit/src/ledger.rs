//! The run's ledger, `stages.jsonl`: one line per stage that produced the run (training,
//! the feature store, explaining…) with its command line, wall time, CPU time, peak
//! memory, tokens and FLOPs — what the audit's cost and provenance sections read.
//! Commands append to it when a stage ends; a line is written whole or not at all.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The ledger's file name inside a run directory.
pub const LEDGER_FILE: &str = "stages.jsonl";

/// One finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// e.g. `train`, `features`, `explain`
    pub stage: String,
    /// the command line that ran it
    pub command: Vec<String>,
    /// when it started, unix seconds
    pub started: i64,
    /// wall time
    pub wall_s: f64,
    /// CPU time (user + system) of the process during the stage
    pub cpu_s: f64,
    /// the process's peak resident memory at the end of the stage
    pub peak_rss_bytes: u64,
    /// tokens the stage processed (model forward or dictionary training)
    pub tokens: u64,
    /// floating-point operations, counted from the shapes ([`crate::cost`])
    pub flops: f64,
    /// glassbox's version and commit
    pub glassbox: String,
}

/// CPU seconds and peak RSS of this process so far.
fn usage() -> (f64, u64) {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return (0.0, 0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    // ru_maxrss is in kilobytes on Linux
    (
        secs(u.ru_utime) + secs(u.ru_stime),
        u.ru_maxrss as u64 * 1024,
    )
}

/// Measures one stage from its start.
pub struct Meter {
    stage: String,
    started: i64,
    clock: Instant,
    cpu0: f64,
}

impl Meter {
    /// Starts measuring `stage`.
    pub fn start(stage: &str) -> Self {
        Meter {
            stage: stage.into(),
            started: unix_now(),
            clock: Instant::now(),
            cpu0: usage().0,
        }
    }

    /// The stage's record, ended now.
    pub fn finish(self, tokens: u64, flops: f64) -> StageRecord {
        let (cpu, rss) = usage();
        StageRecord {
            stage: self.stage,
            command: std::env::args().collect(),
            started: self.started,
            wall_s: self.clock.elapsed().as_secs_f64(),
            cpu_s: (cpu - self.cpu0).max(0.0),
            peak_rss_bytes: rss,
            tokens,
            flops,
            glassbox: crate::version(),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Appends `rec` to `dir/stages.jsonl` as one line (one `write` of a whole line, so a
/// crash leaves earlier lines whole).
pub fn append(dir: &Path, rec: &StageRecord) -> Result<()> {
    let path = dir.join(LEDGER_FILE);
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The ledger's records, and the lines that could not be read (a torn last line after a
/// crash, a hand edit), by line number.
pub fn read(dir: &Path) -> Result<(Vec<StageRecord>, Vec<usize>)> {
    let path = dir.join(LEDGER_FILE);
    if !path.is_file() {
        return Ok((Vec::new(), Vec::new()));
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (mut recs, mut bad) = (Vec::new(), Vec::new());
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(l) {
            Ok(r) => recs.push(r),
            Err(_) => bad.push(i + 1),
        }
    }
    Ok((recs, bad))
}
