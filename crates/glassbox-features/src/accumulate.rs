//! The streaming statistics of a group of units (features or neurons): bounded memory
//! per unit whatever the number of tokens, updated batch by batch in parallel over
//! units.
//!
//! Per unit: firing count, sum and maximum of positive activations, a log10 histogram,
//! the exact top-K examples (a bounded heap; ties go to the earlier token), and band
//! samples: the range `(0, max]` is cut into `bands` equal parts by fraction of the
//! maximum, and each band keeps the `per_band` tokens with the smallest seeded hash key
//! (a uniform sample without replacement). The maximum is the running one: when it
//! grows, kept samples move to the band of their new fraction, so samples are uniform
//! within each band over the tokens seen since the maximum last grew (for most units
//! that is nearly all of them; the top band also always holds the tokens kept then).
//!
//! Contexts (the unit's activation over ±radius tokens) are captured when an example
//! enters the heap or a band, while the batch's activations are at hand.

use crate::{hist_bin, UnitKind, HIST_BINS};
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Marks a position that is not a statistics row (position 0, excluded tokens).
pub const NO_ROW: u32 = u32::MAX;

/// One activating token with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// the unit's activation at the token
    pub act: f32,
    /// index of the window in the analysed list
    pub window: u32,
    /// the token's position in its window
    pub position: u32,
    /// the token id at `position`
    pub token: u32,
    /// first position of the context
    pub context_start: u32,
    /// the unit's activation at every context position from `context_start` (0 at
    /// excluded positions)
    pub acts: Vec<f32>,
    /// band-sampling key (0 for top examples)
    pub key: u64,
}

impl Example {
    /// Total order of "stronger": larger activation, then the earlier token.
    pub fn rank_cmp(&self, other: &Example) -> Ordering {
        other
            .act
            .total_cmp(&self.act)
            .then((self.window, self.position).cmp(&(other.window, other.position)))
    }
}

/// Heap entry whose maximum is the weakest example (the one to evict).
#[derive(Debug, Clone)]
struct Weakest(Example);

impl PartialEq for Weakest {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Weakest {}
impl PartialOrd for Weakest {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Weakest {
    fn cmp(&self, o: &Self) -> Ordering {
        // stronger examples compare as "less": the heap's top is the weakest
        self.0.rank_cmp(&o.0)
    }
}

/// The statistics of one unit.
#[derive(Debug, Clone)]
pub struct UnitState {
    /// tokens where the activation was > 0
    pub fired: u64,
    /// sum of the positive activations
    pub sum: f64,
    /// the largest activation (0 if it never fired)
    pub max: f32,
    /// counts per log10 bin ([`crate::hist_bin`])
    pub histogram: Vec<u64>,
    top: BinaryHeap<Weakest>,
    bands: Vec<Vec<Example>>,
}

impl UnitState {
    fn new(bands: usize) -> Self {
        UnitState {
            fired: 0,
            sum: 0.0,
            max: 0.0,
            histogram: vec![0; HIST_BINS],
            top: BinaryHeap::new(),
            bands: vec![Vec::new(); bands],
        }
    }

    /// Mean over the tokens where it fired (0 if never).
    pub fn mean(&self) -> f64 {
        if self.fired == 0 {
            0.0
        } else {
            self.sum / self.fired as f64
        }
    }

    /// The top examples, strongest first.
    pub fn top(&self) -> Vec<Example> {
        let mut v: Vec<Example> = self.top.iter().map(|w| w.0.clone()).collect();
        v.sort_by(Example::rank_cmp);
        v
    }

    /// The band samples, band 0 (lowest fraction of the maximum) first, each strongest
    /// first.
    pub fn bands(&self) -> Vec<Vec<Example>> {
        self.bands
            .iter()
            .map(|b| {
                let mut v = b.clone();
                v.sort_by(Example::rank_cmp);
                v
            })
            .collect()
    }
}

/// One batch's activations of a group, restricted to its statistics rows.
pub struct BatchActs<'a> {
    /// `[rows, width]` row-major: one row per kept token
    pub acts: &'a [f32],
    /// units per row (the group's number of units)
    pub width: usize,
    /// per row: (index of the window in the analysed list, position, token id)
    pub rows: &'a [(u32, u32, u32)],
    /// per (window of this batch, position): the row, or [`NO_ROW`]
    pub slots: &'a [u32],
    /// window length
    pub seq: usize,
    /// the analysed-list index of this batch's first window
    pub first_window: u32,
}

impl BatchActs<'_> {
    /// The unit's activations over `pos ± radius` in the row's window.
    fn context(&self, row: usize, unit: usize, radius: usize) -> (u32, Vec<f32>) {
        let (w, p, _) = self.rows[row];
        let p = p as usize;
        let local = (w - self.first_window) as usize;
        let start = p.saturating_sub(radius);
        let end = (p + radius + 1).min(self.seq);
        let acts = (start..end)
            .map(|q| match self.slots[local * self.seq + q] {
                NO_ROW => 0.0,
                r => self.acts[r as usize * self.width + unit],
            })
            .collect();
        (start as u32, acts)
    }
}

