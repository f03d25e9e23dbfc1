//! Named points where a test may SIGKILL the process, to prove that resuming after a hard
//! kill — mid-harvest, mid-training, mid-checkpoint-write — reaches the same dictionary.
//! `GLASSBOX_KILL_AT=NAME` kills at the first pass through point NAME, `NAME:N` at the
//! N-th. Without the variable a point costs one cached comparison.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

fn target() -> Option<&'static (String, usize)> {
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var("GLASSBOX_KILL_AT").ok()?;
            let (name, n) = match v.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            Some((name, n))
        })
        .as_ref()
}

/// Passes point `name`; the process dies here (SIGKILL, no cleanup) if a test asked.
pub fn kill_point(name: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Some((want, n)) = target() else { return };
    if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("GLASSBOX_KILL_AT={want}:{n}: killing the process");
        #[cfg(unix)]
        // SAFETY: sends a signal to this very process; nothing is read or written.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
