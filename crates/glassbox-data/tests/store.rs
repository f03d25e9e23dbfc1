//! The activation store on tiny-gpt2: determinism with and without the cache,
//! resuming with skip_to, one pass serves every row once, corrupt shards, aligned
//! hooks, the memory bound.

use glassbox_data::{harvest_hooks, ActivationStore, DataError, HarvestOptions, StoreOptions};
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, Batch, HookFilter, LogitsMode, Model, Run};
use std::path::Path;

const SPECIAL: u32 = 3;
const CTX: usize = 9;

fn tiny() -> Model {
    load_model(&tiny_dir("gpt2")).unwrap()
}

/// 14 windows of 9 tokens; `SPECIAL` sits at position 0 and at some later positions.
fn windows() -> Vec<Vec<u32>> {
    let mut x = 99u64;
    (0..14)
        .map(|w| {
            (0..CTX)
                .map(|p| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if p == 0 || (3 * w + p) % 7 == 0 {
                        SPECIAL
                    } else {
                        10 + (x >> 33) as u32 % 480
                    }
                })
                .collect()
        })
        .collect()
}

/// Chunks of 4 windows (32 tokens / 8 rows a window), forward batches of 2.
fn opts(hooks: &[&str], cache: Option<&Path>) -> StoreOptions {
    StoreOptions {
        hooks: hooks.iter().map(|s| s.to_string()).collect(),
        batch_windows: 2,
        buffer_tokens: 32,
        seed: 7,
        cache_dir: cache.map(Path::to_path_buf),
        rows: glassbox_model::RowRule::new([SPECIAL]),
        require_cached: false,
    }
}

/// Reads the store to the end in batches of `n`; rows per hook, concatenated.
fn drain(store: &mut ActivationStore, n: usize) -> Vec<Vec<f32>> {
    let k = store.hooks().len();
    let mut all = vec![Vec::new(); k];
    let mut out = vec![Vec::new(); k];
    loop {
        let got = store.next_batch(n, &mut out).unwrap();
        for h in 0..k {
            assert_eq!(out[h].len(), got * store.widths()[h]);
            all[h].extend_from_slice(&out[h]);
        }
        if got < n {
            assert_eq!(store.next_batch(n, &mut out).unwrap(), 0);
            return all;
        }
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

const HOOK: &str = "blocks.0.hook_resid_post";

#[test]
fn cached_and_uncached_runs_serve_bitwise_identical_rows() {
    let m = tiny();
    let mut plain = ActivationStore::new(&m, windows(), opts(&[HOOK], None)).unwrap();
    assert_eq!(plain.n_chunks(), 4);
    let want = drain(&mut plain, 7);
    assert_eq!(plain.rows_served(), plain.total_rows());
    assert_eq!(plain.chunk_counts(), (4, 0));

    let dir = tempfile::tempdir().unwrap();
    let mut first = ActivationStore::new(&m, windows(), opts(&[HOOK], Some(dir.path()))).unwrap();
    let mut windows_seen = 0;
    first.set_on_harvest(Box::new(|n| windows_seen += n));
    assert_eq!(bits(&drain(&mut first, 5)[0]), bits(&want[0]));
    assert_eq!(first.chunk_counts(), (4, 0));
    let folder = first.cache_folder().unwrap().to_path_buf();
    drop(first);
    assert_eq!(windows_seen, 14);
    assert!(folder.join("chunk-000003.safetensors").exists());
    assert!(folder.join("store.json").exists());
    assert_eq!(folder.parent().unwrap(), dir.path());

    let mut again = ActivationStore::new(&m, windows(), opts(&[HOOK], Some(dir.path()))).unwrap();
    assert_eq!(bits(&drain(&mut again, 64)[0]), bits(&want[0]));
    assert_eq!(
        again.chunk_counts(),
        (0, 4),
        "the second run reads the shards"
    );

    // another seed shuffles differently but serves the same multiset, from the same shards
    let mut o = opts(&[HOOK], Some(dir.path()));
    o.seed = 8;
    let mut reseeded = ActivationStore::new(&m, windows(), o).unwrap();
    let other = drain(&mut reseeded, 64);
    assert_eq!(reseeded.chunk_counts(), (0, 4));
    assert_ne!(bits(&other[0]), bits(&want[0]));
    assert_eq!(sorted_rows(&other[0], 64), sorted_rows(&want[0], 64));

    // different windows: a different key, nothing reused
    let mut ws = windows();
    ws[0][1] = 11;
    let changed = ActivationStore::new(&m, ws, opts(&[HOOK], Some(dir.path()))).unwrap();
    assert_ne!(changed.cache_key(), reseeded.cache_key());
}

fn sorted_rows(x: &[f32], width: usize) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = x.chunks(width).map(bits).collect();
    rows.sort();
    rows
}

#[test]
fn skip_to_resumes_exactly_where_an_uninterrupted_run_was() {
    let m = tiny();
    let mut full = ActivationStore::new(&m, windows(), opts(&[HOOK], None)).unwrap();
    let want = drain(&mut full, 5);
    let total = full.total_rows();
    let dir = tempfile::tempdir().unwrap();
    for cache in [None, Some(dir.path())] {
        for r in [0, 3, 17, 24, 40, total - 1, total] {
            let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], cache)).unwrap();
            s.skip_to(r).unwrap();
            assert_eq!(s.rows_served(), r);
            let (harvested, loaded) = s.chunk_counts();
            assert!(harvested + loaded <= 1, "skip_to loads one chunk at most");
            let rest = drain(&mut s, 6);
            assert_eq!(
                bits(&rest[0]),
                bits(&want[0][r as usize * 64..]),
                "skip to {r}"
            );
        }
    }
    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], None)).unwrap();
    let e = s.skip_to(total + 1).unwrap_err().to_string();
    assert!(e.contains("cannot skip"), "{e}");
}

