//! Deterministic byte mutations for the CI smoke: the same inputs on every run and
//! machine, so a failure there reproduces with the printed target and index.

/// xorshift64*: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed` (any value: it is mixed and
    /// made odd, so the state is never the all-zero one xorshift cannot leave).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values that sit on the boundaries parsers get wrong: zero, one, all ones, the signed
/// extremes, and powers of two.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Tokens that matter inside the text formats (JSON, TOML, CSV, HTTP bodies).
const TOKENS: [&[u8]; 18] = [
    b"0",
    b"-1",
    b"1e308",
    b"18446744073709551615",
    b"9999999999",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"\"",
    b",",
    b":",
    b"\n",
    b"[[[[[[[[",
    b"NaN",
    b"\\u0000",
    b"\xff\xfe",
];

/// One to four mutations of `input` (never longer than `max_len`): bit flips, byte and
/// little-endian integer overwrites with boundary values, deletions, duplications,
/// insertions of format tokens, and splices from `other`.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            2 if !v.is_empty() => {
                // a boundary integer over 1, 2, 4 or 8 bytes at a random offset
                let width = 1 << rng.below(4);
                let i = rng.below(v.len());
                let val = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                for (k, b) in val.iter().take(width).enumerate() {
                    if let Some(slot) = v.get_mut(i + k) {
                        *slot = *b;
                    }
                }
            }
            3 if !v.is_empty() => {
                let start = rng.below(v.len());
                let n = 1 + rng.below((v.len() - start).min(64));
                v.drain(start..start + n);
            }
            4 if !v.is_empty() => {
                let start = rng.below(v.len());
                let n = 1 + rng.below((v.len() - start).min(64));
                let chunk: Vec<u8> = v[start..start + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(v.len() + 1);
                v.splice(at..at, t.iter().copied());
            }
            6 if !other.is_empty() => {
                let start = rng.below(other.len());
                let n = 1 + rng.below((other.len() - start).min(256));
                let at = rng.below(v.len() + 1);
                let end = (at + n).min(v.len());
                v.splice(at..end, other[start..start + n].iter().copied());
            }
            7 if !v.is_empty() => {
                v.truncate(rng.below(v.len()));
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v.truncate(max_len);
    v
}
