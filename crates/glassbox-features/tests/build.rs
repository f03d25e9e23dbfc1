//! The feature store on the tiny llama fixture with a random dictionary built here:
//! every streamed statistic against a brute-force pass over all activations, the
//! weight-only effects against direct loops, the SQLite file against schema.sql, and
//! the failure paths (atomic writes, clear errors).

use candle_core::{DType, Device, Tensor};
use glassbox_features::accumulate::{band_of, BatchActs, GroupOptions, UnitGroup, NO_ROW};
use glassbox_features::store::{FeatureStore, Order};
use glassbox_features::{
    build, hist_bin, BuildInput, BuildOptions, BuildReport, Example, UnitKind, SCHEMA,
};
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, Batch, HookFilter, Model, Run};
use glassbox_sae::{Architecture, Dictionary};
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 64; // tiny-llama's d_model
const D_MLP: usize = 176;
const D_SAE: usize = 48;
const HOOK: &str = "blocks.1.hook_resid_pre";
const NEURONS: &str = "blocks.1.mlp.hook_post";
const BATCH: usize = 5;
const EXCLUDE: [u32; 2] = [1, 2]; // BOS, EOS

fn tiny() -> Model {
    load_model(&tiny_dir("llama")).unwrap()
}

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.next()).sum::<f32>() - 6.0
    }
}

/// `n` windows of `len` tokens from a small vocabulary (so tokens recur), each starting
/// with BOS (1), with an EOS (2) inside some of them.
fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut r = Lcg(11);
    (0..n)
        .map(|i| {
            let mut w: Vec<u32> = std::iter::once(1)
                .chain((1..len).map(|_| 3 + (r.next() * 40.0) as u32))
                .collect();
            if i % 3 == 0 {
                w[len / 2] = 2;
            }
            w
        })
        .collect()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A random standard (ReLU) dictionary reading width `d_in`, biased to be sparse.
fn dictionary(d_in: usize) -> Dictionary {
    let mut r = Lcg(5);
    let enc: Vec<f32> = (0..d_in * D_SAE).map(|_| r.normal() * 0.3).collect();
    let b_enc: Vec<f32> = (0..D_SAE).map(|i| -0.2 - 0.05 * (i % 5) as f32).collect();
    let dec: Vec<f32> = (0..D_SAE * d_in).map(|_| r.normal()).collect();
    Dictionary {
        architecture: Architecture::Standard,
        d_in,
        d_sae: D_SAE,
        d_out: d_in,
        k: None,
        apply_b_dec_to_input: true,
        w_enc: tensor(enc, &[d_in, D_SAE]),
        b_enc: Some(tensor(b_enc, &[D_SAE])),
        w_dec: tensor(dec, &[D_SAE, d_in]),
        b_dec: tensor(vec![0.01; d_in], &[d_in]),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: Some(HOOK.into()),
        hook_name_out: None,
        model_name: None,
        extra_cfg: serde_json::Map::new(),
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        top_k: 5,
        context_radius: 3,
        batch_windows: BATCH,
        bands: 4,
        per_band: 2,
        seed: 3,
        rows: glassbox_model::RowRule::new(EXCLUDE.iter().copied()),
        neurons: true,
        logit_effects: 10,
        neighbours: 10,
    }
}

fn token_text(t: u32) -> String {
    format!(" t{t}")
}

fn run_build(m: &Model, d: &Dictionary, w: &[Vec<u32>], out: &Path) -> BuildReport {
    let mut seen = 0;
    let r = build(
        &BuildInput {
            model: &m.transformer,
            dict: d,
            hook: HOOK,
            windows: w,
            token_text: &token_text,
            meta: vec![
                ("model".into(), "tiny-llama".into()),
                ("sae_dir".into(), "in-memory".into()),
            ],
        },
        &opts(),
        out,
        |n| seen += n,
    )
    .unwrap();
    assert_eq!(seen, w.len(), "progress reports every window");
    r
}

/// Every activation, brute force: per kept token (window, position, token) the feature
/// and neuron rows, from the same forward batches and encodings the build uses.
struct Brute {
    rows: Vec<(u32, u32, u32)>,
    feats: Vec<Vec<f32>>,
    neurons: Vec<Vec<f32>>,
    /// (window, position) → row
    at: BTreeMap<(u32, u32), usize>,
}

