//! The row `mmloop infer` writes in file mode, one JSON line per question: an ms-swift dataset
//! row (the conversation with the model's answer appended, the images) plus the result fields
//! `swift infer` writes (`response`, `labels`, `logprobs`) and mmloop's own (`confidence`,
//! `confidence_detail`, `flags`, `finish_reason`; `error` when the question failed). `mmloop
//! import` reads it as ms-swift JSONL, `mmloop eval` as predictions, and a rerun of the same
//! command reads it to skip the questions it already answers.

use mmloop_core::{ConfidenceDetail, Message, RiskFlag};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InferRow {
    /// The model's answer; `null` when the question failed.
    pub response: Option<String>,
    /// The reference answer, when the input had one.
    pub labels: Option<String>,
    /// OpenAI's `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    pub logprobs: Option<Value>,
    /// System prompt, earlier turns, the question (with its `<image>` tags) and the answer.
    pub messages: Vec<Message>,
    pub images: Vec<String>,
    /// The dataset's id, or the image path.
    pub id: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_detail: Option<ConfidenceDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<RiskFlag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Why there is no answer (an unreadable image, a refused request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl InferRow {
    /// Whether the row holds an answer (a failed question is answered again only when asked).
    pub fn answered(&self) -> bool {
        self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_the_swift_infer_field_order_and_leave_out_what_a_failure_lacks() {
        let row = InferRow {
            response: Some("red".into()),
            labels: None,
            logprobs: None,
            messages: vec![Message::new("user", "<image>What colour?"), Message::new("assistant", "red")],
            images: vec!["a.png".into()],
            id: "q1".into(),
            model: "m".into(),
            confidence: Some(0.9),
            flags: Some(vec![]),
            finish_reason: Some("stop".into()),
            ..Default::default()
        };
        let text = serde_json::to_string(&row).unwrap();
        assert!(
            text.starts_with(r#"{"response":"red","labels":null,"logprobs":null,"messages":[{"role":"user""#),
            "{text}"
        );
        assert!(text.ends_with(r#""confidence":0.9,"flags":[],"finish_reason":"stop"}"#), "{text}");
        assert_eq!(serde_json::from_str::<InferRow>(&text).unwrap(), row);
        let failed = InferRow { error: Some("timeout".into()), ..Default::default() };
        let text = serde_json::to_string(&failed).unwrap();
        assert!(text.ends_with(r#""model":"","error":"timeout"}"#) && !failed.answered(), "{text}");
    }
}
