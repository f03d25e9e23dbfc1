//! Activation patching on the indirect-object task with the library (what `glassbox
//! patch` does): the clean run's residual stream patched into the corrupted run, one
//! layer × position at a time, and the cells with the largest effect.
//!
//!     cargo run --release -p glassbox-analysis --example patch_ioi -- \
//!         ~/.cache/glassbox/models/SmolLM2-135M-Instruct.Q4_1.gguf

use glassbox_analysis::patching::{cells_by_effect, patch_prompts, PatchMethod, PatchSite};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        return Err("usage: patch_ioi MODEL".into());
    };
    let model = glassbox_model::load_model(path.as_ref())?;
    let report = patch_prompts(
        &model,
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Tom gave a drink to",
        " Mary",
        " John",
        PatchSite::ResidPre,
        PatchMethod::Exact,
    )?;
    let r = &report.result;
    println!(
        "logit diff \" Mary\" − \" John\": clean {:.2}, corrupted {:.2}",
        r.logit_diff_clean, r.logit_diff_corrupt
    );
    println!("patched cells with the largest effect on the answer:");
    let cells = cells_by_effect(&r.grid);
    for (layer, col, v) in cells.iter().take(8) {
        println!(
            "  layer {layer:>2}, {:<12} {v:.2}",
            report.column_labels[*col]
        );
    }
    Ok(())
}