fn brute(m: &Model, d: &Dictionary, w: &[Vec<u32>]) -> Brute {
    let filter = HookFilter::new(vec![HOOK.into(), NEURONS.into()], m.config()).unwrap();
    let mut b = Brute {
        rows: Vec::new(),
        feats: Vec::new(),
        neurons: Vec::new(),
        at: BTreeMap::new(),
    };
    for (bi, batch) in w.chunks(BATCH).enumerate() {
        let out = m
            .transformer
            .run(
                &Batch::new(batch.to_vec()),
                &mut Run::new().cache(filter.clone()).stop_at_layer(2),
            )
            .unwrap();
        let x = out.cache[HOOK]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let n = out.cache[NEURONS].to_vec3::<f32>().unwrap();
        let mut xs = Vec::new();
        for (wi, win) in batch.iter().enumerate() {
            for (p, &t) in win.iter().enumerate().skip(1) {
                if EXCLUDE.contains(&t) {
                    continue;
                }
                let gw = (bi * BATCH + wi) as u32;
                b.at.insert((gw, p as u32), b.rows.len());
                b.rows.push((gw, p as u32, t));
                xs.extend_from_slice(&x[wi][p]);
                b.neurons.push(n[wi][p].clone());
            }
        }
        let rows = xs.len() / D;
        let f = d.encode(&tensor(xs, &[rows, D])).unwrap();
        b.feats.extend(f.to_vec2::<f32>().unwrap());
    }
    b
}

impl Brute {
    fn act(&self, kind: UnitKind, row: usize, unit: usize) -> f32 {
        match kind {
            UnitKind::Feature => self.feats[row][unit],
            UnitKind::Neuron => self.neurons[row][unit],
        }
    }

    /// The context the build must store for an example at (window, position).
    fn context(&self, kind: UnitKind, unit: usize, w: u32, p: u32, len: usize) -> (u32, Vec<f32>) {
        let start = p.saturating_sub(3);
        let end = (p + 4).min(len as u32);
        let acts = (start..end)
            .map(|q| match self.at.get(&(w, q)) {
                Some(&r) => self.act(kind, r, unit),
                None => 0.0,
            })
            .collect();
        (start, acts)
    }

    /// The exact top-k of a unit: (act, window, position, token), strongest first,
    /// ties to the earlier token.
    fn top(&self, kind: UnitKind, unit: usize, k: usize) -> Vec<(f32, u32, u32, u32)> {
        let mut all: Vec<(f32, u32, u32, u32)> = (0..self.rows.len())
            .map(|r| {
                (
                    self.act(kind, r, unit),
                    self.rows[r].0,
                    self.rows[r].1,
                    self.rows[r].2,
                )
            })
            .filter(|e| e.0 > 0.0)
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        all.truncate(k);
        all
    }
}

