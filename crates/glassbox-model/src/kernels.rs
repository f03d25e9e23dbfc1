//! Hand-written CPU kernels for the fast (no-gradient) forward pass, where composing
//! candle ops would cost memory passes: fused causal attention and the gated MLP's
//! `act(gate) · up`. Each is checked against the composed candle ops in tests.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape};
use rayon::prelude::*;
use std::sync::Arc;

/// `exp` to about 2 ulp, written so the compiler can vectorise a loop of it
/// (std's `expf` is a libm call per element).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    // Branch-free so loops of it vectorise: clamp (NaN becomes a number here and is
    // restored at the end), split x = n ln2 + r with |r| <= ln2/2, polynomial for e^r.
    // Not `clamp`: clamp keeps NaN, and NaN must not reach the integer conversion.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.3).min(88.3);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_145_75, xc);
    let r = n.mul_add(-1.428_606_8e-6, r);
    // Remez-fitted polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf)
    let mut p = 1.987_569_2e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_66);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // SAFETY: n is an integer in [-126, 128] after the clamp, so the conversion is exact.
    let e = unsafe { (n + 127.0).to_int_unchecked::<i32>() };
    let out = y * f32::from_bits((e as u32) << 23);
    if x.is_nan() {
        x
    } else {
        out
    }
}

/// Runs `f` compiled for AVX2+FMA when the CPU has them (portable binary, fast loops).
macro_rules! dispatch_simd {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { $generic($($arg),*) }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected at run time.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

#[inline(always)]
fn silu_mul_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + fast_exp(-g)) * u;
    }
}
dispatch_simd!(silu_mul_chunk, silu_mul_generic, (gate: &[f32], up: &[f32], out: &mut [f32]));

/// `silu(gate) · up` for contiguous f32 tensors of equal shape.
pub struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu-mul: shapes differ {:?} vs {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; gate.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| silu_mul_chunk(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Asks Linux to back a large fresh buffer with 2 MiB pages: the logits of a batch
/// (hundreds of MB) otherwise cost ~100k page faults on first touch, a fifth of the
/// unembedding's time.
pub(crate) fn advise_huge_pages(buf: &mut Vec<f32>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = buf.capacity() * std::mem::size_of::<f32>();
        if bytes < 16 * HUGE {
            return;
        }
        let start = buf.as_mut_ptr() as usize;
        let aligned = start.div_ceil(HUGE) * HUGE;
        let end = (start + bytes) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: the range lies inside this Vec's own allocation; the advice only
            // changes how untouched pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Makes glibc keep freed activation and weight buffers for reuse instead of handing
/// each back to the kernel: by default every buffer over 32 MiB is a fresh mapping, so
/// a 1B model's forward pass re-faults (and the kernel re-zeroes) gigabytes per pass —
/// measured at 15–20 % of its time. Peak memory is unchanged (freed space is reused,
/// not added to). Process-wide; call once at start-up. Returns whether glibc took it.
pub fn keep_freed_buffers_for_reuse() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LIMIT: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator thresholds; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// `x · Wᵀ (+ b)` straight into an uninitialised buffer (candle zero-fills its matmul
/// outputs first, a wasted pass over every activation). `x [n, in]`, `W [out, in]`,
/// `b [out]` (checked when it runs: a bias of another length is an error).
pub struct LinearOp {
    bias: Option<Arc<Vec<f32>>>,
    few_rows: bool,
}

impl LinearOp {
    /// The op, adding `bias` (`[out]`) to every row when given.
    pub fn new(bias: Option<Arc<Vec<f32>>>) -> Self {
        LinearOp {
            bias,
            few_rows: false,
        }
    }

    /// With `yes`, up to [`FEW_ROWS`] rows go through [`few_rows_nt`] instead of the GEMM
    /// (generation's passes, with a KV cache; other passes keep the GEMM's numbers).
    pub fn few_rows(mut self, yes: bool) -> Self {
        self.few_rows = yes;
        self
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(sx, lx)?;
        let w = contiguous_f32(sw, lw)?;
        let (n, k) = lx.shape().dims2()?;
        let (out, k2) = lw.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input width {k} but weight is [{out}, {k2}]");
        }
        if let Some(b) = &self.bias {
            if b.len() != out {
                candle_core::bail!("linear: bias of length {} for {out} outputs", b.len());
            }
        }
        if self.few_rows && n <= FEW_ROWS {
            let mut dst = match &self.bias {
                Some(b) => b.repeat(n),
                None => vec![0f32; n * out],
            };
            few_rows_nt(&mut dst, x, n, k, w, out);
            return Ok((CpuStorage::F32(dst), Shape::from((n, out))));
        }
        let mut dst: Vec<f32> = Vec::with_capacity(n * out);
        advise_huge_pages(&mut dst);
        let read_dst = match &self.bias {
            Some(b) => {
                for _ in 0..n {
                    dst.extend_from_slice(b);
                }
                true
            }
            None => false,
        };
        // SAFETY: gemm writes every element of the n×out destination (read_dst=false
        // means it never reads it), x is n×k and w is out×k row-major.
        unsafe {
            if !read_dst {
                dst.set_len(n * out);
            }
            gemm::gemm(
                n,
                out,
                k,
                dst.as_mut_ptr(),
                1,
                out as isize,
                read_dst,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        Ok((CpuStorage::F32(dst), Shape::from((n, out))))
    }
}

/// Up to this many rows, `x · Wᵀ` is computed by [`few_rows_nt`] instead of a GEMM.
/// Decoding runs one row per sequence: a GEMM packs the whole weight matrix on every
/// call, which at a handful of rows costs more than the arithmetic (a decoding step of
/// SmolLM2-135M took 0.13 s for one sequence and 0.34 s for two).
pub const FEW_ROWS: usize = 32;

/// `dst[i, j] += x[i] · w[j]` for `x [n, k]`, `w [out, k]`, `dst [n, out]`, all
/// row-major: each weight row is read once and dotted with every input row. Every
/// output is the same dot product in the same order whatever `n` is, so a sequence
/// decoded in a batch gets exactly the numbers it gets alone (on one machine: AVX-512,
/// else AVX2 + FMA, else plain arithmetic, checked at run time, each sum in its own
/// order).
pub fn few_rows_nt(dst: &mut [f32], x: &[f32], n: usize, k: usize, w: &[f32], out: usize) {
    few_rows_nt_on(Isa::detect(), dst, x, n, k, w, out)
}

/// The instruction sets [`few_rows_nt`] has a kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2Fma,
    Plain,
}

impl Isa {
    /// The widest the CPU has (checked at run time).
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
        }
        Isa::Plain
    }

    /// This one and every narrower one the CPU can run (the tests try each).
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        let all = [Isa::Avx512, Isa::Avx2Fma, Isa::Plain];
        let widest = all.iter().position(|&i| i == Isa::detect()).unwrap_or(2);
        all[widest..].to_vec()
    }
}

