//! The checkpoint's chat template, rendered the way transformers renders it: Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, `tojson`, `raise_exception`,
//! `strftime_now`, Python string methods, and the tokenizer's special tokens as variables.
//!
//! The template comes from the first of `chat_template.jinja`, `chat_template.json`,
//! `tokenizer_config.json` (a string, or the `default` of a list) and
//! `processor_config.json`, as transformers looks for it.

use std::path::Path;

use minijinja::{Environment, ErrorKind, Value as J};
use serde_json::Value;

use super::{ChatMessage, read_json_opt};
use crate::{Error, Result};

pub struct ChatTemplate {
    source: String,
    /// Where it came from, for messages.
    origin: String,
    env: Environment<'static>,
    specials: serde_json::Map<String, Value>,
}

fn template_of(v: &Value) -> Option<String> {
    match &v["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str().map(String::from)),
        _ => None,
    }
}

/// A special token as tokenizer_config.json spells it: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn load(dir: &Path) -> Result<ChatTemplate> {
        let tok_cfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let jinja = dir.join("chat_template.jinja");
        let (source, origin) = if jinja.is_file() {
            (std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?, jinja)
        } else if let Some(t) = template_of(&read_json_opt(&dir.join("chat_template.json"))?) {
            (t, dir.join("chat_template.json"))
        } else if let Some(t) = template_of(&tok_cfg) {
            (t, dir.join("tokenizer_config.json"))
        } else if let Some(t) = template_of(&read_json_opt(&dir.join("processor_config.json"))?) {
            (t, dir.join("processor_config.json"))
        } else {
            return Err(Error::Load(format!(
                "{}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)\n  hint: an instruction-tuned checkpoint ships one; base models cannot be prompted as a chat",
                dir.display()
            )));
        };
        let mut specials = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(t) = token_text(&tok_cfg[key]) {
                specials.insert(key.into(), Value::String(t));
            }
        }
        ChatTemplate::new(source, origin.display().to_string(), specials)
    }

    pub fn new(source: String, origin: String, specials: serde_json::Map<String, Value>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::Load(format!("{origin}: {e}")))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<J, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            // Only the date matters to the templates that ask (system prompts with "today").
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let days = now.as_secs() / 86_400;
            let (y, m, d) = civil_from_days(days as i64);
            fmt.replace("%Y", &format!("{y:04}"))
                .replace("%m", &format!("{m:02}"))
                .replace("%d", &format!("{d:02}"))
                .replace("%B", MONTHS[(m - 1) as usize])
                .replace("%b", &MONTHS[(m - 1) as usize][..3])
        });
        env.add_filter("tojson", |v: J| -> std::result::Result<String, minijinja::Error> {
            // Python's json.dumps(ensure_ascii=False) spacing: ", " and ": ".
            let v: Value = serde_json::to_value(&v)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(python_json(&v))
        });
        env.add_template_owned("chat", source.clone())
            .map_err(|e| Error::Load(format!("{origin}: the chat template does not parse: {e:#}")))?;
        Ok(ChatTemplate { source, origin, env, specials })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("added in new");
        let mut ctx = self.specials.clone();
        ctx.insert("messages".into(), Value::Array(messages.iter().map(ChatMessage::to_json).collect()));
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        tmpl.render(J::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| Error::Input(format!("{}: the chat template failed on these messages: {e:#}", self.origin)))
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// JSON as Python's `json.dumps(v, ensure_ascii=False)` writes it.
fn python_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(python_json).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Part;

    #[test]
    fn renders_with_trimmed_blocks_and_python_methods() {
        let src = "{% for m in messages %}\n  {{ m.role | capitalize }}: {{ m.content[0].text.strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let t = ChatTemplate::new(src.into(), "test".into(), Default::default()).unwrap();
        let out = t.render(&[ChatMessage::text("user", "  hi  ")], true).unwrap();
        // What Python jinja2 gives with trim_blocks and lstrip_blocks (checked with jinja2 3.1).
        assert_eq!(out, "  User: hi\nA:");
    }

    #[test]
    fn tojson_spaces_like_python_and_errors_name_the_template() {
        let t = ChatTemplate::new("{{ {'a': [1, 'é']} | tojson }}".into(), "t".into(), Default::default()).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), r#"{"a": [1, "é"]}"#);
        let t =
            ChatTemplate::new("{{ raise_exception('no system role') }}".into(), "tok.json".into(), Default::default())
                .unwrap();
        let e = t.render(&[ChatMessage { role: "system".into(), parts: vec![Part::Image] }], false).unwrap_err();
        assert!(e.to_string().contains("tok.json") && e.to_string().contains("no system role"), "{e}");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }
}