#[test]
fn streamed_statistics_equal_brute_force() {
    let m = tiny();
    let d = dictionary(D);
    let w = windows(12, 24);
    let dir = tempfile::tempdir().unwrap();
    let r = run_build(&m, &d, &w, &dir.path().join("features.sqlite"));
    let b = brute(&m, &d, &w);
    let n_rows = b.rows.len();
    assert_eq!(r.tokens as usize, n_rows);
    // 12 windows · 23 positions, less the 4 EOS tokens
    assert_eq!(n_rows, 12 * 23 - 4);
    let neurons = r.analysis.neurons.as_ref().unwrap();
    let mut checked_examples = 0;
    let mut fired_units = 0;
    for (kind, group) in [
        (UnitKind::Feature, &r.analysis.features),
        (UnitKind::Neuron, neurons),
    ] {
        assert_eq!(group.tokens as usize, n_rows);
        for (u, s) in group.units.iter().enumerate() {
            let acts: Vec<f32> = (0..n_rows).map(|row| b.act(kind, row, u)).collect();
            let pos: Vec<f32> = acts.iter().copied().filter(|&a| a > 0.0).collect();
            // (2) density, max, mean, histogram
            assert_eq!(s.fired as usize, pos.len(), "{kind:?} {u} firing count");
            let max = pos.iter().copied().fold(0f32, f32::max);
            assert_eq!(s.max, max, "{kind:?} {u} max");
            let sum: f64 = pos.iter().map(|&a| a as f64).sum();
            assert!(
                (s.sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
                "{kind:?} {u} sum"
            );
            let mut hist = vec![0u64; s.histogram.len()];
            for &a in &pos {
                hist[hist_bin(a)] += 1;
            }
            assert_eq!(s.histogram, hist, "{kind:?} {u} histogram");
            fired_units += usize::from(!pos.is_empty());
            // (1) top-K: exactly the brute-force order, with their contexts
            let want = b.top(kind, u, 5);
            let got = s.top();
            assert_eq!(got.len(), want.len(), "{kind:?} {u} top-k size");
            for (g, &(act, win, p, tok)) in got.iter().zip(&want) {
                assert_eq!((g.act, g.window, g.position, g.token), (act, win, p, tok));
                let (start, ctx) = b.context(kind, u, win, p, 24);
                assert_eq!(
                    (g.context_start, &g.acts),
                    (start, &ctx),
                    "{kind:?} {u} context"
                );
                checked_examples += 1;
            }
            // band samples: in their band of the final maximum, with true contexts
            for (band, samples) in s.bands().iter().enumerate() {
                assert!(samples.len() <= 2);
                for e in samples {
                    assert_eq!(band_of(e.act, s.max, 4), band, "{kind:?} {u} band");
                    let row = b.at[&(e.window, e.position)];
                    assert_eq!(b.act(kind, row, u), e.act);
                    let (start, ctx) = b.context(kind, u, e.window, e.position, 24);
                    assert_eq!((e.context_start, &e.acts), (start, &ctx));
                }
            }
            let kept: usize = s.bands().iter().map(Vec::len).sum();
            assert!(
                pos.is_empty() || kept > 0,
                "{kind:?} {u} has no band sample"
            );
        }
    }
    assert!(
        checked_examples > 200,
        "too few examples checked: {checked_examples}"
    );
    assert!(
        fired_units > 100,
        "the random dictionary should mostly fire"
    );
    // summaries agree with the top examples
    for (u, s) in r.feature_summaries.iter().enumerate() {
        let top = r.analysis.features.units[u].top();
        assert_eq!(s.examples, top.len());
        if let Some(&(t, c)) = s.top_tokens.first() {
            assert_eq!(c, top.iter().filter(|e| e.token == t).count());
            assert!(s.top_tokens.iter().all(|&(_, c2)| c2 <= c));
            assert!((s.concentration - c as f64 / top.len() as f64).abs() < 1e-12);
        }
    }
}

/// Integer activations make ties everywhere: the heap must still give the exact top-K
/// (ties to the earlier token) over several batches.
#[test]
fn top_k_with_ties_is_exact() {
    let (units, seq, n_windows, per_batch) = (7, 9, 20, 3);
    let opts = GroupOptions {
        top_k: 6,
        context_radius: 2,
        bands: 3,
        per_band: 2,
        seed: 1,
    };
    let mut g = UnitGroup::new(UnitKind::Feature, units, opts);
    let mut r = Lcg(99);
    let mut all: Vec<(u32, u32, Vec<f32>)> = Vec::new();
    for first in (0..n_windows).step_by(per_batch) {
        let mut rows = Vec::new();
        let mut acts = Vec::new();
        let mut slots = vec![NO_ROW; per_batch * seq];
        for lw in 0..per_batch.min(n_windows - first) {
            for p in 1..seq {
                if (lw + p) % 5 == 0 {
                    continue; // an excluded position
                }
                slots[lw * seq + p] = rows.len() as u32;
                rows.push(((first + lw) as u32, p as u32, p as u32 + 10));
                let row: Vec<f32> = (0..units).map(|_| (r.next() * 4.0).floor() - 1.0).collect();
                acts.extend_from_slice(&row);
                all.push(((first + lw) as u32, p as u32, row));
            }
        }
        g.observe(&BatchActs {
            acts: &acts,
            width: units,
            rows: &rows,
            slots: &slots,
            seq,
            first_window: first as u32,
        });
    }
    for u in 0..units {
        let mut want: Vec<(f32, u32, u32)> = all
            .iter()
            .filter(|(_, _, row)| row[u] > 0.0)
            .map(|(w, p, row)| (row[u], *w, *p))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        want.truncate(6);
        let got: Vec<(f32, u32, u32)> = g.units[u]
            .top()
            .iter()
            .map(|e: &Example| (e.act, e.window, e.position))
            .collect();
        assert_eq!(got, want, "unit {u}");
    }
}

/// f64 dot product.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Top-n (index, value) of `v` by value (descending, or ascending), ties to the smaller index.
fn top_n(v: &[f64], n: usize, desc: bool, skip: Option<usize>) -> Vec<(u32, f64)> {
    let mut idx: Vec<usize> = (0..v.len()).filter(|&i| Some(i) != skip).collect();
    idx.sort_by(|&a, &b| {
        let o = if desc {
            v[b].total_cmp(&v[a])
        } else {
            v[a].total_cmp(&v[b])
        };
        o.then(a.cmp(&b))
    });
    idx.into_iter().take(n).map(|i| (i as u32, v[i])).collect()
}

fn assert_close(got: &[(u32, f32)], want: &[(u32, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "{what}: got {got:?}, want {want:?}");
        assert!(
            (g.1 as f64 - w.1).abs() <= 1e-4 * w.1.abs().max(1.0),
            "{what}: {} vs {}",
            g.1,
            w.1
        );
    }
}

#[test]
fn logit_effects_and_neighbours_equal_direct_computation() {
    let m = tiny();
    let d = dictionary(D);
    let w = windows(3, 12);
    let dir = tempfile::tempdir().unwrap();
    let r = run_build(&m, &d, &w, &dir.path().join("features.sqlite"));
    let dec = d.w_dec.to_vec2::<f32>().unwrap();
    let g = m
        .transformer
        .weights
        .ln_final
        .weight
        .to_vec1::<f32>()
        .unwrap();
    let wu = m
        .transformer
        .weights
        .unembed_f32()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let effects = r
        .logit_effects
        .as_ref()
        .expect("an SAE at d_model has logit effects");
    assert_eq!(effects.len(), D_SAE);
    for f in 0..D_SAE {
        let scaled: Vec<f32> = dec[f].iter().zip(&g).map(|(a, b)| a * b).collect();
        let logits: Vec<f64> = wu.iter().map(|row| dot(&scaled, row)).collect();
        assert_close(&effects[f].top, &top_n(&logits, 10, true, None), "promoted");
        assert_close(
            &effects[f].bottom,
            &top_n(&logits, 10, false, None),
            "suppressed",
        );
        let norm = |v: &[f32]| dot(v, v).sqrt();
        let cos: Vec<f64> = dec
            .iter()
            .map(|o| dot(&dec[f], o) / (norm(&dec[f]) * norm(o)))
            .collect();
        assert_close(
            &r.neighbours[f],
            &top_n(&cos, 10, true, Some(f)),
            "neighbours",
        );
    }
    // neurons: what each writes to the residual stream, column n of the block's W_out
    let layer =
        glassbox_model::hooks::layer_of(&r.analysis.hooks.neuron_hook.clone().unwrap()).unwrap();
    let w_out = m.transformer.weights.blocks[layer]
        .get()
        .unwrap()
        .mlp_out
        .weight
        .to_vec2::<f32>()
        .unwrap();
    let cols: Vec<Vec<f32>> = (0..D_MLP)
        .map(|n| w_out.iter().map(|row| row[n]).collect())
        .collect();
    let effects = r
        .neuron_logit_effects
        .as_ref()
        .expect("neurons have logit effects");
    assert_eq!((effects.len(), r.neuron_neighbours.len()), (D_MLP, D_MLP));
    for n in 0..D_MLP {
        let scaled: Vec<f32> = cols[n].iter().zip(&g).map(|(a, b)| a * b).collect();
        let logits: Vec<f64> = wu.iter().map(|row| dot(&scaled, row)).collect();
        assert_close(
            &effects[n].top,
            &top_n(&logits, 10, true, None),
            "neuron promoted",
        );
        assert_close(
            &effects[n].bottom,
            &top_n(&logits, 10, false, None),
            "neuron suppressed",
        );
        let norm = |v: &[f32]| dot(v, v).sqrt();
        let cos: Vec<f64> = cols
            .iter()
            .map(|o| dot(&cols[n], o) / (norm(&cols[n]) * norm(o)))
            .collect();
        assert_close(
            &r.neuron_neighbours[n],
            &top_n(&cos, 10, true, Some(n)),
            "neuron neighbours",
        );
    }
}

/// Column names of every table, from `PRAGMA table_info`.
fn columns(c: &rusqlite::Connection) -> BTreeMap<String, Vec<(String, String)>> {
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let cols: Vec<(String, String)> = c
                .prepare(&format!("PRAGMA table_info({t})"))
                .unwrap()
                .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (t, cols)
        })
        .collect()
}

