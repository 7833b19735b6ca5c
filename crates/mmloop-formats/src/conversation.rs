//! Conversations ⇄ records, shared by the chat formats (ms-swift, LLaVA, ShareGPT).
//!
//! A conversation with several answered turns becomes one record per turn; each record
//! keeps the messages before it as context. Writing joins consecutive records of one
//! conversation back into a single conversation, with each turn's current answer.

use mmloop_core::{Answer, ImageSource, Location, Message, Record, Task};
use serde_json::{Map, Value};

use crate::error::RecordError;
use crate::image_ref;
use crate::json::{Fields, kind};

pub(crate) const IMAGE_TAG: &str = "<image>";

pub(crate) fn count_tags(s: &str) -> usize {
    s.matches(IMAGE_TAG).count()
}

/// What a reader found in one conversational row.
pub(crate) struct Conversation {
    pub loc: Location,
    pub id: Option<String>,
    pub task: Task,
    pub messages: Vec<Message>,
    pub images: Vec<ImageSource>,
    pub meta: Map<String, Value>,
    pub split: Option<String>,
}

impl Conversation {
    /// One record per answered user turn (plus one for a trailing unanswered question).
    ///
    /// Images bind to `<image>` tags in order; when there are fewer tags than images the
    /// missing ones count as placed at the start of the first non-system message, as
    /// ms-swift does, so they belong to the first turn.
    pub(crate) fn into_records(self) -> Result<Vec<Record>, RecordError> {
        let Conversation { loc, id, task, messages, images, meta, split } = self;
        if messages.is_empty() {
            return Err(RecordError::new(loc, "the conversation has no messages").id(id));
        }
        let tags: usize = messages.iter().map(|m| count_tags(&m.content)).sum();
        let implicit = images.len().saturating_sub(tags);
        let first_non_system = messages.iter().position(|m| m.role != "system");
        // images_through[i] = how many images are bound by messages[..=i].
        let mut images_through = Vec::with_capacity(messages.len());
        let mut bound = 0usize;
        for (i, m) in messages.iter().enumerate() {
            if Some(i) == first_non_system {
                bound += implicit;
            }
            bound += count_tags(&m.content);
            images_through.push(bound.min(images.len()));
        }

        // (index of question message or None, index of answer message or None)
        let mut turns: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match m.role.as_str() {
                "assistant" => {
                    let q = (i > 0 && messages[i - 1].role == "user").then(|| i - 1);
                    turns.push((q, Some(i)));
                }
                "user" if i + 1 == messages.len() => turns.push((Some(i), None)),
                _ => {}
            }
        }
        if turns.is_empty() {
            return Err(RecordError::new(loc, "the conversation has no user or assistant message")
                .id(id)
                .hint("roles must be user/assistant (ms-swift) or human/gpt (LLaVA, ShareGPT)"));
        }
        let conversation = (turns.len() > 1).then(|| id.clone().unwrap_or_else(|| loc.to_string()));
        let n = turns.len();
        let mut records = Vec::with_capacity(n);
        for (t, (q, a)) in turns.into_iter().enumerate() {
            let start = q.or(a).expect("a turn has a question or an answer");
            let last = a.unwrap_or(start);
            let mut r = Record::new(task, q.map(|q| messages[q].content.clone()).unwrap_or_default(), loc.clone());
            r.id = match (&id, n) {
                (Some(id), 1) => Some(id.clone()),
                (Some(id), _) => Some(format!("{id}#{t}")),
                (None, _) => None,
            };
            r.context = messages[..start].to_vec();
            r.conversation = conversation.clone();
            r.turn = t as u32;
            r.images = images[..images_through[last]].to_vec();
            r.answer = a.map(|a| Answer::text(messages[a].content.clone()));
            r.split = split.clone();
            if t + 1 == n {
                r.meta = meta.clone();
            }
            records.push(r);
        }
        // Extra fields describe the whole row; they ride on its last record only so a
        // writer emits them once.
        Ok(records)
    }
}

/// A conversation rebuilt from consecutive records of one group, for writing.
pub(crate) struct Joined<'r> {
    pub last: &'r Record,
    pub messages: Vec<Message>,
}

impl<'r> Joined<'r> {
    pub(crate) fn id(&self) -> Option<String> {
        let id = self.last.id.as_deref()?;
        Some(match (self.last.conversation.is_some(), id.rsplit_once('#')) {
            (true, Some((base, turn))) if turn.parse::<u32>().is_ok() => base.to_string(),
            _ => id.to_string(),
        })
    }

