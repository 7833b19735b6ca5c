//! Generation settings: the checkpoint's `generation_config.json` supplies defaults, as in
//! transformers, and the user's flags override them.
//!
//! Rules, in transformers' terms: without `do_sample` the checkpoint's temperature, top-k
//! and top-p are ignored (greedy); a repetition penalty applies either way. A `--temperature`
//! flag decides alone, as in ms-swift: 0 is greedy, anything else samples.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// The sampling fields of a `generation_config.json`, all optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// End-of-sequence ids (a number or a list in the file).
    #[serde(default, deserialize_with = "ids", skip_serializing_if = "Vec::is_empty")]
    pub eos_token_id: Vec<u32>,
}

fn ids<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Nothing(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(i) => vec![i],
        OneOrMany::Many(v) => v,
        OneOrMany::Nothing(()) => Vec::new(),
    })
}

impl GenerationDefaults {
    /// Reads `generation_config.json`; a missing file gives no defaults.
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| EngineError::Load(format!("{}: not a generation config: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(EngineError::Load(format!("{}: {e}", path.display()))),
        }
    }
}

/// What the user asked for on the command line; `None` leaves the checkpoint's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenOverrides {
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    /// 0 means greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub top_logprobs: Option<usize>,
    pub seed: Option<u64>,
}

/// Settled generation settings for one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many tokens exist (transformers'
    /// `min_new_tokens`); for fixed-length benchmarks.
    pub min_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 1 = off.
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off (transformers' rule: logits of seen tokens divided by it when positive,
    /// multiplied when negative).
    pub repetition_penalty: f64,
    /// How many alternatives to keep per token in the stored logprobs.
    pub top_logprobs: usize,
    pub seed: u64,
    /// Strings that end the answer when they appear (not included in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// 0 = off (vLLM's `min_p`).
    #[serde(default)]
    pub min_p: f64,
    /// Whether the caller asked for each generation setting explicitly (a server then
    /// receives only those, keeping its own defaults for the rest).
    #[serde(skip)]
    pub explicit: GenOverrides,
}

/// Used when neither the flags nor the checkpoint say.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;
pub const DEFAULT_TOP_LOGPROBS: usize = 5;
/// Temperature for extra self-consistency samples when the answer itself is greedy.
pub const DEFAULT_SAMPLE_TEMPERATURE: f64 = 0.7;

impl GenParams {
    /// Settles the settings from the checkpoint's defaults and the user's flags.
    pub fn resolve(defaults: &GenerationDefaults, o: &GenOverrides) -> Result<GenParams> {
        let sampling_default = defaults.do_sample == Some(true);
        let temperature = match o.temperature {
            Some(t) => t,
            None if sampling_default => defaults.temperature.unwrap_or(1.0),
            None => 0.0,
        };
        let sampling = temperature > 0.0;
        // transformers keeps the checkpoint's top-k/top-p whenever it samples, and its
        // GenerationConfig defaults are top_k 50, top_p 1.0; greedy ignores both.
        let (top_k, top_p) = if sampling {
            (o.top_k.or(defaults.top_k).unwrap_or(50), o.top_p.or(defaults.top_p).unwrap_or(1.0))
        } else {
            (0, 1.0)
        };
        let p = GenParams {
            max_new_tokens: o.max_new_tokens.or(defaults.max_new_tokens).unwrap_or(DEFAULT_MAX_NEW_TOKENS),
            min_new_tokens: o.min_new_tokens.unwrap_or(0),
            temperature,
            top_p,
            top_k,
            repetition_penalty: o.repetition_penalty.or(defaults.repetition_penalty).unwrap_or(1.0),
            top_logprobs: o.top_logprobs.unwrap_or(DEFAULT_TOP_LOGPROBS),
            seed: o.seed.unwrap_or(0),
            stop: Vec::new(),
            min_p: 0.0,
            explicit: o.clone(),
        };
        p.validate()?;
        Ok(p)
    }

