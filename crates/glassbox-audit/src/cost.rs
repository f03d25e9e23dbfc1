//! FLOPs counted from the shapes (a multiply-add is 2 FLOPs; backward is twice forward),
//! energy at a stated power draw, and the projection of a study to a larger model.

use serde::Serialize;

/// What a FLOP count needs to know of a transformer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    /// a name for the report
    pub name: String,
    /// residual width
    pub d_model: usize,
    /// MLP width
    pub d_mlp: usize,
    /// blocks
    pub n_layers: usize,
    /// query heads
    pub n_heads: usize,
    /// key/value heads
    pub n_kv_heads: usize,
    /// width of one head
    pub d_head: usize,
    /// vocabulary
    pub d_vocab: usize,
    /// a gated MLP (three matrices: SwiGLU/GeGLU) rather than two
    pub gated_mlp: bool,
}

impl ModelShape {
    /// Llama-3.2-1B's shape: the projection's default target.
    pub fn llama_3_2_1b() -> Self {
        ModelShape {
            name: "Llama-3.2-1B".into(),
            d_model: 2048,
            d_mlp: 8192,
            n_layers: 16,
            n_heads: 32,
            n_kv_heads: 8,
            d_head: 64,
            d_vocab: 128_256,
            gated_mlp: true,
        }
    }

    /// FLOPs per token of one block at a context of `context` tokens: the four attention
    /// projections, scores and mixing over the mean `context / 2` earlier tokens, the MLP.
    pub fn block_flops(&self, context: usize) -> f64 {
        let (d, q, kv) = (
            self.d_model as f64,
            (self.n_heads * self.d_head) as f64,
            (self.n_kv_heads * self.d_head) as f64,
        );
        let projections = 2.0 * d * q + 2.0 * 2.0 * d * kv + 2.0 * q * d;
        let attention = 2.0 * 2.0 * q * context as f64 / 2.0;
        let mlp = if self.gated_mlp { 3.0 } else { 2.0 } * 2.0 * d * self.d_mlp as f64;
        projections + attention + mlp
    }

    /// FLOPs per token of a forward pass through `layers` blocks (and the unembedding
    /// when `unembed`).
    pub fn forward_flops(&self, layers: usize, context: usize, unembed: bool) -> f64 {
        let u = if unembed {
            2.0 * self.d_model as f64 * self.d_vocab as f64
        } else {
            0.0
        };
        layers.min(self.n_layers) as f64 * self.block_flops(context) + u
    }
}

/// FLOPs per token of a dictionary's forward pass, dense-equivalent: encoder and
/// decoder.
pub fn dictionary_forward_flops(d_in: usize, d_sae: usize, d_out: usize) -> f64 {
    2.0 * d_sae as f64 * (d_in + d_out) as f64
}

/// FLOPs per training token of a dictionary: forward plus a backward of twice the
/// forward (dense-equivalent; TopK's sparse decoder does less, so this is an upper bound).
pub fn dictionary_train_flops(d_in: usize, d_sae: usize, d_out: usize) -> f64 {
    3.0 * dictionary_forward_flops(d_in, d_sae, d_out)
}

/// Watt-hours drawn over `seconds` at `watts`.
pub fn watt_hours(seconds: f64, watts: f64) -> f64 {
    seconds * watts / 3600.0
}

/// The formula the projection uses, as the report states it.
pub const PROJECTION_FORMULA: &str = "seconds_target = tokens_target × (FLOPs_per_token_target / FLOPs_per_token_measured) × (wall_seconds_measured / tokens_measured): the measured seconds per FLOP, held constant (same machine, same efficiency)";

/// One stage's cost scaled to a target by [`PROJECTION_FORMULA`].
pub fn project(
    wall_s: f64,
    tokens: f64,
    flops_per_token: f64,
    target_tokens: f64,
    target_flops_per_token: f64,
) -> Option<f64> {
    if tokens <= 0.0 || flops_per_token <= 0.0 {
        return None;
    }
    Some(target_tokens * (target_flops_per_token / flops_per_token) * (wall_s / tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_follow_the_shapes() {
        // a 2-wide model, one head of 2, MLP 4, context 2
        let m = ModelShape {
            name: "t".into(),
            d_model: 2,
            d_mlp: 4,
            n_layers: 3,
            n_heads: 1,
            n_kv_heads: 1,
            d_head: 2,
            d_vocab: 10,
            gated_mlp: false,
        };
        // projections 4·2·2·2 = 32, attention 2·2·2·1 = 8, MLP 2·2·2·4 = 32
        assert_eq!(m.block_flops(2), 72.0);
        assert_eq!(m.forward_flops(2, 2, true), 2.0 * 72.0 + 40.0);
        assert_eq!(
            m.forward_flops(9, 2, false),
            3.0 * 72.0,
            "no more blocks than it has"
        );
        assert_eq!(dictionary_train_flops(2, 8, 2), 3.0 * 2.0 * 8.0 * 4.0);
        assert_eq!(watt_hours(3600.0, 50.0), 50.0);
        // twice the FLOPs per token and ten times the tokens: twenty times the time
        assert_eq!(project(5.0, 100.0, 1.0, 1000.0, 2.0), Some(100.0));
        assert_eq!(project(5.0, 0.0, 1.0, 1000.0, 2.0), None);
    }
}
