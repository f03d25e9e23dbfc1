//! Metrics on logits: logit difference, log-probabilities, KL divergence, loss.

use crate::{bad, Result};
use candle_core::{Tensor, D};
use glassbox_model::TextTokenizer;

/// `logit[answer] − logit[wrong]` at the last position of every row of `[batch, seq, vocab]`.
pub fn logit_diff_last(logits: &Tensor, answer: u32, wrong: u32) -> Result<Vec<f32>> {
    let s = logits.dim(1)?;
    let last = logits.narrow(1, s - 1, 1)?.squeeze(1)?;
    let a = last.narrow(1, answer as usize, 1)?;
    let w = last.narrow(1, wrong as usize, 1)?;
    Ok((a - w)?.flatten_all()?.to_vec1()?)
}

/// The same as a differentiable scalar for row 0 (for gradients).
pub fn logit_diff_scalar(logits: &Tensor, answer: u32, wrong: u32) -> Result<Tensor> {
    let s = logits.dim(1)?;
    let last = logits.get(0)?.get(s - 1)?;
    Ok((last.get(answer as usize)? - last.get(wrong as usize)?)?)
}

/// log-softmax over the vocabulary, in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Mean over positions of KL(p ‖ q) for two `[batch, seq, vocab]` logit tensors.
pub fn mean_kl(p_logits: &Tensor, q_logits: &Tensor) -> Result<f32> {
    let lp = log_softmax(p_logits)?;
    let lq = log_softmax(q_logits)?;
    let kl = (lp.exp()? * (&lp - &lq)?)?.sum(D::Minus1)?;
    Ok(kl.mean_all()?.to_scalar::<f32>()?)
}

/// Mean next-token cross-entropy over the positions of one sequence `[1, seq, vocab]`.
pub fn next_token_loss(logits: &Tensor, tokens: &[u32]) -> Result<f32> {
    let s = tokens.len();
    if s < 2 {
        return Err(bad("a loss needs at least two tokens"));
    }
    let lp = log_softmax(&logits.get(0)?.narrow(0, 0, s - 1)?)?;
    let mut total = 0f32;
    for (p, &t) in tokens[1..].iter().enumerate() {
        total -= lp.get(p)?.get(t as usize)?.to_scalar::<f32>()?;
    }
    Ok(total / (s - 1) as f32)
}

/// The id of a single-token answer such as `" Mary"`; several tokens is an error that says so.
pub fn single_token(tok: &TextTokenizer, text: &str) -> Result<u32> {
    let ids = tok.encode(text)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(bad(format!("answer {text:?} is empty"))),
        many => Err(bad(format!(
            "answer {text:?} is {} tokens ({}); give a single token (mind the leading space, e.g. \" Mary\")",
            many.len(),
            many.iter().map(|&i| format!("{:?}", tok.token_text(i))).collect::<Vec<_>>().join(" + ")
        ))),
    }
}

/// Pearson correlation of two samples paired by index (up to the shorter one), in f64.
/// NaN with fewer than two pairs or when either side is constant.
pub fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return f32::NAN;
    }
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    (sab / (saa * sbb).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pearson_of_a_line_is_one() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-6);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-6);
    }
}
