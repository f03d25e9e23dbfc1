//! Sparse probing, as SAEBench defines it: can a dictionary's few most class-separating
//! latents classify what a probe on the raw activations classifies? For each `k`, the
//! `k` latents with the largest difference of class means on the training split are
//! kept, a logistic regression is fitted on them alone, and its held-out accuracy is
//! set against a logistic regression on the raw activations. A good dictionary has
//! single latents for the concepts a dataset separates, so `k = 1` comes close to raw.

use crate::metrics::accuracy;
use crate::probe::train_lr;
use crate::{bad, Result};
use serde::Serialize;

/// The `k`s SAEBench reports.
pub const KS: [usize; 3] = [1, 2, 5];

/// The L2 penalty of every fit (on standardised inputs, as the sweeps use).
const L2: f64 = 1.0;

/// One `k`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SparseFit {
    /// latents kept
    pub k: usize,
    /// held-out accuracy of the logistic regression on them
    pub accuracy: f64,
    /// the latents, most separating first
    pub latents: Vec<usize>,
}

/// One dataset's sparse probing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SparseProbing {
    /// training and held-out examples
    pub train: usize,
    /// held-out examples
    pub test: usize,
    /// held-out accuracy of the logistic regression on the raw activations
    pub raw_accuracy: f64,
    /// one entry per `k`
    pub sparse: Vec<SparseFit>,
}

/// Per column of `latents`, the mean over the `train` rows labelled 1 minus the mean
/// over those labelled 0.
pub fn mean_differences(latents: &[Vec<f32>], labels: &[u8], train: &[usize]) -> Vec<f64> {
    let width = latents.first().map_or(0, Vec::len);
    let (mut sum, mut n) = ([vec![0f64; width], vec![0f64; width]], [0usize; 2]);
    for &i in train {
        let c = usize::from(labels[i] == 1);
        n[c] += 1;
        for (s, &v) in sum[c].iter_mut().zip(&latents[i]) {
            *s += v as f64;
        }
    }
    (0..width)
        .map(|j| sum[1][j] / n[1].max(1) as f64 - sum[0][j] / n[0].max(1) as f64)
        .collect()
}

/// The `k` columns of `latents` (rows of `train`) with the largest |mean over label 1 −
/// mean over label 0|, ties to the lower index.
pub fn top_mean_difference(
    latents: &[Vec<f32>],
    labels: &[u8],
    train: &[usize],
    k: usize,
) -> Vec<usize> {
    let diff: Vec<f64> = mean_differences(latents, labels, train)
        .into_iter()
        .map(f64::abs)
        .collect();
    let mut order: Vec<usize> = (0..diff.len()).collect();
    order.sort_by(|&a, &b| diff[b].total_cmp(&diff[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

fn fit_and_test(rows: &[Vec<f32>], labels: &[u8], train: &[usize], test: &[usize]) -> Result<f64> {
    let x: Vec<&[f32]> = train.iter().map(|&i| rows[i].as_slice()).collect();
    let y: Vec<u8> = train.iter().map(|&i| labels[i]).collect();
    let probe = train_lr(&x, &y, L2)?;
    let scores: Vec<f64> = test.iter().map(|&i| probe.prob(&rows[i])).collect();
    let truth: Vec<u8> = test.iter().map(|&i| labels[i]).collect();
    Ok(accuracy(&scores, &truth, 0.5))
}

/// Sparse probing of one dataset: `raw[i]` and `latents[i]` are example `i`'s activation
/// and its dictionary encoding, `labels[i]` its class (0 or 1); `train` and `test` index
/// the split.
pub fn sparse_probing(
    raw: &[Vec<f32>],
    latents: &[Vec<f32>],
    labels: &[u8],
    train: &[usize],
    test: &[usize],
    ks: &[usize],
) -> Result<SparseProbing> {
    if raw.len() != labels.len() || latents.len() != labels.len() {
        return Err(bad(format!(
            "{} activations, {} encodings and {} labels: one of each per example",
            raw.len(),
            latents.len(),
            labels.len()
        )));
    }
    if test.is_empty() {
        return Err(bad("no held-out examples to score the probes on"));
    }
    let raw_accuracy = fit_and_test(raw, labels, train, test)?;
    let mut sparse = Vec::new();
    for &k in ks {
        let keep = top_mean_difference(latents, labels, train, k);
        let cols: Vec<Vec<f32>> = latents
            .iter()
            .map(|r| keep.iter().map(|&j| r[j]).collect())
            .collect();
        sparse.push(SparseFit {
            k,
            accuracy: fit_and_test(&cols, labels, train, test)?,
            latents: keep,
        });
    }
    Ok(SparseProbing {
        train: train.len(),
        test: test.len(),
        raw_accuracy,
        sparse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200 examples in 6 dimensions; the label is the sign of x·w (w along dims 0 and 1).
    fn planted() -> (Vec<Vec<f32>>, Vec<u8>) {
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let r: Vec<f32> = (0..6).map(|_| rnd()).collect();
            y.push(u8::from(r[0] + r[1] > 0.0));
            x.push(r);
        }
        (x, y)
    }

    #[test]
    fn a_planted_latent_is_found_and_probes_as_well_as_raw() {
        let (x, y) = planted();
        // latents: noise, the concept (relu(x·w)), its opposite, more noise
        let enc = |r: &Vec<f32>| {
            let c = r[0] + r[1];
            vec![
                r[2].max(0.0),
                c.max(0.0),
                (-c).max(0.0),
                r[3].abs(),
                r[4].max(0.0),
            ]
        };
        let good: Vec<Vec<f32>> = x.iter().map(enc).collect();
        let (train, test): (Vec<usize>, Vec<usize>) = (0..200).partition(|i| i % 4 != 0);
        let p = sparse_probing(&x, &good, &y, &train, &test, &KS).unwrap();
        assert!(p.raw_accuracy > 0.95, "{p:?}");
        assert!(
            p.sparse[0].latents == [1] || p.sparse[0].latents == [2],
            "{p:?}"
        );
        assert!(
            p.sparse[0].accuracy > 0.85,
            "one latent carries the concept: {p:?}"
        );
        assert_eq!(
            p.sparse[1]
                .latents
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [1, 2].into()
        );
        // a dictionary without the concept: its best single latent is near chance
        let bad: Vec<Vec<f32>> = x
            .iter()
            .map(|r| vec![r[2].max(0.0), r[3].abs(), r[4].max(0.0), r[5]])
            .collect();
        let q = sparse_probing(&x, &bad, &y, &train, &test, &[1]).unwrap();
        assert!(q.sparse[0].accuracy < 0.7, "{q:?}");
        assert!(sparse_probing(&x, &bad[..10], &y, &train, &test, &[1]).is_err());
    }
}
