//! Secrets kept out of what the project records: run configurations and audit events are
//! read by every reviewer and, in the audit chain, can never be edited afterwards, so an
//! API key or a `user:password@` in a URL must be removed before they are stored.
//!
//! Pure functions over strings and JSON; they never fail and never see where the value
//! goes.

use serde_json::Value;

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Flags whose value is a secret (`--api-key K`, `--api-key=K`), in every spelling the CLI
/// accepts.
const SECRET_FLAGS: &[&str] =
    &["--api-key", "--api_key", "--token", "--password", "--hf-token", "--hf_token", "--secret"];

/// JSON keys whose value is a secret, compared without case and without `-`/`_`.
const SECRET_KEYS: &[&str] = &["apikey", "token", "password", "secret", "authorization", "hftoken", "accesstoken"];

fn is_secret_key(key: &str) -> bool {
    let k: String = key.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect();
    SECRET_KEYS.contains(&k.as_str())
}

/// Removes the `user:password@` part of every URL in `text` (and nothing else).
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str(REDACTED);
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A command line with secret flag values and URL credentials removed.
pub fn command_line(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        if let Some((flag, _)) = a.split_once('=')
            && SECRET_FLAGS.contains(&flag)
        {
            out.push(format!("{flag}={REDACTED}"));
            continue;
        }
        if SECRET_FLAGS.contains(&a.as_str()) {
            hide_next = true;
        }
        out.push(url(a));
    }
    out
}

/// A JSON value with every secret removed: values under secret-named keys, URL credentials
/// in strings, and secret flags in arrays of strings (command lines).
pub fn value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(url(s)),
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                let args: Vec<String> = items.iter().filter_map(|s| s.as_str().map(String::from)).collect();
                Value::Array(command_line(&args).into_iter().map(Value::String).collect())
            } else {
                Value::Array(items.iter().map(value).collect())
            }
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() && !v.is_boolean() {
                        Value::String(REDACTED.into())
                    } else {
                        value(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_lose_their_credentials_only() {
        assert_eq!(url("https://bob:s3cret@host:8000/v1"), "https://[redacted]@host:8000/v1");
        assert_eq!(url("http://token@h/v1?x=1"), "http://[redacted]@h/v1?x=1");
        assert_eq!(url("http://h:8000/v1"), "http://h:8000/v1");
        assert_eq!(url("mail me at a@b.c"), "mail me at a@b.c");
        assert_eq!(url("a http://u:p@x/ and https://y/ b"), "a http://[redacted]@x/ and https://y/ b");
    }

    #[test]
    fn command_lines_lose_secret_flags() {
        let args: Vec<String> = [
            "mmloop",
            "infer",
            "p",
            "--api",
            "http://u:pw@h/v1",
            "--api-key",
            "sk-1",
            "--api_key=sk-2",
            "--model",
            "m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = command_line(&args);
        let text = out.join(" ");
        assert!(!text.contains("sk-1") && !text.contains("sk-2") && !text.contains("pw"), "{text}");
        assert_eq!(out[6], REDACTED);
        assert_eq!(out[7], "--api_key=[redacted]");
        assert_eq!(out[9], "m");
    }

    #[test]
    fn json_values_lose_secrets_everywhere() {
        let v = json!({
            "command": ["mmloop", "--api-key", "sk-x"],
            "api": "https://u:p@h/v1",
            "backend": {"api_key": "sk-y", "headers": {"Authorization": "Bearer z"}, "password": true},
            "model": "qwen"
        });
        let r = value(&v);
        let text = r.to_string();
        for secret in ["sk-x", "sk-y", "u:p", "Bearer z"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(r["model"], "qwen");
        assert_eq!(r["backend"]["password"], true, "a flag saying a password exists is not a secret");
    }
}