#[test]
fn one_pass_serves_every_harvested_row_once() {
    let m = tiny();
    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], None)).unwrap();
    let served = drain(&mut s, 9);
    let h = harvest_hooks(
        &m,
        &windows(),
        &[HOOK.to_string()],
        &HarvestOptions {
            batch_windows: 2,
            rows: glassbox_model::RowRule::new([SPECIAL]),
        },
        |_| {},
    )
    .unwrap();
    let planted = windows()
        .iter()
        .flat_map(|w| &w[1..])
        .filter(|&&t| t == SPECIAL)
        .count();
    assert!(planted > 0);
    assert_eq!(h.n_rows, 14 * (CTX - 1) - planted);
    assert_eq!(s.total_rows(), h.n_rows as u64);
    assert_eq!(sorted_rows(&served[0], 64), sorted_rows(&h.rows[0], 64));
    // and shuffled: not in harvest order
    assert_ne!(bits(&served[0]), bits(&h.rows[0]));
}

#[test]
fn a_corrupt_shard_is_regenerated() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], Some(dir.path()))).unwrap();
    let want = drain(&mut s, 8);
    let folder = s.cache_folder().unwrap().to_path_buf();
    let one = folder.join("chunk-000001.safetensors");
    let two = folder.join("chunk-000002.safetensors");
    std::fs::write(&one, b"not a safetensors file").unwrap();
    let bytes = std::fs::read(&two).unwrap();
    std::fs::write(&two, &bytes[..bytes.len() / 2]).unwrap();
    // a temp file left by a writer that died
    std::fs::write(
        folder.join(".chunk-000000.safetensors.999999999.1.tmp"),
        b"x",
    )
    .unwrap();

    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], Some(dir.path()))).unwrap();
    assert!(!folder
        .join(".chunk-000000.safetensors.999999999.1.tmp")
        .exists());
    assert_eq!(bits(&drain(&mut s, 8)[0]), bits(&want[0]));
    assert_eq!(s.chunk_counts(), (2, 2));
    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], Some(dir.path()))).unwrap();
    assert_eq!(bits(&drain(&mut s, 8)[0]), bits(&want[0]));
    assert_eq!(s.chunk_counts(), (0, 4), "the regenerated shards are good");
}

