//! Training on two ranks, each a thread, summing through an in-memory collective.
//! Data-parallel ([`Trainer::step_with`], each rank on half of every batch) and
//! latent-sharded ([`Trainer::new_latent_shard`], each rank with half the latents, on
//! the whole batches) both train the dictionary one trainer does on the whole batches
//! (up to f32 summation order), with the same losses, gradient norms and dead-latent
//! counters. The MPI collective itself is tested under `mpirun`
//! (crates/glassbox/tests/distributed_cli.rs).

use glassbox_sae::train::{Collective, Params, StepReport, TrainArch, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Barrier, Mutex};

/// Ranks as threads: every sum meets at a barrier, adds into a shared buffer, and every
/// rank reads the same total.
struct Threads {
    rank: usize,
    size: usize,
    barrier: Arc<Barrier>,
    f32_sum: Arc<Mutex<Vec<f32>>>,
    u64_sum: Arc<Mutex<Vec<u64>>>,
}

impl Threads {
    fn job(size: usize) -> Vec<Threads> {
        let barrier = Arc::new(Barrier::new(size));
        let (f, u) = (Arc::default(), Arc::default());
        (0..size)
            .map(|rank| Threads {
                rank,
                size,
                barrier: barrier.clone(),
                f32_sum: Arc::clone(&f),
                u64_sum: Arc::clone(&u),
            })
            .collect()
    }

    fn sum<T: Copy + Default + std::ops::AddAssign>(&self, acc: &Mutex<Vec<T>>, buf: &mut [T]) {
        if self.rank == 0 {
            *acc.lock().unwrap() = vec![T::default(); buf.len()];
        }
        self.barrier.wait();
        {
            let mut a = acc.lock().unwrap();
            a.iter_mut().zip(buf.iter()).for_each(|(s, v)| *s += *v);
        }
        self.barrier.wait();
        buf.copy_from_slice(&acc.lock().unwrap());
        self.barrier.wait();
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        self.sum(&self.f32_sum, buf)
    }
    fn sum_u64(&self, buf: &mut [u64]) {
        self.sum(&self.u64_sum, buf)
    }
}

const STEPS: usize = 40;

fn config(arch: TrainArch, batch: usize) -> TrainConfig {
    TrainConfig {
        arch,
        d_in: 16,
        d_sae: 48,
        k: 3,
        batch,
        seed: 7,
        lr: 3e-3,
        lr_warmup_steps: 5,
        sparsity_coefficient: 0.05,
        // small enough that latents die within the run, so AuxK's path is summed too
        dead_window_tokens: 64,
        resample_every_steps: 0,
        ..TrainConfig::default()
    }
}

