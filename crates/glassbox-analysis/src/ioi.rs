//! A built-in indirect-object-identification (IOI) dataset: "When Mary and John went
//! to the store, John gave a drink to" → " Mary". The corrupted prompt replaces the
//! second mention of the subject with a third name, so the correct answer is no longer
//! determined; clean and corrupted prompts have the same token length.

use crate::metric::single_token;
use crate::patching::{column_labels, prompt_ids, PatchProblem, PatchResult, PatchSite};
use crate::{bad, Result};
use glassbox_model::TextTokenizer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// The names a prompt draws from (`{A}`, `{B}` and the corrupting third name); only those
/// that are one token with a leading space for the model's tokenizer are used.
pub const NAMES: &[&str] = &[
    "Mary", "John", "Tom", "James", "Sarah", "Michael", "Emma", "David", "Anna", "Paul", "Lisa",
    "Mark", "Laura", "Peter", "Kate", "Daniel", "Alice", "Robert", "Susan", "George", "Rachel",
    "Henry", "Linda", "Frank",
];
/// The places (`{P}`), kept under the same one-token rule.
pub const PLACES: &[&str] = &[
    "store",
    "park",
    "school",
    "office",
    "hospital",
    "station",
    "restaurant",
    "garden",
    "library",
    "beach",
];
/// The objects given (`{O}`), kept under the same one-token rule.
pub const OBJECTS: &[&str] = &[
    "drink", "book", "ring", "ball", "bag", "letter", "key", "gift", "phone", "flower",
];

/// `(order, template)`: `{A}` is the indirect object (the answer), `{B}` the subject
/// mentioned twice, `{P}` a place, `{O}` an object. `ABBA` and `BABA` say in which order
/// the two names come first.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "ABBA",
        "When {A} and {B} went to the {P}, {B} gave a {O} to",
    ),
    (
        "BABA",
        "When {B} and {A} went to the {P}, {B} gave a {O} to",
    ),
    (
        "ABBA",
        "Then, {A} and {B} were working at the {P}. {B} decided to give a {O} to",
    ),
    (
        "BABA",
        "Then, {B} and {A} were working at the {P}. {B} decided to give a {O} to",
    ),
    (
        "ABBA",
        "After {A} and {B} arrived at the {P}, {B} handed a {O} to",
    ),
    (
        "BABA",
        "After {B} and {A} arrived at the {P}, {B} handed a {O} to",
    ),
];

/// One generated clean/corrupted prompt pair.
#[derive(Debug, Clone, Serialize)]
pub struct IoiPrompt {
    /// the index into [`TEMPLATES`]
    pub template: usize,
    /// `ABBA` or `BABA`
    pub order: &'static str,
    /// the prompt, e.g. "When Mary and John went to the store, John gave a drink to"
    pub clean: String,
    /// the same with the second mention of the subject replaced by a third name
    pub corrupt: String,
    /// `" " + indirect object`
    pub answer: String,
    /// `" " + subject`
    pub wrong: String,
}

fn fill(t: &str, a: &str, b: &str, p: &str, o: &str) -> String {
    t.replace("{A}", a)
        .replace("{B}", b)
        .replace("{P}", p)
        .replace("{O}", o)
}

/// Replaces the last `{B}` of the template (the second mention of the subject).
fn fill_corrupt(t: &str, a: &str, b: &str, c: &str, p: &str, o: &str) -> String {
    let i = t.rfind("{B}").expect("templates mention B twice");
    let t = format!("{}{}{}", &t[..i], c, &t[i + 3..]);
    fill(&t, a, b, p, o)
}