    /// Pure greedy decoding with no penalty: what the parity references use.
    pub fn greedy(max_new_tokens: usize) -> GenParams {
        GenParams {
            max_new_tokens,
            min_new_tokens: 0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            top_logprobs: DEFAULT_TOP_LOGPROBS,
            seed: 0,
            stop: Vec::new(),
            min_p: 0.0,
            explicit: GenOverrides::default(),
        }
    }

    /// Checks settings set after [`GenParams::resolve`] (a server request's own).
    pub fn check(&self) -> Result<()> {
        self.validate()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens must be at least 1".into());
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("--temperature must be 0 (greedy) or positive, not {}", self.temperature));
        }
        let top_p = self.explicit.top_p.unwrap_or(self.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return bad(format!("--top-p must be in (0, 1], not {top_p}"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("--repetition-penalty must be positive, not {}", self.repetition_penalty));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], not {}", self.min_p));
        }
        if self.top_logprobs > 20 {
            return bad("--top-logprobs is at most 20 (the OpenAI API's limit)".into());
        }
        Ok(())
    }

    /// The settings that change answers, as canonical JSON (for the run's params hash).
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        });
        // Only when set, so the identity of earlier runs stays the same.
        if !self.stop.is_empty() {
            v["stop"] = serde_json::json!(self.stop);
        }
        if self.min_p > 0.0 {
            v["min_p"] = self.min_p.into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen25() -> GenerationDefaults {
        serde_json::from_str(
            r#"{"do_sample": true, "eos_token_id": [2, 0], "repetition_penalty": 1.05,
                "temperature": 0.1, "top_k": 1, "top_p": 0.001}"#,
        )
        .unwrap()
    }

    #[test]
    fn checkpoint_defaults_apply_like_transformers() {
        let p = GenParams::resolve(&qwen25(), &GenOverrides::default()).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p, p.repetition_penalty), (0.1, 1, 0.001, 1.05));
        assert_eq!(qwen25().eos_token_id, vec![2, 0]);
    }

    #[test]
    fn flags_override_and_zero_temperature_is_greedy() {
        let o = GenOverrides { temperature: Some(0.0), repetition_penalty: Some(1.0), ..Default::default() };
        let p = GenParams::resolve(&qwen25(), &o).unwrap();
        assert!(p.is_greedy());
        assert_eq!(p.repetition_penalty, 1.0);
    }

    #[test]
    fn without_do_sample_the_checkpoint_temperature_is_ignored() {
        let d = GenerationDefaults { temperature: Some(0.7), ..Default::default() };
        let p = GenParams::resolve(&d, &GenOverrides::default()).unwrap();
        assert!(p.is_greedy());
        assert_eq!(p.max_new_tokens, DEFAULT_MAX_NEW_TOKENS);
        let o = GenOverrides { temperature: Some(0.7), ..Default::default() };
        let p = GenParams::resolve(&d, &o).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.7, 50, 1.0));
        // The checkpoint's top-k stays when only the temperature is given, as in transformers.
        let o = GenOverrides { temperature: Some(0.7), ..Default::default() };
        let p = GenParams::resolve(&qwen25(), &o).unwrap();
        assert_eq!((p.temperature, p.top_k), (0.7, 1));
    }

    #[test]
    fn bad_values_are_refused() {
        for o in [
            GenOverrides { top_p: Some(0.0), ..Default::default() },
            GenOverrides { temperature: Some(-1.0), ..Default::default() },
            GenOverrides { max_new_tokens: Some(0), ..Default::default() },
            GenOverrides { top_logprobs: Some(21), ..Default::default() },
        ] {
            assert!(GenParams::resolve(&GenerationDefaults::default(), &o).is_err(), "{o:?}");
        }
    }

    #[test]
    fn eos_may_be_a_number_or_missing() {
        let d: GenerationDefaults = serde_json::from_str(r#"{"eos_token_id": 634}"#).unwrap();
        assert_eq!(d.eos_token_id, vec![634]);
        let d: GenerationDefaults = serde_json::from_str(r#"{"bos_token_id": 0}"#).unwrap();
        assert!(d.eos_token_id.is_empty());
    }
}
