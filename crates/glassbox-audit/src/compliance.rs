//! Which report fields speak to which documentation requirement. These are facts about
//! what the fields contain, written so a reader can find them; they are not a claim
//! that a report satisfies any law or framework.

use serde::Serialize;

/// One requirement and the fields that document it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// the framework and the provision
    pub source: String,
    /// what the provision asks for, in short
    pub asks_for: String,
    /// the report's fields (JSON paths) that hold relevant facts
    pub fields: Vec<String>,
}

fn row(source: &str, asks_for: &str, fields: &[&str]) -> Row {
    Row {
        source: source.into(),
        asks_for: asks_for.into(),
        fields: fields.iter().map(|f| f.to_string()).collect(),
    }
}

/// The table.
pub fn rows() -> Vec<Row> {
    vec![
        row(
            "EU AI Act, Article 55(1)(a)",
            "model evaluation of general-purpose models with systemic risk, with documented adversarial testing",
            &["coverage", "dark_matter", "lie_detector", "thresholds"],
        ),
        row(
            "EU AI Act, Annex XI, Section 1 (2)",
            "technical documentation: the model's design, the training and evaluation process, the computational resources used and the energy consumption",
            &["provenance.config", "provenance.commands", "cost.stages", "cost.total_watt_hours"],
        ),
        row(
            "EU AI Act, Annex XI, Section 2 (1)",
            "a detailed description of evaluation strategies and their results, with criteria and metrics",
            &["coverage", "explanations", "thresholds", "missing"],
        ),
        row(
            "EU AI Act, Annex XI, Section 2 (2)",
            "measures for internal or external adversarial testing and model adaptations",
            &["lie_detector", "provenance.commands"],
        ),
        row(
            "NIST AI RMF 1.0, MEASURE 2.9",
            "the model is explained, validated and documented, and its output is interpreted within its context",
            &["explanations", "coverage", "dark_matter", "provenance"],
        ),
        row(
            "NIST AI RMF 1.0, MEASURE 2.12",
            "environmental impact and sustainability of training and deployment are assessed and documented",
            &["cost.stages", "cost.total_watt_hours", "cost.projection"],
        ),
    ]
}
