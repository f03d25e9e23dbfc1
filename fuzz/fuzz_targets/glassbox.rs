//! One libFuzzer binary for every target: `GLASSBOX_FUZZ_TARGET` names the one to run
//! (see `glassbox_fuzz::TARGETS`). A panic, an abort, a timeout or one allocation over
//! `glassbox_fuzz::alloc::limit_for(input)` is a crash; libFuzzer saves the input.
#![no_main]

use glassbox_fuzz::alloc::{self, CountingAlloc};
use glassbox_fuzz::Target;
use std::sync::OnceLock;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn target() -> &'static Target {
    static T: OnceLock<&'static Target> = OnceLock::new();
    T.get_or_init(|| {
        let name = std::env::var("GLASSBOX_FUZZ_TARGET").unwrap_or_default();
        glassbox_fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = glassbox_fuzz::TARGETS.iter().map(|t| t.name).collect();
            eprintln!(
                "set GLASSBOX_FUZZ_TARGET to one of: {} (got `{name}`)",
                names.join(", ")
            );
            std::process::exit(2)
        })
    })
}

libfuzzer_sys::fuzz_target!(
    init: {
        // One-time set-up (the API's run directory, thread pools) happens here, outside
        // the allocation check.
        let t = target();
        let seeds = glassbox_fuzz::seeds::seeds(t.name);
        for s in &seeds {
            (t.run)(s);
        }
        // scripts/fuzz: the seeds and regression inputs join the working corpus
        if let Some(dir) = std::env::var_os("GLASSBOX_FUZZ_SEEDS_DIR") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for (i, s) in seeds.iter().enumerate() {
                let _ = std::fs::write(dir.join(format!("seed-{i}")), s);
            }
            for (name, r) in glassbox_fuzz::regressions(t.name) {
                let _ = std::fs::write(dir.join(format!("regression-{name}")), r);
            }
        }
    },
    |data: &[u8]| {
        let t = target();
        alloc::arm(alloc::limit_for(data.len()), t.name, 0);
        (t.run)(data);
        alloc::disarm();
    }
);