/// [`few_rows_nt`] on a given instruction set, which the CPU must have.
fn few_rows_nt_on(isa: Isa, dst: &mut [f32], x: &[f32], n: usize, k: usize, w: &[f32], out: usize) {
    assert!(
        dst.len() == n * out && x.len() == n * k && w.len() == out * k,
        "few_rows_nt: slice sizes"
    );
    if n == 0 || out == 0 {
        return;
    }
    const ROWS_PER_TASK: usize = 64;
    // [out, n]: each task fills whole rows; transposed into dst after
    let mut t = vec![0f32; out * n];
    t.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(c, tc)| {
            let j0 = c * ROWS_PER_TASK;
            let rows = tc.len() / n;
            if isa == Isa::Plain {
                for (r, row) in tc.chunks_mut(n).enumerate() {
                    let wj = &w[(j0 + r) * k..(j0 + r + 1) * k];
                    for (i, o) in row.iter_mut().enumerate() {
                        *o = dot(wj, &x[i * k..(i + 1) * k]);
                    }
                }
                return;
            }
            // four weight rows at a time (the last block repeats its last row)
            for r0 in (0..rows).step_by(4) {
                let pick = |r: usize| {
                    let j = j0 + (r0 + r).min(rows - 1);
                    &w[j * k..(j + 1) * k]
                };
                let four = [pick(0), pick(1), pick(2), pick(3)];
                let mut block = [0f32; 4 * FEW_ROWS];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa` is one the CPU has (detect); every slice is k long, x is n × k.
                unsafe {
                    match isa {
                        Isa::Avx512 => dots4_avx512(four, x, n, k, &mut block),
                        _ => dots4_avx2_fma(four, x, n, k, &mut block),
                    }
                }
                for r in 0..4.min(rows - r0) {
                    tc[(r0 + r) * n..(r0 + r + 1) * n].copy_from_slice(&block[r * n..(r + 1) * n]);
                }
            }
        });
    for (j, col) in t.chunks(n).enumerate() {
        for (i, v) in col.iter().enumerate() {
            dst[i * out + j] += v;
        }
    }
}

/// `out[r * n + i] = w[r] · x[i]` for four weight rows and `n ≤ FEW_ROWS` input rows,
/// [`X_BLOCK`] input rows at a time (the last few one by one): each step loads the
/// four weight slices once and meets every input slice of the block (a kernel that
/// loads both operands for every FMA is bound by loads, not arithmetic). Each output is
/// the same sequence of FMAs over 8 lanes and the same reduction in either block, so
/// its value depends on `k` only, never on `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots4_avx2_fma(w: [&[f32]; 4], x: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(x.len() >= n * k && out.len() >= 4 * n && w.iter().all(|r| r.len() == k));
    let mut i = 0;
    while i + X_BLOCK <= n {
        dots4_block::<X_BLOCK>(w, x, i, n, k, out);
        i += X_BLOCK;
    }
    while i < n {
        dots4_block::<1>(w, x, i, n, k, out);
        i += 1;
    }
}

/// Input rows per block of [`dots4_avx2_fma`]: 4 × X_BLOCK accumulators, four weight
/// registers and one input register must fit in the 16 AVX2 registers (three spill).
#[cfg(target_arch = "x86_64")]
const X_BLOCK: usize = 2;

/// Rows `i..i + Q` of [`dots4_avx2_fma`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots4_block<const Q: usize>(
    w: [&[f32]; 4],
    x: &[f32],
    i: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hsum = |v: __m256| {
        // a fixed reduction: high half onto low, then pairs, then the last two
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)))
    };
    let k8 = k / 8 * 8;
    let wp = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
    let rows: [*const f32; Q] = std::array::from_fn(|q| x[(i + q) * k..].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); Q]; 4];
    let mut c = 0;
    while c < k8 {
        // SAFETY (caller): c + 8 <= k8 <= k, every row pointer starts a k-long slice
        let wv = [
            _mm256_loadu_ps(wp[0].add(c)),
            _mm256_loadu_ps(wp[1].add(c)),
            _mm256_loadu_ps(wp[2].add(c)),
            _mm256_loadu_ps(wp[3].add(c)),
        ];
        for q in 0..Q {
            let xv = _mm256_loadu_ps(rows[q].add(c));
            for r in 0..4 {
                acc[r][q] = _mm256_fmadd_ps(wv[r], xv, acc[r][q]);
            }
        }
        c += 8;
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, &a) in row.iter().enumerate() {
            let xi = &x[(i + q) * k..(i + q + 1) * k];
            let mut sum = hsum(a);
            for (wq, xq) in w[r][k8..].iter().zip(&xi[k8..]) {
                sum = wq.mul_add(*xq, sum);
            }
            out[r * n + i + q] = sum;
        }
    }
}