    pub(crate) fn images(&self) -> &'r [ImageSource] {
        &self.last.images
    }

    /// Adds what every chat format writes after its messages: the images as a list under
    /// `images_key` (when given), the conversation's id, and the fields kept from reading.
    pub(crate) fn finish_row(&self, row: &mut Map<String, Value>, images_key: Option<&str>) {
        if let Some(key) = images_key
            && !self.images().is_empty()
        {
            row.insert(key.into(), self.images().iter().map(crate::image_ref::to_json).collect());
        }
        if let Some(id) = self.id() {
            row.insert("id".into(), crate::json::id_string(&id));
        }
        for (k, v) in &self.last.meta {
            row.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Joins a group of records (turns of one conversation, in order) into messages.
pub(crate) fn join(group: &[Record]) -> Joined<'_> {
    let last = group.last().expect("a group is never empty");
    let mut messages = last.context.clone();
    for r in &group[..group.len() - 1] {
        // The answer of an earlier turn sits right after its question, or right after the
        // context when the turn had no question (an answer after a tool turn).
        let asked = messages.get(r.context.len()).is_some_and(|m| m.role == "user");
        let at = r.context.len() + usize::from(asked);
        if let (Some(best), Some(m)) = (r.answer.as_ref().and_then(Answer::best), messages.get_mut(at))
            && m.role == "assistant"
        {
            m.content = best.to_string();
        }
    }
    if !last.question.is_empty() || last.answer.is_none() {
        messages.push(Message::new("user", last.question.clone()));
    }
    if let Some(best) = last.answer.as_ref().and_then(Answer::best) {
        messages.push(Message::new("assistant", best));
    }
    Joined { last, messages }
}

/// Splits a record stream into groups of consecutive records of one conversation.
pub(crate) struct Groups<I: Iterator<Item = Record>> {
    inner: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Record>> Groups<I> {
    pub(crate) fn new(inner: I) -> Self {
        Groups { inner: inner.peekable() }
    }
}

impl<I: Iterator<Item = Record>> Iterator for Groups<I> {
    type Item = Vec<Record>;
    fn next(&mut self) -> Option<Vec<Record>> {
        let first = self.inner.next()?;
        let mut group = vec![first];
        if let Some(key) = group[0].conversation.clone() {
            while let Some(next) = self.inner.next_if(|r| r.conversation.as_ref() == Some(&key)) {
                group.push(next);
            }
        }
        Some(group)
    }
}

/// Prepends missing `<image>` tags to the first user message, for formats whose loaders
/// need one tag per image (LLaVA, LLaMA-Factory).
pub(crate) fn ensure_tags(messages: &mut [Message], images: usize, sep: &str) {
    let tags: usize = messages.iter().map(|m| count_tags(&m.content)).sum();
    if tags >= images {
        return;
    }
    if let Some(m) = messages.iter_mut().find(|m| m.role == "user") {
        let mut prefix = String::new();
        for _ in tags..images {
            prefix.push_str(IMAGE_TAG);
        }
        prefix.push_str(sep);
        m.content.insert_str(0, &prefix);
    }
}

/// `images` (list, or a bare string) or its alias `image`.
pub(crate) fn take_images(f: &mut Fields) -> Result<Vec<ImageSource>, RecordError> {
    let key = if f.has("images") { "images" } else { "image" };
    let v = match f.take(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(single) => vec![single],
    };
    v.iter()
        .enumerate()
        .map(|(i, x)| {
            image_ref::parse(x).map_err(|e| {
                f.err(format!("`{key}[{i}]`: {e}")).hint(
                    "an image is a path, an http(s) URL, a data: URI, or an object {\"bytes\": ..., \"path\": ...}",
                )
            })
        })
        .collect()
}

/// The messages under `key` in any spelling ms-swift accepts: `{role, content}` or
/// `{from, value}` objects (roles human/gpt/bot mapped to user/assistant), or ShareGPT
/// pairs `{human, assistant}` (`docs/source_en/Customization/Custom-dataset.md`).
pub(crate) fn parse_messages(f: &mut Fields, key: &str) -> Result<Vec<Message>, RecordError> {
    let list = match f.take(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(Value::String(_)) => {
            return Err(f.err(format!("field `{key}` is a string, not a list")).hint(
                "write the messages as a JSON list of {\"role\": ..., \"content\": ...} objects (ms-swift's Python-literal strings are not read)",
            ));
        }
        Some(other) => return Err(f.err(format!("field `{key}` must be a list, found {}", kind(&other)))),
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let Value::Object(mut m) = m else {
            return Err(f.err(format!("`{key}[{i}]` must be an object, found {}", kind(&m))).hint(MESSAGE_HINT));
        };
        let standard = ["role", "from", "content", "value"].iter().any(|k| m.contains_key(*k));
        if !standard && m.keys().any(|k| PAIR_USER.contains(&k.as_str())) {
            let mut side = |names: &[&str], what: &str| -> Result<Option<String>, RecordError> {
                match names.iter().find_map(|n| m.shift_remove(*n)) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(other) => {
                        Err(f.err(format!("`{key}[{i}]`: the {what} turn must be a string, found {}", kind(&other))))
                    }
                }
            };
            let user = side(PAIR_USER, "human")?;
            let assistant = side(PAIR_ASSISTANT, "assistant")?;
            messages.extend(user.map(|c| Message::new("user", c)));
            messages.extend(assistant.map(|c| Message::new("assistant", c)));
            continue;
        }
        let (role_key, content_key) =
            if m.contains_key("role") || m.contains_key("content") { ("role", "content") } else { ("from", "value") };
        let role = match m.shift_remove(role_key) {
            Some(Value::String(r)) => r,
            _ => return Err(f.err(format!("`{key}[{i}]` needs a string `{role_key}`")).hint(MESSAGE_HINT)),
        };
        let content = match m.shift_remove(content_key) {
            Some(Value::String(c)) => c,
            Some(other) => {
                return Err(f
                    .err(format!("`{key}[{i}].{content_key}` must be a string, found {}", kind(&other)))
                    .hint("multimodal content lists are not supported: write the text with <image> tags and list images in `images`"));
            }
            None => return Err(f.err(format!("`{key}[{i}]` has no `{content_key}`")).hint(MESSAGE_HINT)),
        };
        messages.push(Message::new(from_llava_role(&role), content));
    }
    Ok(messages)
}

const MESSAGE_HINT: &str =
    "a message looks like {\"role\": \"user\", \"content\": \"...\"} (or {\"from\": \"human\", \"value\": \"...\"})";
const PAIR_USER: &[&str] = &["human", "user"];
const PAIR_ASSISTANT: &[&str] = &["assistant", "gpt", "bot"];

pub(crate) fn from_llava_role(role: &str) -> String {
    match role {
        "human" => "user".into(),
        "gpt" | "bot" => "assistant".into(),
        other => other.into(),
    }
}

pub(crate) fn to_llava_role(role: &str) -> &str {
    match role {
        "user" => "human",
        "assistant" => "gpt",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn conv(messages: &[(&str, &str)], images: usize) -> Conversation {
        let file = Arc::new(PathBuf::from("d.jsonl"));
        Conversation {
            loc: Location::line(&file, 3),
            id: Some("c1".into()),
            task: Task::Vqa,
            messages: messages.iter().map(|(r, c)| Message::new(*r, *c)).collect(),
            images: (0..images).map(|i| ImageSource::Path(format!("{i}.jpg"))).collect(),
            meta: Map::new(),
            split: None,
        }
    }

    #[test]
    fn multi_turn_becomes_one_record_per_turn_with_context() {
        let c = conv(
            &[
                ("system", "Be brief."),
                ("user", "<image>What is on the plate?"),
                ("assistant", "Pizza."),
                ("user", "Is it <image> sliced?"),
                ("assistant", "Yes."),
            ],
            2,
        );
        let rs = c.into_records().unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].context.len(), 1);
        assert_eq!(rs[0].images.len(), 1);
        assert_eq!(rs[1].question, "Is it <image> sliced?");
        assert_eq!(rs[1].context.len(), 3);
        assert_eq!(rs[1].images.len(), 2);
        assert_eq!(rs[1].id.as_deref(), Some("c1#1"));
        assert_eq!(rs[0].conversation, rs[1].conversation);

        let joined = join(&rs);
        assert_eq!(joined.id().as_deref(), Some("c1"));
        assert_eq!(joined.messages.len(), 5);
        assert_eq!(joined.messages[2].content, "Pizza.");
    }

    #[test]
    fn untagged_images_belong_to_the_first_turn() {
        let rs = conv(&[("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")], 2)
            .into_records()
            .unwrap();
        assert_eq!(rs[0].images.len(), 2);
    }

    #[test]
    fn edited_earlier_answers_replace_the_context() {
        let mut rs = conv(&[("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")], 0)
            .into_records()
            .unwrap();
        rs[0].answer = Some(Answer::text("B1"));
        let j = join(&rs);
        assert_eq!(j.messages[1].content, "B1");
        assert_eq!(j.messages[3].content, "A2");
    }

    #[test]
    fn edited_answers_after_tool_turns_replace_the_right_message() {
        let mut rs = conv(
            &[
                ("user", "Q1"),
                ("tool_call", "f()"),
                ("tool_response", "42"),
                ("assistant", "A1"),
                ("user", "Q2"),
                ("assistant", "A2"),
            ],
            0,
        )
        .into_records()
        .unwrap();
        assert_eq!(rs[0].question, "");
        rs[0].answer = Some(Answer::text("B1"));
        let j = join(&rs);
        let contents: Vec<&str> = j.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["Q1", "f()", "42", "B1", "Q2", "A2"]);
    }

    #[test]
    fn trailing_question_is_an_unanswered_record() {
        let rs = conv(&[("user", "<image>Q")], 1).into_records().unwrap();
        assert_eq!(rs.len(), 1);
        assert!(rs[0].answer.is_none());
        assert_eq!(join(&rs).messages.len(), 1);
    }

    #[test]
    fn missing_tags_are_prepended() {
        let mut m = vec![Message::new("user", "Q")];
        ensure_tags(&mut m, 2, "\n");
        assert_eq!(m[0].content, "<image><image>\nQ");
    }
}
