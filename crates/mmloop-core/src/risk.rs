//! The risk flag: the loop's word for "look at this answer". The engine's rules raise it,
//! the store keeps it with the candidate, the review queue orders by it and the UI marks
//! its span; one type for all of them.

use serde::{Deserialize, Serialize};

/// A risk flag on a model answer: the rule that raised it (`hedge`, `refusal`, `empty`,
/// ...), why in words, and where in the answer — characters `[start, end)` — when the rule
/// knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFlag {
    pub flag: String,
    /// Empty for flags stored without a reason (older or imported data).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<[usize; 2]>,
}

#[cfg(test)]
mod tests {
    use super::RiskFlag;

    #[test]
    fn flags_serialize_without_empty_parts_and_round_trip() {
        let hedge = RiskFlag { flag: "hedge".into(), why: "says maybe".into(), span: Some([4, 9]) };
        let json = serde_json::to_string(&hedge).unwrap();
        assert_eq!(json, r#"{"flag":"hedge","why":"says maybe","span":[4,9]}"#);
        assert_eq!(serde_json::from_str::<RiskFlag>(&json).unwrap(), hedge);
        let bare = RiskFlag { flag: "short".into(), why: String::new(), span: None };
        assert_eq!(serde_json::to_string(&bare).unwrap(), r#"{"flag":"short"}"#);
        assert_eq!(serde_json::from_str::<RiskFlag>(r#"{"flag":"short"}"#).unwrap(), bare);
    }
}