/// [`dots4_avx2_fma`] with 16 lanes and 32 registers: four input rows per block (16
/// accumulators), the last few one by one. Its sums differ from the AVX2 kernel's in
/// the last bits (another order), but again depend on `k` only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots4_avx512(w: [&[f32]; 4], x: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(x.len() >= n * k && out.len() >= 4 * n && w.iter().all(|r| r.len() == k));
    let mut i = 0;
    while i + 4 <= n {
        dots4_block512::<4>(w, x, i, n, k, out);
        i += 4;
    }
    while i < n {
        dots4_block512::<1>(w, x, i, n, k, out);
        i += 1;
    }
}

/// Rows `i..i + Q` of [`dots4_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots4_block512<const Q: usize>(
    w: [&[f32]; 4],
    x: &[f32],
    i: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k16 = k / 16 * 16;
    let wp = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
    let rows: [*const f32; Q] = std::array::from_fn(|q| x[(i + q) * k..].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); Q]; 4];
    let mut c = 0;
    while c < k16 {
        // SAFETY (caller): c + 16 <= k16 <= k, every row pointer starts a k-long slice
        let wv = [
            _mm512_loadu_ps(wp[0].add(c)),
            _mm512_loadu_ps(wp[1].add(c)),
            _mm512_loadu_ps(wp[2].add(c)),
            _mm512_loadu_ps(wp[3].add(c)),
        ];
        for q in 0..Q {
            let xv = _mm512_loadu_ps(rows[q].add(c));
            for r in 0..4 {
                acc[r][q] = _mm512_fmadd_ps(wv[r], xv, acc[r][q]);
            }
        }
        c += 16;
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, &a) in row.iter().enumerate() {
            let xi = &x[(i + q) * k..(i + q + 1) * k];
            // a fixed reduction: 512 → 256 → 128 bits, then pairs, then the last two
            let h = _mm256_add_ps(
                _mm512_castps512_ps256(a),
                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)),
            );
            let v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            let mut sum = _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
            for (wq, xq) in w[r][k16..].iter().zip(&xi[k16..]) {
                sum = wq.mul_add(*xq, sum);
            }
            out[r * n + i + q] = sum;
        }
    }
}

