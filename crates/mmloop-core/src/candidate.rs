//! A model's candidate answer: the text, how sure the model was and why, and the risk flags
//! its rules raised. The engine makes it, the store keeps it, the review page and the
//! router read it; one type for all of them.

use serde::{Deserialize, Serialize};

use crate::RiskFlag;

/// A model's answer to one item.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub answer: String,
    /// In [0, 1]; `None` when the backend gave no log-probabilities.
    pub confidence: Option<f64>,
    pub detail: Option<ConfidenceDetail>,
    pub flags: Vec<RiskFlag>,
}

/// How a generation ended and what it cost, kept beside the confidence's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// OpenAI's `finish_reason`: `stop`, `length`, ...
    pub finish_reason: String,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: usize,
}

/// The numbers behind a confidence, stored with the candidate as `confidence_detail`.
/// Every field has a default so that details stored by older versions still read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfidenceDetail {
    /// Geometric-mean token probability.
    pub sequence_prob: f64,
    /// Sum of the tokens' natural-log probabilities.
    pub sum_logprob: f64,
    pub min_token_prob: f64,
    /// Which token (0-based, among the answer's tokens) was the least likely.
    pub min_token_index: usize,
    /// First content token: chosen probability minus the best alternative's (`None` without
    /// alternatives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_margin: Option<f64>,
    pub first_token_prob: f64,
    pub tokens: usize,
    /// Self-consistency: share of the extra samples that agree with the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// The extra samples' answers.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub samples: Vec<String>,
    /// Which number became the candidate's confidence.
    pub source: String,
}