fn count(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn the_store_follows_the_schema() {
    let m = tiny();
    let d = dictionary(D);
    let w = windows(12, 24);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.sqlite");
    let r = run_build(&m, &d, &w, &path);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        ["features.sqlite"],
        "no temporary or journal file is left"
    );

    let c =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let reference = rusqlite::Connection::open_in_memory().unwrap();
    reference.execute_batch(SCHEMA).unwrap();
    assert_eq!(
        columns(&c),
        columns(&reference),
        "tables and columns as schema.sql"
    );

    let meta: BTreeMap<String, String> = c
        .prepare("SELECT key, value FROM meta")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for key in [
        "model",
        "hook",
        "neuron_hook",
        "sae_dir",
        "d_sae",
        "d_mlp",
        "tokens",
        "context_size",
        "context_radius",
        "top_k",
        "built_seconds",
        "version",
    ] {
        assert!(meta.contains_key(key), "meta lacks {key}");
    }
    assert_eq!(meta["hook"], HOOK);
    assert_eq!(meta["neuron_hook"], NEURONS);
    assert_eq!(meta["d_sae"], D_SAE.to_string());
    assert_eq!(meta["d_mlp"], D_MLP.to_string());
    assert_eq!(meta["tokens"], r.tokens.to_string());
    assert!(meta["built_seconds"].parse::<f64>().unwrap() > 0.0);

    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM units WHERE kind = 'feature'"),
        D_SAE as i64
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM units WHERE kind = 'neuron'"),
        D_MLP as i64
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM logit_effects"),
        (D_SAE * 20) as i64
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM neighbours"),
        (D_SAE * 10) as i64
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM neuron_logit_effects"),
        (D_MLP * 20) as i64
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM neuron_neighbours"),
        (D_MLP * 10) as i64
    );
    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM examples WHERE window NOT IN (SELECT id FROM windows)"
        ),
        0,
        "every example's window is stored"
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM examples WHERE band = -1"),
        r.analysis
            .features
            .units
            .iter()
            .chain(&r.analysis.neurons.as_ref().unwrap().units)
            .map(|u| u.top().len() as i64)
            .sum::<i64>()
    );
    for key in [
        "feature_mean_concentration",
        "neuron_mean_concentration",
        "feature_dead_fraction",
        "neuron_dead_fraction",
        "feature_mean_distinct_tokens",
        "neuron_mean_distinct_tokens",
    ] {
        assert_eq!(
            count(
                &c,
                &format!("SELECT COUNT(*) FROM comparison WHERE key = '{key}'")
            ),
            1,
            "comparison lacks {key}"
        );
    }

    // the read API gives back what the build computed
    let store = FeatureStore::open(dir.path()).unwrap();
    assert_eq!(store.count(UnitKind::Feature).unwrap(), D_SAE as u64);
    assert_eq!(store.comparison().unwrap(), {
        let mut v = r.comparison.clone();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    });
    let densest = store
        .units(UnitKind::Feature, Order::Density, true, 5, 0)
        .unwrap();
    assert_eq!(densest.len(), 5);
    assert!(densest.windows(2).all(|p| p[0].density >= p[1].density));
    let f = densest[0].id as usize;
    let detail = store.unit(UnitKind::Feature, f as u32).unwrap().unwrap();
    let s = &r.analysis.features.units[f];
    assert_eq!(detail.unit.density, s.fired as f64 / r.tokens as f64);
    assert_eq!(detail.unit.max_act, s.max as f64);
    assert_eq!(detail.unit.histogram, s.histogram);
    assert_eq!(detail.unit.log10_edges.len(), s.histogram.len() + 1);
    let top: Vec<_> = detail.examples.iter().filter(|e| e.band == -1).collect();
    for (e, want) in top.iter().zip(s.top()) {
        assert_eq!(e.act, want.act as f64);
        assert_eq!(
            (e.window, e.position, e.context_start),
            (want.window, want.position, want.context_start)
        );
        assert_eq!(e.tokens.len(), want.acts.len());
        let at = (e.position - e.context_start) as usize;
        assert_eq!(e.tokens[at], token_text(want.token));
        for (a, b) in e.acts.iter().zip(&want.acts) {
            assert!(
                (a - *b as f64).abs() <= 1e-3 * b.abs() as f64 + 1e-12,
                "{a} vs {b}"
            );
        }
    }
    assert_eq!(top.len(), s.top().len());
    let (tok, n) = &detail.unit.top_tokens[0];
    assert_eq!(*tok, token_text(r.feature_summaries[f].top_tokens[0].0));
    assert_eq!(*n as usize, r.feature_summaries[f].top_tokens[0].1);
    assert!(
        detail.unit.label.contains(&format!("\"{tok}\"")),
        "label {}",
        detail.unit.label
    );
    assert_eq!(detail.promoted.len(), 10);
    assert_eq!(detail.suppressed.len(), 10);
    assert_eq!(detail.neighbours.len(), 10);
    // neurons' effects come from their output weights (the `neuron_…` tables)
    let neuron = store.unit(UnitKind::Neuron, 0).unwrap().unwrap();
    assert!(store.has_neuron_effects() && neuron.effects_available);
    assert_eq!(neuron.promoted.len(), 10);
    assert_eq!(neuron.neighbours.len(), 10);
    assert_eq!((neuron.prev, neuron.next), (None, Some(1)));
    assert!(store
        .unit(UnitKind::Feature, D_SAE as u32)
        .unwrap()
        .is_none());
}