/// A dot product for CPUs without AVX2 + FMA: 8 lanes, as the vector kernel.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `dst[:, col0..col0+out] = x · wᵀ` with `dst` row-major `[n, ldc]`, `x [n, k]`,
/// `w [out, k]`: one slice of a wide product (the unembedding by vocabulary chunks).
/// Panics if the slices do not have the sizes the dimensions say (no unchecked access).
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_into(
    dst: &mut [f32],
    ldc: usize,
    col0: usize,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    out: usize,
) {
    assert_eq!(dst.len(), n * ldc, "gemm_nt_into: destination size");
    assert!(col0 + out <= ldc, "gemm_nt_into: columns past the row");
    assert_eq!(x.len(), n * k, "gemm_nt_into: input size");
    assert_eq!(w.len(), out * k, "gemm_nt_into: weight size");
    if n == 0 || out == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access: rows of dst are ldc apart and the
    // written block [n, col0..col0+out] lies inside it; x is n×k and w is out×k row-major.
    unsafe {
        gemm::gemm(
            n,
            out,
            k,
            dst.as_mut_ptr().add(col0),
            1,
            ldc as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `silu(gate) · up` from the stacked `[rows, 2 m]` output of the fused gate/up GEMM.
pub struct SiluMulPacked;

impl CustomOp1 for SiluMulPacked {
    fn name(&self) -> &'static str {
        "silu-mul-packed"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (rows, two_m) = l.shape().dims2()?;
        let m = two_m / 2;
        let mut out = vec![0f32; rows * m];
        out.par_chunks_mut(m)
            .zip(x.par_chunks(two_m))
            .for_each(|(o, row)| {
                let (gate, up) = row.split_at(m);
                silu_mul_chunk(gate, up, o)
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, m))))
    }
}

/// Rotary tables as plain data, `[batch · seq, rot_dim]` (cos and sin, halves repeated).
#[derive(Clone)]
pub struct RopeData {
    /// `cos(p · f)`, row-major `[batch · seq, rot]`
    pub cos: Arc<Vec<f32>>,
    /// `sin(p · f)`, laid out like `cos`
    pub sin: Arc<Vec<f32>>,
    /// rotated dims per head (even; the rest pass through)
    pub rot: usize,
}

/// Splits the fused QKV GEMM output `[batch · seq, (h + 2 kvh) d_head]` into per-head
/// `[batch, h + 2 kvh, seq, d_head]` in one pass, applying HF `rotate_half` rotary to
/// the first `rot` dims of the query and key heads.
pub struct RopeSplit {
    /// sequences in the input's rows
    pub batch: usize,
    /// query heads
    pub n_heads: usize,
    /// key/value heads
    pub n_kv_heads: usize,
    /// width of one head
    pub d_head: usize,
    /// the rotary tables; `None`: no rotation (learned positions)
    pub rope: Option<RopeData>,
}

impl CustomOp1 for RopeSplit {
    fn name(&self) -> &'static str {
        "rope-split"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(st, l)?;
        let (n, width) = l.shape().dims2()?;
        let (b, dh) = (self.batch, self.d_head);
        let heads = self.n_heads + 2 * self.n_kv_heads;
        if width != heads * dh || n % b != 0 {
            candle_core::bail!("rope-split: input [{n}, {width}] does not hold {heads} heads of {dh} for batch {b}");
        }
        let s = n / b;
        let mut out = vec![0f32; n * width];
        out.par_chunks_mut(s * dh)
            .enumerate()
            .for_each(|(bh, dst)| {
                let (bi, hi) = (bh / heads, bh % heads);
                let rotate = hi < self.n_heads + self.n_kv_heads;
                for si in 0..s {
                    let row = bi * s + si;
                    let src = &x[row * width + hi * dh..row * width + (hi + 1) * dh];
                    let d = &mut dst[si * dh..(si + 1) * dh];
                    match (&self.rope, rotate) {
                        (Some(r), true) => {
                            let half = r.rot / 2;
                            let cos = &r.cos[row * r.rot..(row + 1) * r.rot];
                            let sin = &r.sin[row * r.rot..(row + 1) * r.rot];
                            for j in 0..half {
                                d[j] = src[j] * cos[j] - src[j + half] * sin[j];
                                d[j + half] =
                                    src[j + half] * cos[j + half] + src[j] * sin[j + half];
                            }
                            d[r.rot..].copy_from_slice(&src[r.rot..]);
                        }
                        _ => d.copy_from_slice(src),
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, heads, s, dh))))
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("kernel input must be contiguous"),
    }
}