#[test]
fn transcoder_hooks_stay_aligned_with_a_direct_run() {
    let m = tiny();
    let hooks = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"];
    let dir = tempfile::tempdir().unwrap();
    let mut s = ActivationStore::new(&m, windows(), opts(&hooks, Some(dir.path()))).unwrap();
    assert_eq!(s.widths(), [64, 64]);
    let served = drain(&mut s, 10);
    let mut cached = ActivationStore::new(&m, windows(), opts(&hooks, Some(dir.path()))).unwrap();
    let again = drain(&mut cached, 3);
    assert_eq!(bits(&again[0]), bits(&served[0]));
    assert_eq!(bits(&again[1]), bits(&served[1]));

    // one direct pass over all windows: (input, output) pairs at the kept positions
    let ws = windows();
    let mut run = Run::new()
        .cache(HookFilter::new(hooks.iter().map(|h| h.to_string()).collect(), m.config()).unwrap())
        .logits(LogitsMode::None);
    let out = m
        .transformer
        .run(&Batch::new(ws.clone()), &mut run)
        .unwrap();
    let get = |h: &str| {
        out.cache[h]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (get(hooks[0]), get(hooks[1]));
    let mut pairs = Vec::new();
    for (w, win) in ws.iter().enumerate() {
        for (p, &t) in win.iter().enumerate().skip(1) {
            if t != SPECIAL {
                let i = (w * CTX + p) * 64;
                pairs.push((&a[i..i + 64], &b[i..i + 64]));
            }
        }
    }
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    };
    let n = served[0].len() / 64;
    assert_eq!(n, pairs.len());
    for r in 0..n {
        let (x, y) = (&served[0][r * 64..][..64], &served[1][r * 64..][..64]);
        let (best, d) = pairs.iter().map(|(pa, _)| diff(pa, x)).enumerate().fold(
            (0, f32::MAX),
            |acc, (i, d)| if d < acc.1 { (i, d) } else { acc },
        );
        assert!(d < 1e-4, "row {r}: no direct input row matches ({d})");
        assert!(
            diff(pairs[best].1, y) < 1e-4,
            "row {r}: output row not aligned with its input"
        );
    }
}

#[test]
fn memory_bytes_states_the_bound() {
    let m = tiny();
    let s =
        ActivationStore::new(&m, windows(), opts(&["blocks.0.mlp.hook_post", HOOK], None)).unwrap();
    assert_eq!(s.widths(), [256, 64]);
    // the shuffle buffer alone: 4 windows × 8 rows × (256 + 64) floats
    let buffer = 4 * 8 * (256 + 64) * 4;
    let bytes = s.memory_bytes();
    assert!(bytes > buffer && bytes < 2 * 1024 * 1024, "{bytes}");
}

