//! Explanations of features in the store: what `glassbox explain` writes into
//! `features.sqlite` next to the dashboards' tables, one row per feature, explainer
//! model and prompt version, and a full-text index (SQLite FTS5) over the explanations
//! that the feature list searches.
//!
//! The store itself is written whole by `features build`; explanations are added to it
//! in place, one transaction per feature, so a run that stops keeps every feature it
//! finished and the next run skips them. Rebuilding the store starts a new file, without
//! explanations.

use crate::{bad, sql_err, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The tables `glassbox explain` adds (created when it first writes).
pub const EXPLANATIONS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS explanations (
    id                INTEGER PRIMARY KEY,
    feature           INTEGER NOT NULL,
    explainer_model   TEXT    NOT NULL,
    prompt_version    TEXT    NOT NULL,  -- glassbox_explain::prompts::PROMPT_VERSION
    scorer_model      TEXT    NOT NULL,
    explanation       TEXT,              -- NULL: no readable explanation (see failure)
    failure           TEXT,              -- why there is no explanation or no score
    detection         REAL,              -- balanced accuracy, NULL when not scored
    fuzzing           REAL,              -- balanced accuracy, NULL when not scored
    details           TEXT    NOT NULL,  -- JSON: seed, contexts shown and held out, both scores in full
    prompt_tokens     INTEGER NOT NULL,  -- explainer and scorer together, as the endpoints counted
    completion_tokens INTEGER NOT NULL,
    seconds           REAL    NOT NULL,
    created           INTEGER NOT NULL,  -- unix seconds
    UNIQUE (feature, explainer_model, prompt_version)
);
CREATE INDEX IF NOT EXISTS explanations_by_feature ON explanations (feature);
-- rowid = explanations.id; only rows with an explanation are indexed
CREATE VIRTUAL TABLE IF NOT EXISTS explanation_text USING fts5(explanation, tokenize = 'porter unicode61');
";

/// One feature's explanation and its scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// the feature's id
    pub feature: u32,
    /// the model the explainer endpoint ran
    pub explainer_model: String,
    /// the version of the prompts that asked
    pub prompt_version: String,
    /// the model the scorer endpoint ran
    pub scorer_model: String,
    /// the explanation; `None` when the explainer never gave a readable one
    pub explanation: Option<String>,
    /// why there is no explanation, or why a score is missing
    pub failure: Option<String>,
    /// detection's balanced accuracy (0.5 is chance)
    pub detection: Option<f64>,
    /// fuzzing's balanced accuracy (0.5 is chance)
    pub fuzzing: Option<f64>,
    /// the seed, the contexts shown and held out, and both scores in full
    pub details: serde_json::Value,
    /// prompt tokens of every request for this feature
    pub prompt_tokens: u64,
    /// completion tokens of every request for this feature
    pub completion_tokens: u64,
    /// wall time for this feature
    pub seconds: f64,
    /// when it was written, unix seconds
    pub created: i64,
}

const COLUMNS: &str = "feature, explainer_model, prompt_version, scorer_model, explanation, \
    failure, detection, fuzzing, details, prompt_tokens, completion_tokens, seconds, created";

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<(Explanation, String)> {
    let details: String = r.get(8)?;
    Ok((
        Explanation {
            feature: r.get::<_, i64>(0)? as u32,
            explainer_model: r.get(1)?,
            prompt_version: r.get(2)?,
            scorer_model: r.get(3)?,
            explanation: r.get(4)?,
            failure: r.get(5)?,
            detection: r.get(6)?,
            fuzzing: r.get(7)?,
            details: serde_json::Value::Null,
            prompt_tokens: r.get::<_, i64>(9)? as u64,
            completion_tokens: r.get::<_, i64>(10)? as u64,
            seconds: r.get(11)?,
            created: r.get(12)?,
        },
        details,
    ))
}

/// Reads explanations with `sql` (selecting [`COLUMNS`]) and `args`.
pub(crate) fn query(
    conn: &Connection,
    path: &Path,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Explanation>> {
    let mut stmt = conn
        .prepare(&sql.replace("{COLUMNS}", COLUMNS))
        .map_err(sql_err(path))?;
    let rows: Vec<(Explanation, String)> = stmt
        .query_map(args, read_row)
        .map_err(sql_err(path))?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql_err(path))?;
    rows.into_iter()
        .map(|(mut e, details)| {
            e.details = serde_json::from_str(&details).map_err(|err| {
                bad(format!(
                    "the explanation of feature {} has unreadable details: {err}",
                    e.feature
                ))
            })?;
            Ok(e)
        })
        .collect()
}

