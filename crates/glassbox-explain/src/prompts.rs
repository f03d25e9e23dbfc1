//! What the explainer and the scorer are asked, and how their answers are read. The
//! wording is versioned ([`PROMPT_VERSION`], stored with every explanation) so scores
//! from different prompts are never mixed up.

use crate::client::Message;
use anyhow::{bail, Context as _, Result};

/// The version of every prompt below.
pub const PROMPT_VERSION: &str = "glassbox-explain-1";

/// The longest explanation kept, in characters (a longer one is a malformed reply).
pub const MAX_EXPLANATION_CHARS: usize = 400;

/// The explainer's conversation: `contexts` with the activating tokens already marked,
/// and the tokens the feature most promotes and suppresses through the unembedding.
pub fn explainer_messages(
    contexts: &[String],
    promoted: &[String],
    suppressed: &[String],
) -> Vec<Message> {
    let mut user = String::from(
        "Below are text excerpts where one neuron of a language model fires; the tokens \
         where it fires most are marked <<like this>>.\n\n",
    );
    for (i, c) in contexts.iter().enumerate() {
        user.push_str(&format!("Excerpt {}: {}\n", i + 1, c.replace('\n', " ")));
    }
    if !promoted.is_empty() {
        user.push_str(&format!(
            "\nTokens it makes more likely next: {}\n",
            quoted(promoted)
        ));
    }
    if !suppressed.is_empty() {
        user.push_str(&format!(
            "Tokens it makes less likely next: {}\n",
            quoted(suppressed)
        ));
    }
    user.push_str(
        "\nIn one short sentence, what does the neuron respond to? Answer with one line that \
         starts with \"Explanation:\".",
    );
    vec![
        Message::new(
            "system",
            "You explain what neurons of language models detect, briefly and concretely.",
        ),
        Message::new("user", user),
    ]
}

fn quoted(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The explanation in an explainer's reply: the text after the last `Explanation:`, or
/// the whole reply when it is one short line. Empty or overlong replies are errors (a
/// malformed completion is never stored as an explanation).
pub fn parse_explanation(reply: &str) -> Result<String> {
    let text = match reply.rfind("Explanation:") {
        Some(i) => &reply[i + "Explanation:".len()..],
        None => reply,
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim_matches('"');
    // a word of two letters at least: "." or "1." is not an explanation
    let has_word = line
        .split(|c: char| !c.is_alphabetic())
        .any(|w| w.chars().count() >= 2);
    if !has_word {
        bail!("the explainer's reply holds no explanation: {reply:?}");
    }
    if line.chars().count() > MAX_EXPLANATION_CHARS {
        bail!(
            "the explainer's explanation is over {MAX_EXPLANATION_CHARS} characters; \
             the reply looks malformed: {:?}…",
            line.chars().take(80).collect::<String>()
        );
    }
    Ok(line.to_string())
}

/// The detection scorer's conversation: which of `texts` (unmarked) activate a feature
/// that `explanation` describes?
pub fn detection_messages(explanation: &str, texts: &[String]) -> Vec<Message> {
    judge_messages(
        explanation,
        texts,
        "For each excerpt, answer 1 if the neuron fires anywhere in it and 0 if not.",
    )
}

/// The fuzzing scorer's conversation: in which of `texts` are the marked tokens the
/// ones a feature described by `explanation` fires on?
pub fn fuzzing_messages(explanation: &str, texts: &[String]) -> Vec<Message> {
    judge_messages(
        explanation,
        texts,
        "Some tokens of each excerpt are marked <<like this>>. For each excerpt, answer 1 if \
         the marked tokens are ones the neuron fires on and 0 if they were marked at random.",
    )
}

fn judge_messages(explanation: &str, texts: &[String], task: &str) -> Vec<Message> {
    let mut user = format!("A neuron of a language model is explained as: {explanation}\n\n");
    for (i, t) in texts.iter().enumerate() {
        user.push_str(&format!("Excerpt {}: {}\n", i + 1, t.replace('\n', " ")));
    }
    if texts.len() == 1 {
        // one excerpt: a bare answer, which small models give more reliably than JSON
        user.push_str(&format!("\n{task} Reply with only 1 or 0."));
    } else {
        user.push_str(&format!(
            "\n{task} Reply with only a JSON list of {} numbers, one per excerpt in order, e.g. [1, 0].",
            texts.len()
        ));
    }
    vec![
        Message::new(
            "system",
            "You judge explanations of neurons. You answer in JSON.",
        ),
        Message::new("user", user),
    ]
}

/// A judge's answers: the first JSON list in `reply`, of exactly `n` entries, each 0 or
/// 1 (or false/true). For one excerpt, a reply without a list may be a bare answer: its
/// first word `1`/`yes`/`true` or `0`/`no`/`false`.
pub fn parse_answers(reply: &str, n: usize) -> Result<Vec<bool>> {
    if n == 1 && !reply.contains('[') {
        let first = reply
            .split(|c: char| !c.is_alphanumeric())
            .find(|w| !w.is_empty())
            .unwrap_or("")
            .to_ascii_lowercase();
        return match first.as_str() {
            "1" | "yes" | "true" => Ok(vec![true]),
            "0" | "no" | "false" => Ok(vec![false]),
            _ => bail!("the judge's reply is not 1 or 0: {reply:?}"),
        };
    }
    let start = reply
        .find('[')
        .with_context(|| format!("the judge's reply holds no JSON list: {reply:?}"))?;
    let end = reply[start..]
        .find(']')
        .with_context(|| format!("the judge's list is not closed: {reply:?}"))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&reply[start..=start + end])
        .with_context(|| format!("the judge's list is not JSON: {reply:?}"))?;
    if list.len() != n {
        bail!(
            "the judge answered {} entries for {n} excerpts: {reply:?}",
            list.len()
        );
    }
    list.iter()
        .map(|v| match v {
            serde_json::Value::Bool(b) => Ok(*b),
            serde_json::Value::Number(x) if x.as_f64() == Some(1.0) => Ok(true),
            serde_json::Value::Number(x) if x.as_f64() == Some(0.0) => Ok(false),
            other => bail!("the judge answered {other} where 0 or 1 belongs: {reply:?}"),
        })
        .collect()
}
