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

impl RiskFlag {
    /// The flags of a stored JSON list, as lenient as the data it meets: objects
    /// (`{"flag", "why", "span"}`) and bare names (`"hedge"`); anything else, a span that
    /// runs backwards included, is left out rather than failing the item.
    pub fn parse_list(text: &str) -> Vec<RiskFlag> {
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text) else {
            return Vec::new();
        };
        items
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(flag) => Some(RiskFlag { flag, why: String::new(), span: None }),
                serde_json::Value::Object(o) => {
                    let flag = o.get("flag")?.as_str()?.to_string();
                    let why = o.get("why").and_then(|w| w.as_str()).unwrap_or_default().to_string();
                    let span = o.get("span").and_then(|s| s.as_array()).and_then(|s| match s.as_slice() {
                        [a, b] => Some([a.as_u64()? as usize, b.as_u64()? as usize]).filter(|[a, b]| a <= b),
                        _ => None,
                    });
                    Some(RiskFlag { flag, why, span })
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::RiskFlag;

    #[test]
    fn stored_lists_parse_leniently_and_round_trip() {
        let f = RiskFlag::parse_list(
            r#"[{"flag":"hedge","why":"says maybe","span":[4,9]},"short",{"flag":"x","span":[5,2]},42,{"why":"no flag"}]"#,
        );
        assert_eq!(
            f,
            [
                RiskFlag { flag: "hedge".into(), why: "says maybe".into(), span: Some([4, 9]) },
                RiskFlag { flag: "short".into(), why: String::new(), span: None },
                RiskFlag { flag: "x".into(), why: String::new(), span: None },
            ]
        );
        assert!(RiskFlag::parse_list("not json").is_empty());
        let json = serde_json::to_string(&f[0]).unwrap();
        assert_eq!(json, r#"{"flag":"hedge","why":"says maybe","span":[4,9]}"#);
        assert_eq!(serde_json::from_str::<RiskFlag>(&json).unwrap(), f[0]);
        assert_eq!(serde_json::to_string(&f[1]).unwrap(), r#"{"flag":"short"}"#);
    }
}
