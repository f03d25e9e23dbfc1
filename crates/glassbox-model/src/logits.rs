//! Small helpers over one row of logits.

/// One token of a row of logits, as [`top_k`] returns it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenScore {
    /// the token id (its index in the row)
    pub id: u32,
    /// its logit
    pub logit: f32,
    /// its softmax probability over the whole row
    pub prob: f32,
}

/// The `k` highest logits with their softmax probabilities, best first.
pub fn top_k(row: &[f32], k: usize) -> Vec<TokenScore> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.into_iter()
        .map(|i| TokenScore {
            id: i as u32,
            logit: row[i],
            prob: (((row[i] - max) as f64).exp() / z) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_orders_and_normalises() {
        let t = super::top_k(&[1.0, 3.0, 2.0], 2);
        assert_eq!(t.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
        let z = 1f32.exp() + 3f32.exp() + 2f32.exp();
        assert!((t[0].prob - 3f32.exp() / z).abs() < 1e-6);
    }
}