/// Additive attention mask `[batch, 1, q, k]` kept as plain data for the kernel.
#[derive(Clone)]
pub struct MaskData {
    /// 0 where a query may attend, `-inf` where not; row-major `[batch, q, k]`
    pub data: Arc<Vec<f32>>,
    /// query positions (`q`)
    pub queries: usize,
    /// key positions (`k`: cached plus new)
    pub keys: usize,
}

/// Causal attention in one pass per (batch, query head, block of query rows):
/// scores for the keys the block can see, scale, soft-cap, mask, softmax, times V.
/// Inputs `q [b, h, s, dh]`, `k`/`v [b, kvh, t, dh]`, each with its last two axes
/// contiguous (they may be views into one packed tensor); output `z [b, h, s, dh]`.
pub struct FusedAttention {
    /// the additive mask, `[batch, 1, s, t]`
    pub mask: MaskData,
    /// factor on `q · k` (`ModelConfig::attn_scale`)
    pub scale: f32,
    /// soft-cap of the scaled scores, `cap · tanh(x / cap)`, before the mask
    pub softcap: Option<f32>,
    /// number of cached positions before the first query
    pub past: usize,
}

/// `dst [m, n] = lhs [m, k] · rhs` on the calling thread (the attention kernel already
/// runs one task per head and row block). `lhs` and `dst` are row-major; `rhs` element
/// `(i, j)` sits at `i · rhs_strides.0 + j · rhs_strides.1`.
fn matmul_single(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    let (rs, cs) = rhs_strides;
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k,
        "matmul_single: buffers too small"
    );
    assert!(
        k == 0 || n == 0 || rhs.len() > (k - 1) * rs + (n - 1) * cs,
        "matmul_single: rhs too small"
    );
    // SAFETY: the asserts above bound every element gemm reads or writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            cs as isize,
            rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A `[b, heads, rows, cols]` tensor whose last two axes are contiguous.
struct HeadsView<'a> {
    data: &'a [f32],
    start: usize,
    stride_b: usize,
    stride_h: usize,
}

impl<'a> HeadsView<'a> {
    fn head(&self, b: usize, h: usize, len: usize) -> &'a [f32] {
        let o = self.start + b * self.stride_b + h * self.stride_h;
        &self.data[o..o + len]
    }
}

fn heads_view<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<HeadsView<'a>> {
    let st = l.stride();
    let dims = l.dims();
    // a one-row axis (one new token, with a KV cache) may have any stride
    if dims.len() != 4 || st[3] != 1 || (dims[2] > 1 && st[2] != dims[3]) {
        candle_core::bail!(
            "fused attention: inputs need contiguous [seq, d_head] per head, got strides {st:?}"
        );
    }
    Ok(HeadsView {
        data: s.as_slice::<f32>()?,
        start: l.start_offset(),
        stride_b: st[0],
        stride_h: st[1],
    })
}

