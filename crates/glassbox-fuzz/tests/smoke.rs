//! The CI smoke of every fuzz target: its seeds (each must be accepted, so the target
//! really reaches the parser), its regression inputs (every crash the fuzzer found), and
//! deterministic mutations of both. No input may panic, take longer than
//! `SLOW_SECS`, or make one allocation over `limit_for(input)`.
//!
//! A failing input is written to `target/fuzz-smoke-failures/<target>/` and can be
//! replayed with the harness (`scripts/fuzz --replay FILE`) or dropped into
//! `regressions/<target>/` once fixed.

use glassbox_fuzz::alloc::{self, CountingAlloc};
use glassbox_fuzz::mutate::{mutate, Rng};
use glassbox_fuzz::{regressions, seeds::seeds, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Mutations per target (`GLASSBOX_FUZZ_SMOKE_MUTATIONS` overrides).
const MUTATIONS: usize = 3000;
/// Beyond this an input counts as a hang, even in a debug build.
const SLOW_SECS: u64 = 5;
/// An allocation this large aborts at once (with the target and input named) rather
/// than waiting for the check after the input: the machine might not survive it.
const ABORT_ABOVE: usize = 1 << 30;

struct Failure {
    target: &'static str,
    what: String,
    input: Vec<u8>,
}

fn run_one(
    name: &'static str,
    run: fn(&[u8]) -> bool,
    input: &[u8],
    index: usize,
) -> Result<bool, String> {
    alloc::arm(ABORT_ABOVE, name, index);
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| run(input)));
    let elapsed = t.elapsed();
    let largest = alloc::disarm();
    let limit = alloc::limit_for(input.len());
    match r {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
        Ok(_) if largest > limit => Err(format!(
            "one allocation of {largest} bytes for a {}-byte input (limit {limit})",
            input.len()
        )),
        Ok(_) if elapsed > Duration::from_secs(SLOW_SECS) => {
            Err(format!("took {elapsed:.1?} (a hang?)"))
        }
        Ok(accepted) => Ok(accepted),
    }
}

/// One test, not several: the allocator's measurement is process-wide, and tests run
/// in parallel threads.
#[test]
fn every_target_survives_its_seeds_regressions_and_mutations() {
    // the check itself works: an allocation over the bound is seen
    assert!(alloc::installed());
    alloc::arm(usize::MAX, "self-check", 0);
    let v = std::hint::black_box(vec![1u8; 3 << 20]);
    let largest = alloc::disarm();
    drop(v);
    assert!(
        largest >= 3 << 20 && largest > alloc::limit_for(1000),
        "measured {largest}"
    );
    let mutations: usize = std::env::var("GLASSBOX_FUZZ_SMOKE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS);
    // candle captures a backtrace into every error when this is set, and formatting
    // one is an allocation of megabytes: not what the bound is about.
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");
    let start = Instant::now();
    let mut failures: Vec<Failure> = Vec::new();
    for t in TARGETS {
        let t0 = Instant::now();
        let seeds = seeds(t.name);
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        let mut pool: Vec<Vec<u8>> = Vec::new();
        for (i, s) in seeds.iter().enumerate() {
            match run_one(t.name, t.run, s, i) {
                Ok(true) => {}
                Ok(false) => failures.push(Failure {
                    target: t.name,
                    what: format!("seed {i} was refused: the target does not reach its parser"),
                    input: s.clone(),
                }),
                Err(what) => failures.push(Failure {
                    target: t.name,
                    what: format!("seed {i}: {what}"),
                    input: s.clone(),
                }),
            }
            pool.push(s.clone());
        }
        let regs = regressions(t.name);
        for (i, (file, r)) in regs.iter().enumerate() {
            if let Err(what) = run_one(t.name, t.run, r, 10_000 + i) {
                failures.push(Failure {
                    target: t.name,
                    what: format!("regression {file}: {what}"),
                    input: r.clone(),
                });
            }
            pool.push(r.clone());
        }
        let mut rng = Rng::new(0x5EED ^ t.name.len() as u64);
        let mut accepted = 0;
        for i in 0..mutations {
            let base = &pool[rng.below(pool.len())];
            let other = &pool[rng.below(pool.len())];
            let max_len = (base.len() * 2).max(4096);
            let input = mutate(base, other, &mut rng, max_len);
            match run_one(t.name, t.run, &input, 100_000 + i) {
                Ok(a) => accepted += usize::from(a),
                Err(what) => failures.push(Failure {
                    target: t.name,
                    what: format!("mutation {i}: {what}"),
                    input,
                }),
            }
        }
        eprintln!(
            "{:<20} {} seeds, {} regressions, {mutations} mutations ({accepted} accepted) in {:.2?}",
            t.name,
            seeds.len(),
            regs.len(),
            t0.elapsed()
        );
    }
    eprintln!(
        "fuzz smoke: {} targets in {:.2?}",
        TARGETS.len(),
        start.elapsed()
    );
    if !failures.is_empty() {
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/fuzz-smoke-failures");
        let mut report = String::new();
        for (n, f) in failures.iter().enumerate() {
            let dir = out.join(f.target);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("failure-{n}"));
            let _ = std::fs::write(&file, &f.input);
            report.push_str(&format!("{}: {} ({})\n", f.target, f.what, file.display()));
        }
        panic!("{} fuzz smoke failures:\n{report}", failures.len());
    }
}