/// `n` prompt pairs drawn with `seed`, cycling through [`TEMPLATES`] in order and using
/// only names, places and objects that are one token (with a leading space) for `tok`,
/// so every clean/corrupted pair has equal length. Fails when fewer than three names
/// (or no place or object) survive that rule.
pub fn generate(tok: &TextTokenizer, n: usize, seed: u64) -> Result<Vec<IoiPrompt>> {
    let one_token = |w: &str| {
        tok.encode(&format!(" {w}"))
            .map(|ids| ids.len() == 1)
            .unwrap_or(false)
    };
    let names: Vec<&str> = NAMES.iter().copied().filter(|w| one_token(w)).collect();
    let places: Vec<&str> = PLACES.iter().copied().filter(|w| one_token(w)).collect();
    let objects: Vec<&str> = OBJECTS.iter().copied().filter(|w| one_token(w)).collect();
    if names.len() < 3 || places.is_empty() || objects.is_empty() {
        return Err(bad(
            "this tokenizer splits too many IOI names into several tokens",
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let template = i % TEMPLATES.len();
        let (order, t) = TEMPLATES[template];
        let picked: Vec<&str> = names.choose_multiple(&mut rng, 3).copied().collect();
        let (a, b, c) = (picked[0], picked[1], picked[2]);
        let p = *places.choose(&mut rng).expect("non-empty");
        let o = *objects.choose(&mut rng).expect("non-empty");
        out.push(IoiPrompt {
            template,
            order,
            clean: fill(t, a, b, p, o),
            corrupt: fill_corrupt(t, a, b, c, p, o),
            answer: format!(" {a}"),
            wrong: format!(" {b}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn corruption_replaces_the_second_subject_mention() {
        let (_, t) = TEMPLATES[0];
        assert_eq!(
            fill(t, "Mary", "John", "store", "drink"),
            "When Mary and John went to the store, John gave a drink to"
        );
        assert_eq!(
            fill_corrupt(t, "Mary", "John", "Tom", "store", "drink"),
            "When Mary and John went to the store, Tom gave a drink to"
        );
    }
}

/// One prompt's outcome in an IOI study.
#[derive(Debug, Clone, Serialize)]
pub struct IoiRow {
    /// the prompt pair
    pub prompt: IoiPrompt,
    /// `logit[answer] − logit[wrong]` at the clean prompt's last position
    pub logit_diff_clean: f32,
    /// the same on the corrupted prompt
    pub logit_diff_corrupt: f32,
}

/// An IOI study: exact patching averaged over generated prompts. What `glassbox ioi
/// --json` writes and the Python package's `glassbox.ioi` returns.
#[derive(Debug, Clone, Serialize)]
pub struct IoiReport {
    /// what each cell patched
    pub site: PatchSite,
    /// each prompt's baselines, in order
    pub prompts: Vec<IoiRow>,
    /// the normalised patching effect, averaged over the prompts
    pub mean_grid: Vec<Vec<f32>>,
    /// `H0…` for heads, `position:token` of the first prompt otherwise
    pub column_labels: Vec<String>,
    /// prompts whose clean logit difference prefers the indirect object
    pub correct: usize,
    /// the last prompt's result with the mean grid, for a heatmap
    #[serde(skip)]
    pub mean: Option<PatchResult>,
}

/// Runs `n` IOI prompts (seeded; per-position sites use template `template` only, so
/// the positions line up) through exact patching at `site`. `on_prompt` sees each
/// prompt's result as it finishes. Needs the model's tokenizer; `n` must be at least 1
/// and `template` below `TEMPLATES.len()`.
pub fn study(
    model: &glassbox_model::Model,
    n: usize,
    seed: u64,
    site: PatchSite,
    template: usize,
    mut on_prompt: impl FnMut(&IoiPrompt, &PatchResult),
) -> Result<IoiReport> {
    if template >= TEMPLATES.len() {
        return Err(bad(format!(
            "the template must be below {}",
            TEMPLATES.len()
        )));
    }
    if n == 0 {
        return Err(bad("an IOI study needs at least one prompt"));
    }
    let tok = model.tokenizer()?;
    let per_head = site == PatchSite::AttnHead;
    let mut prompts = generate(tok, n * if per_head { 1 } else { TEMPLATES.len() }, seed)?;
    if !per_head {
        prompts.retain(|p| p.template == template);
    }
    prompts.truncate(n);
    let mut sum: Option<Vec<Vec<f32>>> = None;
    let mut rows = Vec::with_capacity(prompts.len());
    let mut last: Option<PatchResult> = None;
    for p in &prompts {
        let problem = PatchProblem {
            model: &model.transformer,
            clean: prompt_ids(model, &p.clean)?,
            corrupt: prompt_ids(model, &p.corrupt)?,
            answer: single_token(tok, &p.answer)?,
            wrong: single_token(tok, &p.wrong)?,
            context: Vec::new(),
        };
        let r = problem.exact(site)?;
        on_prompt(p, &r);
        rows.push(IoiRow {
            prompt: p.clone(),
            logit_diff_clean: r.logit_diff_clean,
            logit_diff_corrupt: r.logit_diff_corrupt,
        });
        sum = Some(match sum {
            None => r.grid.clone(),
            Some(s) => s
                .iter()
                .zip(&r.grid)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
                .collect(),
        });
        last = Some(r);
    }
    let count = rows.len().max(1) as f32;
    let mean_grid: Vec<Vec<f32>> = sum
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v / count).collect())
        .collect();
    let column_labels = match prompts.first() {
        Some(p) => column_labels(model, site, &prompt_ids(model, &p.clean)?)?,
        None => Vec::new(),
    };
    Ok(IoiReport {
        site,
        correct: rows.iter().filter(|r| r.logit_diff_clean > 0.0).count(),
        prompts: rows,
        column_labels,
        mean: last.map(|mut r| {
            r.grid = mean_grid.clone();
            r
        }),
        mean_grid,
    })
}
