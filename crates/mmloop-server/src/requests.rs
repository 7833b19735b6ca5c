//! What the API accepts, as its own types: the shapes browsers and scripts send, checked by
//! serde (unknown fields refused where a typo would silently change the meaning), then turned
//! into the store's domain values. The store's types carry no wire format of their own.

use mmloop_core::Answer;
use mmloop_store::review::{Decision, DecisionAction, QueueFilter, Role, UserUpdate};
use serde::Deserialize;

/// `POST /api/items/{id}/decision`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionIn {
    pub action: DecisionAction,
    /// The label id the reviewer saw (`null`: no label).
    #[serde(default)]
    pub base: Option<i64>,
    /// The answer typed (edit).
    #[serde(default)]
    pub answer: Option<Answer>,
    /// The candidate accepted or rejected.
    #[serde(default)]
    pub candidate_id: Option<i64>,
    /// Time from showing the item to deciding (Label Studio's `lead_time`).
    #[serde(default)]
    pub lead_time_ms: Option<i64>,
}

impl From<DecisionIn> for Decision {
    fn from(d: DecisionIn) -> Self {
        Decision {
            action: d.action,
            base: d.base,
            answer: d.answer,
            candidate_id: d.candidate_id,
            lead_time_ms: d.lead_time_ms,
        }
    }
}

/// The queue filters of `POST /api/items/next` and `GET /api/items`, from the query string.
/// Empty values count as "any".
#[derive(Clone, Debug, Default, Deserialize)]
pub struct QueueQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub flag: Option<String>,
    #[serde(default)]
    pub min_conf: Option<f64>,
    #[serde(default)]
    pub max_conf: Option<f64>,
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
}

impl From<QueueQuery> for QueueFilter {
    fn from(q: QueueQuery) -> Self {
        QueueFilter {
            status: q.status,
            flag: q.flag,
            min_conf: q.min_conf,
            max_conf: q.max_conf,
            split: q.split,
            tag: q.tag,
            model: q.model,
            task: q.task,
        }
    }
}

/// `PATCH /api/users/{name}`: what to change; absent fields stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdateIn {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub password: Option<String>,
}

impl From<UserUpdateIn> for UserUpdate {
    fn from(u: UserUpdateIn) -> Self {
        UserUpdate { role: u.role, disabled: u.disabled, password: u.password }
    }
}