#[test]
fn failed_builds_leave_nothing_behind() {
    let m = tiny();
    let w = windows(3, 12);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.sqlite");
    std::fs::write(&path, "an earlier store").unwrap();
    // a dictionary of the wrong width: a clear error naming both widths
    let d = dictionary(32);
    let err = build(
        &BuildInput {
            model: &m.transformer,
            dict: &d,
            hook: HOOK,
            windows: &w,
            token_text: &token_text,
            meta: Vec::new(),
        },
        &opts(),
        &path,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("32") && err.contains("64") && err.contains(HOOK),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "an earlier store");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // a failure while writing (the target is a folder): no temporary file is left
    let target = dir.path().join("blocked");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), "x").unwrap();
    let d = dictionary(D);
    let err = build(
        &BuildInput {
            model: &m.transformer,
            dict: &d,
            hook: HOOK,
            windows: &w,
            token_text: &token_text,
            meta: Vec::new(),
        },
        &opts(),
        &target,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("blocked"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked", "features.sqlite"]);
}

#[test]
fn a_run_directory_without_a_dictionary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "model = \"tiny\"\nhook = \"blocks.1.hook_resid_pre\"\ncontext_size = 24\ncorpus = \"c\"\n\n[train]\nseed = 7\n",
    )
    .unwrap();
    let err = glassbox_features::run_dir::read_run(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds no dictionary") && err.contains("cfg.json"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("checkpoint")).unwrap();
    let err = glassbox_features::run_dir::read_run(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("training has not finished"), "{err}");
    let err = glassbox_features::run_dir::read_run(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");

    // with a dictionary, the run's settings are read back
    glassbox_sae::format::save_saelens(&dictionary(D), dir.path()).unwrap();
    let run = glassbox_features::run_dir::read_run(dir.path()).unwrap();
    assert_eq!(run.model.as_deref(), Some("tiny"));
    assert_eq!(run.hook.as_deref(), Some(HOOK));
    assert_eq!(run.context_size, Some(24));
    assert_eq!(run.corpus.as_deref(), Some("c"));
    assert_eq!(run.seed(), 7);
}

#[test]
fn labels_name_recurring_tokens() {
    use glassbox_features::describe::{label, Summary};
    let s = |top_tokens: Vec<(u32, usize)>| Summary {
        examples: top_tokens.iter().map(|p| p.1).sum(),
        distinct: top_tokens.len(),
        concentration: 0.0,
        top_tokens,
    };
    let mut text = |t: u32| format!(" w{t}");
    let l = label(
        &s(vec![(7, 10), (8, 6), (9, 1), (3, 1), (4, 1), (5, 1)]),
        &mut text,
    );
    assert_eq!(l, "\" w7\" / \" w8\"");
    // two of twenty is not enough to name a unit
    let many: Vec<(u32, usize)> = (0..18).map(|t| (t, if t < 2 { 2 } else { 1 })).collect();
    assert_eq!(label(&s(many), &mut text), "mixed: \" w0\" / \" w1\"");
    assert_eq!(label(&s(vec![]), &mut text), "(dead)");
    assert_eq!(label(&s(vec![(5, 2)]), &mut text), "\" w5\"");
}
