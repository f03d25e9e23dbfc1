//! Scoring an explanation on held-out contexts, as EleutherAI's delphi defines it:
//! **detection** shows the scorer unmarked contexts — activating ones drawn from several
//! activation quantiles and non-activating ones — and asks which activate the feature;
//! **fuzzing** shows activating contexts with tokens marked, half at the tokens that
//! activate and half at as many random other tokens, and asks which markings are right.
//! Each score is the balanced accuracy of the scorer's answers (the mean of its true
//! positive and true negative rates), so 0.5 is chance whatever the class sizes.

use crate::client::{Chat, Reply};
use crate::context::Context;
use crate::prompts::{detection_messages, fuzzing_messages, parse_answers};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// Which of the two tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    /// does this context activate the feature?
    Detection,
    /// are these marked tokens the activating ones?
    Fuzzing,
}

/// One excerpt shown to the scorer and the right answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// the excerpt as the scorer sees it
    pub text: String,
    /// the answer a perfect scorer gives
    pub truth: bool,
    /// the activation quantile it was drawn from (activating contexts)
    pub quantile: Option<usize>,
}

/// Detection's excerpts: every context of `by_quantile` (activating, `by_quantile[q]`
/// drawn from quantile `q`) and of `non_activating`, unmarked, shuffled by `seed`.
pub fn detection_items(
    by_quantile: &[Vec<Context>],
    non_activating: &[Context],
    seed: u64,
) -> Vec<Item> {
    let mut items: Vec<Item> = by_quantile
        .iter()
        .enumerate()
        .flat_map(|(q, cs)| {
            cs.iter().map(move |c| Item {
                text: c.text(),
                truth: true,
                quantile: Some(q),
            })
        })
        .chain(non_activating.iter().map(|c| Item {
            text: c.text(),
            truth: false,
            quantile: None,
        }))
        .collect();
    items.shuffle(&mut StdRng::seed_from_u64(seed));
    items
}

/// The share of a context's largest activation above which a token counts as activating
/// when fuzzing marks it (so a context from a low quantile is marked at its own peak,
/// not left out).
pub const FUZZ_MARK_FRACTION: f32 = 0.3;

/// Fuzzing's excerpts from activating `contexts`: alternately marked at the tokens above
/// `fraction` × the context's largest activation (right) and at as many tokens chosen at
/// random among the others (wrong), shuffled by `seed`. A context whose every token, or
/// none, is above its threshold cannot be marked wrongly and is left out.
pub fn fuzzing_items(contexts: &[Context], fraction: f32, seed: u64) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut items = Vec::new();
    let marks = |c: &Context| c.marks(fraction);
    let usable = contexts.iter().filter(|c| {
        let k = marks(c).iter().filter(|&&a| a).count();
        k > 0 && k < c.tokens.len()
    });
    for (i, c) in usable.enumerate() {
        let right = marks(c);
        let item = if i % 2 == 0 {
            Item {
                text: c.marked(&right),
                truth: true,
                quantile: None,
            }
        } else {
            let k = right.iter().filter(|&&a| a).count();
            let mut others: Vec<usize> = (0..right.len()).filter(|&j| !right[j]).collect();
            others.shuffle(&mut rng);
            let mut wrong = vec![false; right.len()];
            for &j in others.iter().take(k) {
                wrong[j] = true;
            }
            Item {
                text: c.marked(&wrong),
                truth: false,
                quantile: None,
            }
        };
        items.push(item);
    }
    items.shuffle(&mut rng);
    items
}

/// The mean of the true positive rate and the true negative rate of `said` against
/// `truth`; `None` when either class is absent (the rate is undefined).
pub fn balanced_accuracy(truth: &[bool], said: &[bool]) -> Option<f64> {
    let (mut tp, mut p, mut tn, mut n) = (0usize, 0usize, 0usize, 0usize);
    for (&t, &s) in truth.iter().zip(said) {
        if t {
            p += 1;
            tp += usize::from(s);
        } else {
            n += 1;
            tn += usize::from(!s);
        }
    }
    if p == 0 || n == 0 {
        return None;
    }
    Some((tp as f64 / p as f64 + tn as f64 / n as f64) / 2.0)
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// detection or fuzzing
    pub test: Test,
    /// over the answered excerpts; `None` when a class had no answer
    pub balanced_accuracy: Option<f64>,
    /// excerpts whose right answer is yes
    pub positives: usize,
    /// excerpts whose right answer is no
    pub negatives: usize,
    /// excerpts the scorer answered in a readable form
    pub answered: usize,
    /// batches whose reply could not be read, twice (their excerpts are not scored)
    pub failed_batches: usize,
    /// prompt tokens the scorer's endpoint counted
    pub prompt_tokens: u64,
    /// completion tokens the scorer's endpoint counted
    pub completion_tokens: u64,
}

/// Asks `judge` about `items`, `batch` excerpts per request, and scores its answers. A
/// reply that cannot be read is asked once more, then its batch is counted as failed;
/// with fewer than half the excerpts answered there is no score. An endpoint that cannot
/// be reached (after its own retries) is an error.
pub fn score(
    judge: &dyn Chat,
    test: Test,
    explanation: &str,
    items: &[Item],
    batch: usize,
) -> Result<Score> {
    let mut s = Score {
        test,
        balanced_accuracy: None,
        positives: items.iter().filter(|i| i.truth).count(),
        negatives: items.iter().filter(|i| !i.truth).count(),
        answered: 0,
        failed_batches: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let (mut truth, mut said) = (Vec::new(), Vec::new());
    for chunk in items.chunks(batch.max(1)) {
        let texts: Vec<String> = chunk.iter().map(|i| i.text.clone()).collect();
        let messages = match test {
            Test::Detection => detection_messages(explanation, &texts),
            Test::Fuzzing => fuzzing_messages(explanation, &texts),
        };
        let mut answers = None;
        for _ in 0..2 {
            let Reply {
                text,
                prompt_tokens,
                completion_tokens,
            } = judge.chat(&messages, 16 + 4 * chunk.len())?;
            s.prompt_tokens += prompt_tokens;
            s.completion_tokens += completion_tokens;
            if let Ok(a) = parse_answers(&text, chunk.len()) {
                answers = Some(a);
                break;
            }
        }
        match answers {
            Some(a) => {
                truth.extend(chunk.iter().map(|i| i.truth));
                said.extend(a);
            }
            None => s.failed_batches += 1,
        }
    }
    s.answered = said.len();
    // a score from a few readable answers would say more about which excerpts the judge
    // could read than about the explanation: at least half must be answered
    if 2 * s.answered >= items.len() {
        s.balanced_accuracy = balanced_accuracy(&truth, &said);
    }
    Ok(s)
}
