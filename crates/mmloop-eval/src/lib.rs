//! The I/O side of evaluation: reading predictions and references in the common formats,
//! matching them by id, scoring them with `mmloop-metrics`, running the external reference
//! tools that have no exact native port (the METEOR 1.5 jar), and writing `metrics.json`
//! and a self-contained `report.html` with plots.
//!
//! The arithmetic stays in `mmloop-metrics` (pure functions); this crate moves bytes and
//! never substitutes a different formula when a tool is missing: METEOR is then reported
//! as unavailable with a message that says how to get the tool. It never touches the
//! project store either: a project version arrives as records, through
//! [`References::from_records`].

pub mod error;
pub mod evaluate;
mod input;
pub mod meteor_jar;
mod mme;
mod plots;
pub mod predictions;
pub mod references;
pub mod report;

pub use error::{EvalError, Place};
pub use evaluate::{EvalOptions, Evaluation, MeteorJar, Metric, evaluate};
pub use predictions::{Prediction, Predictions, read_predictions};
pub use references::{EvalTask, RefOptions, Reference, References, read_references};