/// The SQL that orders a feature's explanations best first: readable ones, then by
/// detection, then newest.
pub(crate) const BEST_FIRST: &str =
    "(explanation IS NULL), detection IS NULL, detection DESC, created DESC, id DESC";

/// Each feature's first (best) explanation, from a list ordered by feature with each
/// feature's best first ([`crate::store::FeatureStore::all_explanations`]).
pub fn best_per_feature(all: &[Explanation]) -> Vec<&Explanation> {
    let mut best: Vec<&Explanation> = Vec::new();
    for e in all {
        if best.last().is_none_or(|b| b.feature != e.feature) {
            best.push(e);
        }
    }
    best
}

/// An FTS5 query matching `text` as a phrase, stemmed (`purr` finds "purring") or with
/// its last word as a prefix (`mon` finds "months": what a person typing into a search
/// box expects; prefixes are not stemmed, hence both); `None` when it has no word.
pub(crate) fn fts_phrase(text: &str) -> Option<String> {
    if !text.chars().any(char::is_alphanumeric) {
        return None;
    }
    let phrase = format!("\"{}\"", text.replace('"', "\"\""));
    Some(format!("{phrase} OR {phrase} *"))
}

/// Writes explanations into a feature store.
pub struct ExplanationWriter {
    conn: Connection,
    path: PathBuf,
}

impl ExplanationWriter {
    /// Opens `features.sqlite` (or `DIR/features.sqlite`) for writing explanations,
    /// creating their tables on first use. Errors when the file is not a feature store.
    pub fn open(path: &Path) -> Result<Self> {
        // the reader's checks and messages (missing file, not SQLite, not a store)
        let path = crate::store::FeatureStore::open(path)?.path;
        let conn = Connection::open(&path).map_err(sql_err(&path))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql_err(&path))?;
        conn.execute_batch(EXPLANATIONS_SCHEMA)
            .map_err(sql_err(&path))?;
        Ok(ExplanationWriter { conn, path })
    }

    /// The store being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Features that already have a readable explanation from `explainer_model` with
    /// `prompt_version` (what a resumed run skips).
    pub fn explained(&self, explainer_model: &str, prompt_version: &str) -> Result<HashSet<u32>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT feature FROM explanations WHERE explainer_model = ?1 \
                 AND prompt_version = ?2 AND explanation IS NOT NULL",
            )
            .map_err(sql_err(&self.path))?;
        let ids = stmt
            .query_map(params![explainer_model, prompt_version], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql_err(&self.path))?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .map_err(sql_err(&self.path))?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }

    /// Writes (or replaces) `e` and its full-text entry in one transaction.
    pub fn put(&mut self, e: &Explanation) -> Result<()> {
        let path = self.path.clone();
        let err = sql_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        let old: Option<i64> = tx
            .query_row(
                "SELECT id FROM explanations WHERE feature = ?1 AND explainer_model = ?2 \
                 AND prompt_version = ?3",
                params![e.feature as i64, e.explainer_model, e.prompt_version],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        if let Some(id) = old {
            tx.execute("DELETE FROM explanation_text WHERE rowid = ?1", [id])
                .map_err(&err)?;
            tx.execute("DELETE FROM explanations WHERE id = ?1", [id])
                .map_err(&err)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO explanations ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                e.feature as i64,
                e.explainer_model,
                e.prompt_version,
                e.scorer_model,
                e.explanation,
                e.failure,
                e.detection,
                e.fuzzing,
                e.details.to_string(),
                e.prompt_tokens.min(i64::MAX as u64) as i64,
                e.completion_tokens.min(i64::MAX as u64) as i64,
                e.seconds,
                e.created,
            ],
        )
        .map_err(&err)?;
        if let Some(text) = &e.explanation {
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO explanation_text (rowid, explanation) VALUES (?1, ?2)",
                params![id, text],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phrases_are_quoted_and_empty_ones_refused() {
        assert_eq!(
            super::fts_phrase("say \"cat").as_deref(),
            Some("\"say \"\"cat\" OR \"say \"\"cat\" *")
        );
        assert_eq!(super::fts_phrase(" %* "), None);
    }
}
