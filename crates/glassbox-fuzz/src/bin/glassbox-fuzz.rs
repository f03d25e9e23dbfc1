//! `glassbox-fuzz list` | `seeds DIR` | `replay TARGET FILE…`: the targets, their seed
//! corpora (one folder per target), and one input run under the allocation limit with a
//! backtrace on the first panic or oversized allocation.

use glassbox_fuzz::alloc::{self, CountingAlloc};
use std::path::Path;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in glassbox_fuzz::TARGETS {
                println!("{}\t{}", t.name, t.reads);
            }
        }
        Some("seeds") if args.len() == 2 => {
            for t in glassbox_fuzz::TARGETS {
                let dir = Path::new(&args[1]).join(t.name);
                std::fs::create_dir_all(&dir).expect("create the seed folder");
                for (i, s) in glassbox_fuzz::seeds::seeds(t.name).iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
                }
                for (name, r) in glassbox_fuzz::regressions(t.name) {
                    std::fs::write(dir.join(format!("regression-{name}")), r)
                        .expect("write a regression input");
                }
            }
        }
        Some("replay") if args.len() >= 3 => {
            let t = glassbox_fuzz::target(&args[1]).unwrap_or_else(|| {
                eprintln!("no target `{}` (see `glassbox-fuzz list`)", args[1]);
                std::process::exit(2)
            });
            if let Some(s) = glassbox_fuzz::seeds::seeds(t.name).first() {
                (t.run)(s); // one-time set-up outside the check, as the harness does
            }
            for f in &args[2..] {
                let data = std::fs::read(f).expect("read the input");
                alloc::arm(alloc::limit_for(data.len()), t.name, 0);
                let accepted = (t.run)(&data);
                let largest = alloc::disarm();
                println!(
                    "{f}: {} bytes, {}, largest allocation {largest} (limit {})",
                    data.len(),
                    if accepted { "accepted" } else { "refused" },
                    alloc::limit_for(data.len())
                );
            }
        }
        _ => {
            eprintln!("usage: glassbox-fuzz list | seeds DIR | replay TARGET FILE...");
            std::process::exit(2)
        }
    }
}
