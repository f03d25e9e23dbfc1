//! Feature absorption on the first-letter task, after SAEBench (Chanin et al., "A is for
//! Absorption"): a linear probe on the raw activations of single-token words finds each
//! letter's direction; the dictionary's main latent for the letter is the one that fires
//! most more on the letter's words than on the others (class-mean difference); among the held-out words the probe gets right, a word whose
//! main latent stays at zero while another firing latent's decoder row points along the
//! probe (cosine ≥ [`ABSORBING_COSINE`]) counts as **absorbed**: the letter is there, but
//! a more specific latent took it. The rate per letter is absorbed words over the
//! probe's true positives; the score is the mean over letters.
//!
//! Simplified against SAEBench: one main latent per letter (SAEBench grows the set by
//! k-sparse probing while F1 improves), and absorption by the decoder cosine alone
//! (SAEBench also asks the absorbing latents to carry a share of the probe projection).

use crate::metrics::accuracy;
use crate::probe::train_lr;
use crate::sparse::mean_differences;
use crate::{bad, Result};
use serde::Serialize;

/// The decoder cosine with the probe direction from which a firing latent absorbs.
pub const ABSORBING_COSINE: f64 = 0.1;

/// One letter's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LetterAbsorption {
    /// the letter
    pub letter: char,
    /// held-out words starting with it
    pub test_words: usize,
    /// the probe's held-out accuracy on "starts with this letter or not"
    pub probe_accuracy: f64,
    /// the dictionary's main latent for the letter
    pub main_latent: usize,
    /// held-out words with the letter that the probe calls right
    pub true_positives: usize,
    /// of those, words where the main latent is zero
    pub main_missed: usize,
    /// of those, words where another firing latent points along the probe
    pub absorbed: usize,
    /// `absorbed / true_positives`
    pub absorption_rate: f64,
}

/// The whole task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Absorption {
    /// letters with enough words on both sides of the split
    pub letters: Vec<LetterAbsorption>,
    /// mean absorption rate over them
    pub mean_absorption_rate: f64,
    /// mean share of true positives whose main latent is zero (absorbed or not)
    pub mean_missed_rate: f64,
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y;
        aa += (x as f64).powi(2);
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