/// Rows with a few active directions each (enough structure for latents to specialise).
fn data(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dirs: Vec<Vec<f32>> = (0..12)
        .map(|_| (0..d).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect();
    let mut x = vec![0.0; rows * d];
    for row in x.chunks_mut(d) {
        for _ in 0..2 {
            let dir = &dirs[rng.gen_range(0..dirs.len())];
            let a = rng.gen_range(0.5f32..2.0);
            row.iter_mut().zip(dir).for_each(|(v, u)| *v += a * u);
        }
    }
    x
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(arch: TrainArch) {
    let (global, d) = (16, 16);
    let x = data(global * STEPS, d, 3);
    let mut single = Trainer::new(config(arch, global), STEPS).unwrap();
    single.prepare(&x[..global * 4 * d], None);
    let mut single_reports = Vec::new();
    for s in 0..STEPS {
        single_reports.push(
            single
                .step(&x[s * global * d..][..global * d], None)
                .unwrap(),
        );
    }
    let ranks = 2;
    let per_rank = global / ranks;
    let results: Vec<(Trainer, Vec<StepReport>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = Threads::job(ranks)
            .into_iter()
            .map(|comm| {
                let x = &x;
                scope.spawn(move || {
                    let mut t = Trainer::new(config(arch, per_rank), STEPS).unwrap();
                    t.prepare(&x[..global * 4 * d], None);
                    let mut reports = Vec::new();
                    for s in 0..STEPS {
                        let mine = &x[(s * global + comm.rank() * per_rank) * d..][..per_rank * d];
                        reports.push(t.step_with(mine, None, &comm).unwrap());
                    }
                    (t, reports)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Adam is blind to the gradients' scale; the reported loss and norm are not
    for (s, (one, two)) in single_reports.iter().zip(&results[0].1).enumerate() {
        for (what, a, b) in [
            ("loss", one.losses.total, two.losses.total),
            ("gradient norm", one.grad_norm, two.grad_norm),
            ("L0", one.losses.l0, two.losses.l0),
        ] {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{arch:?} step {s}: {what} {a} on one rank, {b} on two"
            );
        }
    }
    let results: Vec<Trainer> = results.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        results[0].params, results[1].params,
        "{arch:?}: the two ranks' parameters differ"
    );
    assert_eq!(results[0].since_fired, results[1].since_fired);
    let (a, b) = (&single.params, &results[0].params);
    for (name, x, y) in [
        ("W_enc", &a.w_enc_t, &b.w_enc_t),
        ("W_dec", &a.w_dec, &b.w_dec),
        ("b_enc", &a.b_enc, &b.b_enc),
        ("b_dec", &a.b_dec, &b.b_dec),
        ("log_threshold", &a.log_threshold, &b.log_threshold),
    ] {
        let diff = max_abs_diff(x, y);
        assert!(
            diff < 1e-4,
            "{arch:?} {name}: two ranks on halves differ from one on the whole batch by {diff}"
        );
    }
    assert!(
        max_abs_diff(
            &single.params.w_dec,
            &Trainer::new(config(arch, global), STEPS)
                .unwrap()
                .params
                .w_dec
        ) > 1e-2,
        "{arch:?}: training moved nothing, so the comparison proves nothing"
    );
    assert_eq!(
        single.since_fired, results[0].since_fired,
        "{arch:?}: dead-latent counters differ (global tokens per step)"
    );
    assert!(
        !arch.uses_k() || single.since_fired.iter().any(|&s| s >= 64),
        "{arch:?}: no latent went dead, so AuxK's sum was not exercised"
    );
}

#[test]
fn topk_on_two_ranks_equals_one_rank_on_the_whole_batch() {
    check(TrainArch::TopK);
}

#[test]
fn standard_and_jumprelu_on_two_ranks_equal_one_rank() {
    check(TrainArch::Standard);
    check(TrainArch::JumpReLU);
}

/// Two ranks, each with half the latents, on the same whole batches; `y`: a transcoder's
/// targets.
fn check_latent_sharded(transcoder: bool) {
    let (batch, d) = (16, 16);
    let x = data(batch * STEPS, d, 5);
    let y: Option<Vec<f32>> = transcoder.then(|| data(batch * STEPS, d, 6));
    let cfg = TrainConfig {
        d_out: transcoder.then_some(d),
        ..config(TrainArch::TopK, batch)
    };
    let rows = |v: &[f32], s: usize| v[s * batch * d..][..batch * d].to_vec();
    let mut single = Trainer::new(cfg.clone(), STEPS).unwrap();
    single.prepare(&x[..batch * 4 * d], y.as_ref().map(|y| &y[..batch * 4 * d]));
    let single_reports: Vec<StepReport> = (0..STEPS)
        .map(|s| {
            let ys = y.as_ref().map(|y| rows(y, s));
            single.step(&rows(&x, s), ys.as_deref()).unwrap()
        })
        .collect();
    let results: Vec<(Params, Vec<u64>, Vec<StepReport>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = Threads::job(2)
            .into_iter()
            .map(|comm| {
                let (x, y, cfg) = (&x, &y, cfg.clone());
                scope.spawn(move || {
                    let mut t = Trainer::new_latent_shard(cfg, STEPS, comm.rank(), 2).unwrap();
                    assert_eq!(
                        t.params.w_dec.len(),
                        24 * d,
                        "a rank holds half the decoder"
                    );
                    t.prepare(&x[..batch * 4 * d], y.as_ref().map(|y| &y[..batch * 4 * d]));
                    let reports = (0..STEPS)
                        .map(|s| {
                            let ys = y.as_ref().map(|y| rows(y, s));
                            t.step_with(&rows(x, s), ys.as_deref(), &comm).unwrap()
                        })
                        .collect();
                    let whole = t.gather_latent_shards(&comm).unwrap();
                    (whole.params, whole.since_fired, reports)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (s, (one, two)) in single_reports.iter().zip(&results[0].2).enumerate() {
        for (what, a, b) in [
            ("loss", one.losses.total, two.losses.total),
            ("AuxK loss", one.losses.aux, two.losses.aux),
            ("gradient norm", one.grad_norm, two.grad_norm),
            ("L0", one.losses.l0, two.losses.l0),
            ("dead fraction", one.dead_fraction, two.dead_fraction),
        ] {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "transcoder {transcoder}, step {s}: {what} {a} on one rank, {b} with the latents on two"
            );
        }
    }
    assert!(
        single_reports.iter().any(|r| r.losses.aux > 0.0),
        "AuxK never ran, so its sharded path was not exercised"
    );
    assert_eq!(
        results[0].0, results[1].0,
        "the gathered dictionaries differ by rank"
    );
    let (a, b) = (&single.params, &results[0].0);
    for (name, x, y) in [
        ("W_enc", &a.w_enc_t, &b.w_enc_t),
        ("W_dec", &a.w_dec, &b.w_dec),
        ("b_enc", &a.b_enc, &b.b_enc),
        ("b_dec", &a.b_dec, &b.b_dec),
    ] {
        let diff = max_abs_diff(x, y);
        assert!(
            diff < 1e-4,
            "transcoder {transcoder} {name}: latents on two ranks differ from one trainer by {diff}"
        );
    }
    assert_eq!(single.since_fired, results[0].1);
}

#[test]
fn topk_with_its_latents_on_two_ranks_equals_one_trainer() {
    check_latent_sharded(false);
    check_latent_sharded(true);
}

#[test]
fn latent_shards_must_split_evenly_and_be_topk() {
    let err = |cfg: TrainConfig| {
        Trainer::new_latent_shard(cfg, 10, 0, 5)
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(config(TrainArch::TopK, 16));
    assert!(e.contains("d_sae (48) into 5 equal shares"), "{e}");
    let e = err(TrainConfig {
        d_sae: 50,
        ..config(TrainArch::BatchTopK, 16)
    });
    assert!(e.contains("latent sharding trains TopK"), "{e}");
}