/// Options of a group (copied from [`crate::BuildOptions`]).
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// top activating examples kept per unit
    pub top_k: usize,
    /// tokens of context kept on each side of an example's token
    pub context_radius: usize,
    /// bands of `(0, max]`, by fraction of the unit's maximum
    pub bands: usize,
    /// samples kept per band
    pub per_band: usize,
    /// seed of the band samples' hash keys
    pub seed: u64,
}

/// The streaming statistics of every unit of one kind.
#[derive(Debug, Clone)]
pub struct UnitGroup {
    /// features or neurons
    pub kind: UnitKind,
    /// per unit, by id
    pub units: Vec<UnitState>,
    /// what each unit keeps
    pub opts: GroupOptions,
    /// statistics rows seen (tokens evaluated)
    pub tokens: u64,
}

/// Units per parallel task.
const CHUNK: usize = 32;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl UnitGroup {
    /// `n_units` units that have seen nothing yet.
    pub fn new(kind: UnitKind, n_units: usize, opts: GroupOptions) -> Self {
        UnitGroup {
            kind,
            units: (0..n_units).map(|_| UnitState::new(opts.bands)).collect(),
            opts,
            tokens: 0,
        }
    }

    /// Adds one batch (only activations > 0 count). Panics unless `batch.width` equals
    /// the number of units and `batch.acts` holds `rows × width` values.
    pub fn observe(&mut self, batch: &BatchActs) {
        assert_eq!(batch.width, self.units.len(), "batch width ≠ units");
        assert_eq!(batch.acts.len(), batch.rows.len() * batch.width);
        self.tokens += batch.rows.len() as u64;
        let opts = &self.opts;
        let kind_salt = match self.kind {
            UnitKind::Feature => 0x66,
            UnitKind::Neuron => 0x6e,
        };
        let salt = mix(opts.seed ^ kind_salt);
        self.units
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let u0 = c * CHUNK;
                for r in 0..batch.rows.len() {
                    let row = &batch.acts[r * batch.width + u0..][..chunk.len()];
                    for (j, &a) in row.iter().enumerate() {
                        if a > 0.0 {
                            observe_one(&mut chunk[j], a, r, u0 + j, batch, opts, salt);
                        }
                    }
                }
            });
    }
}

fn observe_one(
    s: &mut UnitState,
    a: f32,
    row: usize,
    unit: usize,
    batch: &BatchActs,
    opts: &GroupOptions,
    salt: u64,
) {
    let (window, position, token) = batch.rows[row];
    s.fired += 1;
    s.sum += a as f64;
    s.histogram[hist_bin(a)] += 1;
    if a > s.max {
        s.max = a;
        reband(s, opts);
    }
    let make = |key: u64| {
        let (context_start, acts) = batch.context(row, unit, opts.context_radius);
        Example {
            act: a,
            window,
            position,
            token,
            context_start,
            acts,
            key,
        }
    };
    // top-K
    if opts.top_k > 0 {
        let enters = s.top.len() < opts.top_k || {
            let weakest = &s.top.peek().expect("non-empty").0;
            a > weakest.act
                || (a == weakest.act && (window, position) < (weakest.window, weakest.position))
        };
        if enters {
            if s.top.len() == opts.top_k {
                s.top.pop();
            }
            s.top.push(Weakest(make(0)));
        }
    }
    // band samples
    if opts.bands > 0 && opts.per_band > 0 {
        let b = band_of(a, s.max, opts.bands);
        let key =
            mix(salt ^ mix((unit as u64) << 32 ^ mix(((window as u64) << 32) | position as u64)));
        let band = &mut s.bands[b];
        if band.len() < opts.per_band {
            band.push(make(key));
        } else {
            let (i, worst) = band
                .iter()
                .enumerate()
                .max_by_key(|(_, e)| e.key)
                .map(|(i, e)| (i, e.key))
                .expect("non-empty band");
            if key < worst {
                band[i] = make(key);
            }
        }
    }
}

/// Band of activation `a` when the maximum is `max`: `floor(bands · a / max)`, the
/// maximum itself in the top band.
pub fn band_of(a: f32, max: f32, bands: usize) -> usize {
    let f = (a as f64 / max as f64 * bands as f64).floor();
    if f.is_nan() || f < 0.0 {
        0
    } else {
        (f as usize).min(bands - 1)
    }
}

/// After the maximum grew: every kept band sample goes to its new band, each band
/// keeping the `per_band` smallest keys.
fn reband(s: &mut UnitState, opts: &GroupOptions) {
    if s.bands.iter().all(Vec::is_empty) {
        return;
    }
    let mut all: Vec<Example> = s.bands.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|e| e.key);
    for e in all {
        let b = band_of(e.act, s.max, opts.bands);
        if s.bands[b].len() < opts.per_band {
            s.bands[b].push(e);
        }
    }
}
