//! Plain values of the data model, shared by every stage of the loop.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What kind of work an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A question about the image(s), answered in a few words.
    Vqa,
    /// A description of the image(s), written from a prompt.
    Caption,
}

/// A string did not name a known value of an enum.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {expected}")]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl Task {
    pub const fn as_str(self) -> &'static str {
        match self {
            Task::Vqa => "vqa",
            Task::Caption => "caption",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vqa" => Ok(Task::Vqa),
            "caption" => Ok(Task::Caption),
            _ => Err(ParseEnumError { kind: "task", value: s.into(), expected: "vqa, caption" }),
        }
    }
}

/// Where a label stands in review.
///
/// `Imported` labels came with the dataset (human answers of VQAv2, COCO captions, ...):
/// they count as truth like reviewed ones, but no reviewer of this project saw them.
/// `AutoAccepted` labels are model answers accepted without review by `mmloop route`, under
/// a certificate bounding their error rate: trusted, but not reviewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelStatus {
    Pending,
    Imported,
    Accepted,
    Edited,
    Rejected,
    Skipped,
    #[serde(rename = "auto_accepted")]
    AutoAccepted,
}

impl LabelStatus {
    pub const ALL: [LabelStatus; 7] = [
        LabelStatus::Pending,
        LabelStatus::Imported,
        LabelStatus::Accepted,
        LabelStatus::Edited,
        LabelStatus::Rejected,
        LabelStatus::Skipped,
        LabelStatus::AutoAccepted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            LabelStatus::Pending => "pending",
            LabelStatus::Imported => "imported",
            LabelStatus::Accepted => "accepted",
            LabelStatus::Edited => "edited",
            LabelStatus::Rejected => "rejected",
            LabelStatus::Skipped => "skipped",
            LabelStatus::AutoAccepted => "auto_accepted",
        }
    }

    /// Labels whose answer is trusted: exported and trained on by default.
    pub const fn is_truth(self) -> bool {
        matches!(self, LabelStatus::Imported | LabelStatus::Accepted | LabelStatus::Edited | LabelStatus::AutoAccepted)
    }

    /// Labels a reviewer of this project decided on.
    pub const fn is_reviewed(self) -> bool {
        matches!(self, LabelStatus::Accepted | LabelStatus::Edited | LabelStatus::Rejected)
    }
}

impl fmt::Display for LabelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LabelStatus {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| ParseEnumError {
            kind: "label status",
            value: s.into(),
            expected: "pending, imported, accepted, edited, rejected, skipped, auto_accepted",
        })
    }
}

/// Where a run (`infer`, `route`, ...) stands. A run is recorded `running` when it starts
/// and ends `done`, `failed`, or `interrupted` (a signal, or the user's Ctrl-C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Done,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 4] = [RunStatus::Running, RunStatus::Done, RunStatus::Failed, RunStatus::Interrupted];

    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| ParseEnumError {
            kind: "run status",
            value: s.into(),
            expected: "running, done, failed, interrupted",
        })
    }
}

/// One message of a conversation, in the OpenAI / ms-swift spelling of roles
/// (`system`, `user`, `assistant`, ...). Roles are kept as written so nothing is lost.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// One of several human answers to a question (VQAv2 and TextVQA collect ten).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HumanAnswer {
    pub answer: String,
    /// VQAv2's `answer_confidence` (`yes` | `maybe` | `no`), when the source has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
}

/// The answer (or caption) a label holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Answer {
    /// The single answer or caption; for VQAv2 the `multiple_choice_answer`.
    pub text: Option<String>,
    /// All human answers, for datasets that collect several per question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<HumanAnswer>,
}

impl Answer {
    pub fn text(text: impl Into<String>) -> Self {
        Answer { text: Some(text.into()), all: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.all.is_empty()
    }

    /// The one answer to show or train on: the text, else the most frequent human answer
    /// (first seen wins a tie).
    pub fn best(&self) -> Option<&str> {
        if let Some(t) = &self.text {
            return Some(t);
        }
        let mut best: Option<(&str, usize)> = None;
        for a in &self.all {
            let n = self.all.iter().filter(|b| b.answer == a.answer).count();
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((&a.answer, n));
            }
        }
        best.map(|(a, _)| a)
    }
}

/// A model's answer carried by a dataset file (Label Studio `predictions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub model: String,
    pub answer: String,
    pub score: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_strings() {
        for s in LabelStatus::ALL {
            assert_eq!(s.as_str().parse::<LabelStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!("caption".parse::<Task>().unwrap(), Task::Caption);
        let err = "vq".parse::<Task>().unwrap_err().to_string();
        assert!(err.contains("vqa, caption"), "{err}");
    }

    #[test]
    fn best_answer_is_the_most_frequent() {
        let all =
            ["2", "two", "2", "3"].into_iter().map(|a| HumanAnswer { answer: a.into(), confidence: None }).collect();
        let a = Answer { text: None, all };
        assert_eq!(a.best(), Some("2"));
        assert_eq!(Answer::text("red").best(), Some("red"));
        assert_eq!(Answer::default().best(), None);
    }
}
