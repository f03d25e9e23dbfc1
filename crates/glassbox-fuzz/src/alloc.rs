//! A global allocator that measures the largest single allocation made while a target
//! runs, so that a parser sizing a buffer from a length field it has not checked is
//! caught even when the machine has the memory to satisfy it.
//!
//! Install it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;` in the
//! binary (the fuzz harness, the smoke test), then wrap each input in [`arm`] /
//! [`disarm`].
//!
//! The bound, [`limit_for`], is `max(64 × input, 1 MiB)`:
//! - 64×: the largest legitimate expansion of one input byte into one buffer that the
//!   parsers here make. A JSON array of one-digit numbers (2 bytes an element) becomes a
//!   `Vec<serde_json::Value>` of 32-byte elements, which doubling growth can round up to
//!   32 bytes of capacity a byte; a quantized GGUF block dequantized to f32 grows ≤ 16×
//!   (Q2_K: 2.6 bits a weight); bf16/u8 → f32 4×. 64× leaves a factor of two over the
//!   worst of these and still flags any size read from the file and trusted (those are
//!   typically 2^20–2^64 times the input).
//! - 1 MiB: fixed-size working buffers that do not depend on the input (readers' 8 KiB
//!   buffers, Parquet's and the tokenizer's tables, tokio's and rayon's setup).
//!
//! Allocations made by C code (SQLite's page cache, libFuzzer itself) do not go through
//! the Rust allocator and are not measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The largest single allocation a target may make for an input of `len` bytes.
pub fn limit_for(len: usize) -> usize {
    len.saturating_mul(64).max(1 << 20)
}

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static CONTEXT_PTR: AtomicUsize = AtomicUsize::new(0);
static CONTEXT_LEN: AtomicUsize = AtomicUsize::new(0);
static CONTEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// Measures the largest allocation from now on (on every thread). An allocation above
/// `abort_above` prints its size and `context` and aborts the process at once: the
/// fuzzer passes its limit (a crash it records with the input that caused it); the smoke
/// test a gigabyte, to fail with a message instead of an out-of-memory kill, and checks
/// the largest allocation against the limit itself after each input.
pub fn arm(abort_above: usize, context: &'static str, index: usize) {
    LARGEST.store(0, Ordering::SeqCst);
    LIMIT.store(abort_above, Ordering::SeqCst);
    CONTEXT_PTR.store(context.as_ptr() as usize, Ordering::SeqCst);
    CONTEXT_LEN.store(context.len(), Ordering::SeqCst);
    CONTEXT_INDEX.store(index, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops measuring; returns the largest single allocation since [`arm`].
pub fn disarm() -> usize {
    ARMED.store(false, Ordering::SeqCst);
    LARGEST.load(Ordering::SeqCst)
}

/// Whether [`CountingAlloc`] is the global allocator of this process (checked by making
/// an allocation while armed).
pub fn installed() -> bool {
    arm(usize::MAX, "", 0);
    let v = std::hint::black_box(vec![0u8; 4096]);
    drop(v);
    disarm() >= 4096
}

/// The system allocator, measuring while [`arm`]ed.
pub struct CountingAlloc;

/// `v` in decimal, in `buf`, without allocating.
fn decimal(mut v: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

#[cold]
fn over_limit(size: usize) -> ! {
    // No allocation here: the parts are written one by one from static and stack bytes.
    use std::io::Write;
    let (ptr, len) = (
        CONTEXT_PTR.load(Ordering::SeqCst),
        CONTEXT_LEN.load(Ordering::SeqCst),
    );
    // SAFETY: `ptr`/`len` were stored together from a `&'static str` in `arm`.
    let context: &[u8] = if ptr == 0 {
        b""
    } else {
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
    };
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    ARMED.store(false, Ordering::SeqCst);
    let mut e = std::io::stderr().lock();
    for part in [
        b"glassbox-fuzz: one allocation of " as &[u8],
        decimal(size, &mut a),
        b" bytes is over the limit (",
        context,
        b", input ",
        decimal(CONTEXT_INDEX.load(Ordering::SeqCst), &mut b),
        b")\n",
    ] {
        let _ = e.write_all(part);
    }
    std::process::abort()
}

#[inline]
fn record(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if size > LIMIT.load(Ordering::Relaxed) {
            over_limit(size);
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; recording touches atomics only.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}