/// The first-letter task: `raw[i]` and `latents[i]` are word `i`'s activation and
/// encoding, `letters[i]` its first letter; `decoder[j]` is latent `j`'s decoder row (in
/// the raw space). Letters with fewer than `min_words` words on the held-out or the
/// training side are left out.
pub fn absorption(
    raw: &[Vec<f32>],
    latents: &[Vec<f32>],
    decoder: &[Vec<f32>],
    letters: &[char],
    train: &[usize],
    test: &[usize],
    min_words: usize,
) -> Result<Absorption> {
    if raw.len() != letters.len() || latents.len() != letters.len() {
        return Err(bad(
            "one activation, one encoding and one first letter per word",
        ));
    }
    let mut alphabet: Vec<char> = letters.to_vec();
    alphabet.sort_unstable();
    alphabet.dedup();
    let mut out = Vec::new();
    for letter in alphabet {
        let y: Vec<u8> = letters.iter().map(|&l| u8::from(l == letter)).collect();
        let count = |idx: &[usize]| idx.iter().filter(|&&i| y[i] == 1).count();
        let (n_train, n_test) = (count(train), count(test));
        if n_train < min_words || n_test < min_words || n_train == train.len() {
            continue;
        }
        let x: Vec<&[f32]> = train.iter().map(|&i| raw[i].as_slice()).collect();
        let yt: Vec<u8> = train.iter().map(|&i| y[i]).collect();
        let probe = train_lr(&x, &yt, 1.0)?;
        let direction = probe.direction();
        let scores: Vec<f64> = test.iter().map(|&i| probe.prob(&raw[i])).collect();
        let truth: Vec<u8> = test.iter().map(|&i| y[i]).collect();
        // the latent that fires most more on the letter's words than on the others
        let diff = mean_differences(latents, &y, train);
        let Some(main) =
            (0..diff.len()).max_by(|&a, &b| diff[a].total_cmp(&diff[b]).then(b.cmp(&a)))
        else {
            return Err(bad("the dictionary has no latents"));
        };
        let aligned: Vec<bool> = decoder
            .iter()
            .map(|row| cosine(row, &direction) >= ABSORBING_COSINE)
            .collect();
        let (mut tp, mut missed, mut absorbed) = (0, 0, 0);
        for (&i, &s) in test.iter().zip(&scores) {
            if y[i] != 1 || s <= 0.5 {
                continue;
            }
            tp += 1;
            if latents[i][main] > 0.0 {
                continue;
            }
            missed += 1;
            let other = latents[i]
                .iter()
                .enumerate()
                .any(|(j, &a)| j != main && a > 0.0 && aligned.get(j).copied().unwrap_or(false));
            absorbed += usize::from(other);
        }
        out.push(LetterAbsorption {
            letter,
            test_words: n_test,
            probe_accuracy: accuracy(&scores, &truth, 0.5),
            main_latent: main,
            true_positives: tp,
            main_missed: missed,
            absorbed,
            absorption_rate: absorbed as f64 / tp.max(1) as f64,
        });
    }
    if out.is_empty() {
        return Err(bad(format!(
            "no letter has {min_words} words on both sides of the split: give more words"
        )));
    }
    let mean =
        |f: &dyn Fn(&LetterAbsorption) -> f64| out.iter().map(f).sum::<f64>() / out.len() as f64;
    let mean_absorption_rate = mean(&|l| l.absorption_rate);
    let mean_missed_rate = mean(&|l| l.main_missed as f64 / l.true_positives.max(1) as f64);
    Ok(Absorption {
        letters: out,
        mean_absorption_rate,
        mean_missed_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words in 8 dimensions: dims 0 and 1 are the letters a and b, the rest noise. The
    /// planted dictionary has a main latent per letter, and for a quarter of the a-words a
    /// specific latent that fires instead of a's, its decoder row along a's direction.
    #[test]
    fn planted_absorption_is_measured() {
        let mut s = 3u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let (mut raw, mut latents, mut letters) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..160 {
            let letter = if i % 2 == 0 { 'a' } else { 'b' };
            let mut x: Vec<f32> = (0..8).map(|_| 0.3 * rnd()).collect();
            x[usize::from(letter == 'b')] += 1.0;
            // latents: [a main, b main, absorber of a, noise]
            let absorbed = letter == 'a' && i % 8 == 0;
            let z = vec![
                if letter == 'a' && !absorbed { 1.0 } else { 0.0 },
                if letter == 'b' { 1.0 } else { 0.0 },
                if absorbed { 1.2 } else { 0.0 },
                x[5].max(0.0),
            ];
            raw.push(x);
            latents.push(z);
            letters.push(letter);
        }
        let unit = |j: usize| {
            (0..8)
                .map(|d| if d == j { 1.0 } else { 0.0 })
                .collect::<Vec<f32>>()
        };
        let mut absorber = unit(0);
        absorber[6] = 0.5; // a's direction and something of its own
        let decoder = vec![unit(0), unit(1), absorber, unit(5)];
        let (train, test): (Vec<usize>, Vec<usize>) = (0..160).partition(|i| i % 5 != 0);
        let r = absorption(&raw, &latents, &decoder, &letters, &train, &test, 5).unwrap();
        let a = &r.letters[0];
        assert_eq!((a.letter, a.main_latent), ('a', 0));
        assert!(a.probe_accuracy > 0.95, "{a:?}");
        // held-out a-words: i % 10 == 0 (i % 5 == 0 and even); absorbed: i % 40 == 0
        assert_eq!(a.test_words, 16);
        assert_eq!(a.true_positives, 16);
        assert_eq!((a.main_missed, a.absorbed), (4, 4));
        assert_eq!(a.absorption_rate, 0.25);
        let b = &r.letters[1];
        assert_eq!((b.letter, b.main_latent, b.absorbed), ('b', 1, 0));
        assert_eq!(r.mean_absorption_rate, 0.125);
        // without the absorber's alignment (its row against a's direction), the same
        // misses are not absorption
        let mut against = unit(0);
        against[0] = -1.0;
        let decoder = vec![unit(0), unit(1), against, unit(5)];
        let r = absorption(&raw, &latents, &decoder, &letters, &train, &test, 5).unwrap();
        assert_eq!((r.letters[0].main_missed, r.letters[0].absorbed), (4, 0));
        assert!(absorption(&raw, &latents, &decoder, &letters, &train, &test, 100).is_err());
    }
}
