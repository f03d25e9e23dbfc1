//! What data-parallel training needs from the processes it runs on: sums over every
//! rank. [`Trainer::step_with`](super::Trainer::step_with) sums each step's gradients,
//! firing counts and losses through a [`Collective`]; [`Alone`] is one process, and
//! `glassbox-dist` implements it over MPI. Keeping the trait here keeps the trainer free
//! of any MPI dependency.

/// Sums over the ranks of one job. Every rank calls the same methods in the same order
/// with buffers of the same length (that is what makes the collectives meet); after a
/// call every rank holds the same result.
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank by its element-wise sum over the ranks.
    fn sum_f32(&self, buf: &mut [f32]);
    /// Replaces `buf` on every rank by its element-wise sum over the ranks.
    fn sum_u64(&self, buf: &mut [u64]);
    /// Bytes this process has sent and received in collectives so far (the
    /// communication model in BENCHMARKS.md is checked against it).
    fn bytes_communicated(&self) -> u64 {
        0
    }

    /// Every rank's `value`, in rank order (one sum over a buffer with a slot per rank).
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let mut slots = vec![0u64; self.size()];
        slots[self.rank()] = value;
        self.sum_u64(&mut slots);
        slots
    }

    /// Every rank's `send` (all the same length), concatenated in rank order into
    /// `recv` (`size() × send.len()`). This default sums a buffer with a slot per rank;
    /// MPI's all-gather moves a rank's share once.
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) {
        assert_eq!(
            recv.len(),
            send.len() * self.size(),
            "all_gather_f32: recv size"
        );
        recv.iter_mut().for_each(|v| *v = 0.0);
        let at = self.rank() * send.len();
        recv[at..at + send.len()].copy_from_slice(send);
        // -inf + 0 stays -inf: the other slots are zeros
        self.sum_f32(recv);
    }

    /// Rank 0's `buf` on every rank (a sum to which the other ranks add zeros).
    fn broadcast_f32(&self, buf: &mut [f32]) {
        if self.size() == 1 {
            return;
        }
        if self.rank() != 0 {
            buf.iter_mut().for_each(|v| *v = 0.0);
        }
        self.sum_f32(buf);
    }
}

/// A job of one process: every sum is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _buf: &mut [f32]) {}
    fn sum_u64(&self, _buf: &mut [u64]) {}
}

/// The first rank whose `value` differs from rank 0's, with both values, if any.
pub fn first_disagreement(c: &dyn Collective, value: u64) -> Option<(usize, u64, u64)> {
    let all = c.all_gather_u64(value);
    all.iter()
        .enumerate()
        .find(|(_, v)| **v != all[0])
        .map(|(r, v)| (r, all[0], *v))
}