#[test]
fn bad_options_and_non_finite_rows_are_errors() {
    let m = tiny();
    let e = ActivationStore::new(&m, windows(), opts(&["blocks.0.hook_resid_pots"], None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("blocks.0.hook_resid_post"), "{e}");
    let mut ws = windows();
    ws[3].pop();
    let e = ActivationStore::new(&m, ws, opts(&[HOOK], None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("window 3 has 8 tokens"), "{e}");
    let mut ws = windows();
    ws[1][2] = 512;
    let e = ActivationStore::new(&m, ws, opts(&[HOOK], None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("past the model's vocabulary"), "{e}");
    let e = ActivationStore::new(&m, vec![], opts(&[HOOK], None))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no windows"), "{e}");
    let mut s = ActivationStore::new(&m, windows(), opts(&[HOOK], None)).unwrap();
    let e = s.next_batch(4, &mut []).unwrap_err().to_string();
    assert!(e.contains("0 output buffers for 1 hooks"), "{e}");

    // an infinite embedding for token 5, placed in chunk 2 (windows 8..12)
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_dir("gpt2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut t = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let mut v = t["transformer.wte.weight"].to_vec2::<f32>().unwrap();
    v[5][0] = f32::INFINITY;
    t.insert(
        "transformer.wte.weight".into(),
        candle_core::Tensor::new(v, &dev).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let broken = load_model(dir.path()).unwrap();
    let mut ws = windows();
    ws[9][4] = 5;
    let mut s = ActivationStore::new(&broken, ws, opts(&["hook_embed"], None)).unwrap();
    let mut out = vec![Vec::new()];
    let err = loop {
        match s.next_batch(8, &mut out) {
            Ok(0) => panic!("the infinite row was served"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, DataError::NonFinite { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`hook_embed`") && msg.contains("chunk 2"),
        "{msg}"
    );
}

/// With a massive-activation threshold, the store passes over the rows above it (read
/// at the residual hook of the hook's block, harvested alongside when not served),
/// serves exactly the others once, counts them, and resumes to the same rows.
#[test]
fn massive_rows_are_passed_over_and_resume_stays_exact() {
    let m = tiny();
    let served_hook = "blocks.1.ln2.hook_normalized";
    let resid = glassbox_model::MassiveNorm::hook_for(served_hook).unwrap();
    // every kept row's residual norm, to put the threshold at the median
    let mut plain_opts = HarvestOptions::for_model(&m);
    plain_opts.rows = glassbox_model::RowRule::new([SPECIAL]);
    let h = harvest_hooks(
        &m,
        &windows(),
        &[resid.clone(), served_hook.to_string()],
        &plain_opts,
        |_| {},
    )
    .unwrap();
    let width = h.widths[0];
    let norms: Vec<f32> = h.rows[0]
        .chunks_exact(width)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f32::total_cmp);
    // midway between two rows: no row sits on it, whatever the rounding of its norm
    let mid = sorted.len() / 2;
    let threshold = (sorted[mid] + sorted[mid + 1]) / 2.0;
    let massive = glassbox_model::MassiveNorm {
        hook: resid,
        threshold,
    };
    let n_massive = norms.iter().filter(|&&n| n > threshold).count();
    assert!(n_massive > 0 && n_massive < norms.len());

    let mut o = opts(&[served_hook], None);
    o.rows = o.rows.with_massive(Some(massive.clone()));
    let mut store = ActivationStore::new(&m, windows(), o.clone()).unwrap();
    assert_eq!(
        store.hooks(),
        &[served_hook.to_string()],
        "the residual hook is not served"
    );
    assert_eq!(
        store.total_rows() as usize,
        norms.len(),
        "slots: the token rule's rows"
    );
    let all = drain(&mut store, 5);
    let w = store.widths()[0];
    assert_eq!(all[0].len() / w, norms.len() - n_massive);
    assert_eq!(store.massive_passed_over() as usize, n_massive);
    // exactly the rows under the threshold, each once
    let want: std::collections::BTreeSet<Vec<u32>> = h.rows[1]
        .chunks_exact(w)
        .zip(&norms)
        .filter(|(_, &n)| n <= threshold)
        .map(|(r, _)| bits(r))
        .collect();
    let got: std::collections::BTreeSet<Vec<u32>> = all[0].chunks_exact(w).map(bits).collect();
    assert_eq!(got, want);
    // the same harvest through harvest_hooks leaves them out and counts them
    let mut mopts = plain_opts.clone();
    mopts.rows = mopts.rows.with_massive(Some(massive));
    let hm = harvest_hooks(&m, &windows(), &[served_hook.to_string()], &mopts, |_| {}).unwrap();
    assert_eq!(
        (hm.n_rows, hm.n_massive),
        (norms.len() - n_massive, n_massive)
    );

    // resume after 11 slots: the rest is what an uninterrupted store serves after them
    let mut first = ActivationStore::new(&m, windows(), o.clone()).unwrap();
    let mut out = vec![Vec::new()];
    first.next_batch(6, &mut out).unwrap();
    let mut head = out[0].clone();
    let at = first.rows_served();
    let mut resumed = ActivationStore::new(&m, windows(), o).unwrap();
    resumed.skip_to(at).unwrap();
    head.extend(drain(&mut resumed, 4).remove(0));
    assert_eq!(bits(&head), bits(&all[0]));
}
