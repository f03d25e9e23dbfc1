//! Accuracy and AUROC of probe scores against 0/1 labels (1 true).

/// Area under the ROC curve: the probability that a random positive scores above a
/// random negative (ties count one half), computed from average ranks
/// (Mann–Whitney U). Labels are 1 for positive, anything else negative. `None` when a
/// class is missing.
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // average ranks over ties
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l == 1)
        .map(|(r, _)| r)
        .sum();
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// The fraction of examples whose prediction `score > threshold` agrees with the label
/// (1 true); 0 for no examples. Probabilities from a probe use threshold 0.5.
pub fn accuracy(scores: &[f64], labels: &[u8], threshold: f64) -> f64 {
    let right = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| (s > threshold) == (l == 1))
        .count();
    right as f64 / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn auroc_of_perfect_random_and_reversed_scores() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[1, 1]), None);
    }
}