#[inline(always)]
fn softmax_rows_generic(
    scores: &mut [f32],
    mask: &[f32],
    cols: usize,
    mask_stride: usize,
    scale: f32,
    softcap: Option<f32>,
) {
    const L: usize = 8;
    for (r, row) in scores.chunks_mut(cols).enumerate() {
        let m = &mask[r * mask_stride..r * mask_stride + cols];
        match softcap {
            Some(c) => row
                .iter_mut()
                .zip(m)
                .for_each(|(x, &mk)| *x = c * (*x * scale / c).tanh() + mk),
            None => row
                .iter_mut()
                .zip(m)
                .for_each(|(x, &mk)| *x = x.mul_add(scale, mk)),
        }
        // Lane-wise max and sum: float reductions only vectorise when written this way.
        let mut lanes = [f32::NEG_INFINITY; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for i in 0..L {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        for v in lanes {
            max = if v > max { v } else { max };
        }
        let mut sums = [0f32; L];
        let mut chunks = row.chunks_exact_mut(L);
        for c in &mut chunks {
            for i in 0..L {
                let e = fast_exp(c[i] - max);
                c[i] = if c[i] == f32::NEG_INFINITY { 0.0 } else { e };
                sums[i] += c[i];
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            let e = fast_exp(*x - max);
            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}
dispatch_simd!(softmax_rows, softmax_rows_generic, (scores: &mut [f32], mask: &[f32], cols: usize, mask_stride: usize, scale: f32, softcap: Option<f32>));

const ROW_BLOCK: usize = 64;

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }
    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            heads_view(sq, lq)?,
            heads_view(sk, lk)?,
            heads_view(sv, lv)?,
        );
        let (b, h, s, dh) = lq.shape().dims4()?;
        let (_, kvh, t, _) = lk.shape().dims4()?;
        if self.mask.queries != s || self.mask.keys != t {
            candle_core::bail!(
                "fused attention: mask is [{}, {}], scores are [{s}, {t}]",
                self.mask.queries,
                self.mask.keys
            );
        }
        let g = h / kvh;
        let mut out = vec![0f32; b * h * s * dh];
        let mask = &self.mask.data;
        // One task per (batch, head, block of query rows); each writes only its own rows.
        out.par_chunks_mut(s * dh)
            .enumerate()
            .for_each(|(bh, head_out)| {
                let (bi, hi) = (bh / h, bh % h);
                let kp = k.head(bi, hi / g, t * dh);
                let vp = v.head(bi, hi / g, t * dh);
                let qh = q.head(bi, hi, s * dh);
                head_out
                    .par_chunks_mut(ROW_BLOCK * dh)
                    .enumerate()
                    .for_each_init(Vec::new, |scores: &mut Vec<f32>, (blk, z)| {
                        let r0 = blk * ROW_BLOCK;
                        let rows = z.len() / dh;
                        // causal: rows r0..r0+rows see keys before past + r0 + rows only
                        let cols = (self.past + r0 + rows).min(t);
                        scores.clear();
                        scores.resize(rows * cols, 0.0);
                        let qp = &qh[r0 * dh..(r0 + rows) * dh];
                        // scores = q · kᵀ (k row-major [cols, dh] read transposed)
                        matmul_single(scores, rows, cols, dh, qp, kp, (1, dh));
                        let m = &mask[(bi * s + r0) * t..(bi * s + r0 + rows) * t];
                        softmax_rows(scores, m, cols, t, self.scale, self.softcap);
                        // z = pattern · v
                        matmul_single(z, rows, dh, cols, scores, vp, (dh, 1));
                    });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, s, dh))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((fast_exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(fast_exp(-1000.0) < 1e-37);
        assert!(fast_exp(88.0).is_finite() && fast_exp(f32::NAN).is_nan());
    }

    /// A cheap deterministic pseudo-random fill in [-1, 1).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn few_rows_product_is_right_and_the_same_whatever_the_batch() {
        // widths with and without an 8-lane tail; outputs not a multiple of 4 or 64
        for (isa, (k, out)) in Isa::available()
            .into_iter()
            .flat_map(|isa| [(37usize, 70usize), (64, 131), (576, 9)].map(|ko| (isa, ko)))
        {
            let w = fill(out * k, 1);
            let x = fill(FEW_ROWS * k, 2);
            let alone: Vec<Vec<f32>> = (0..FEW_ROWS)
                .map(|i| {
                    let mut d = vec![0f32; out];
                    few_rows_nt_on(isa, &mut d, &x[i * k..(i + 1) * k], 1, k, &w, out);
                    d
                })
                .collect();
            for n in 1..=FEW_ROWS {
                let mut d = vec![0.5f32; n * out]; // accumulates onto what is there
                few_rows_nt_on(isa, &mut d, &x[..n * k], n, k, &w, out);
                for i in 0..n {
                    for j in 0..out {
                        let exact: f64 = (0..k)
                            .map(|c| w[j * k + c] as f64 * x[i * k + c] as f64)
                            .sum::<f64>()
                            + 0.5;
                        let got = d[i * out + j];
                        assert!(
                            (got as f64 - exact).abs() < 1e-4,
                            "{isa:?} k {k} n {n} [{i},{j}]"
                        );
                        // bitwise: the same row gets the same numbers in any batch
                        assert_eq!(got, alone[i][j] + 0.5, "{isa:?} k {k} n {n} [{i},{j}]");
                    }
                }
            }
        }
    }
}
