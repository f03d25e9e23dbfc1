//! What each feature means: a feature's contexts from the feature store shown to an
//! explainer model with the activating tokens marked ([`material`], [`prompts`]), and the
//! explanation scored on held-out contexts the explainer never saw, by the two tests
//! EleutherAI's delphi defines ([`score`]): **detection** (does this context activate
//! the feature? against verified non-activating contexts, [`negatives`]) and
//! **fuzzing** (are the marked tokens the activating ones?), each as a balanced
//! accuracy; [`explain::explain_feature`] does one feature start to end. The explainer
//! and the scorer are any OpenAI-compatible chat endpoint ([`client`]): `glassbox
//! serve-model`, vLLM, llama.cpp's server, Ollama, hosted APIs. `glassbox explain`
//! stores the results in `features.sqlite`
//! ([`glassbox_features::explanations`]).
//!
//! ```
//! use glassbox_explain::context::Context;
//! use glassbox_explain::score::balanced_accuracy;
//! let ctx = Context::new(vec!["The".into(), " cat".into(), " sat".into()], vec![0.0, 2.5, 0.1]);
//! assert_eq!(ctx.marked(&ctx.active(1.0)), "The<< cat>> sat");
//! // half of the positives found, every negative rejected: (0.5 + 1.0) / 2
//! let truth = [true, true, false, false];
//! let said = [true, false, false, false];
//! assert_eq!(balanced_accuracy(&truth, &said), Some(0.75));
//! ```

#![deny(missing_docs)]

pub mod client;
pub mod context;
pub mod explain;
pub mod material;
pub mod negatives;
pub mod prompts;
pub mod score;
