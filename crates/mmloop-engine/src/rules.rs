//! Risk rules: cheap checks on an answer that send it to a reviewer first. Each flag says
//! which rule fired and why, and where a word is to blame, its character span in the answer
//! (`[start, end)` in Unicode characters) so the review page can underline it.
//!
//! Configured in the `[rules]` section of `mmloop.toml`; every key is optional:
//!
//! ```toml
//! [rules]
//! low_confidence = 0.5          # flag answers whose confidence is below this
//! low_agreement = 0.6           # with --samples: flag when fewer samples agree
//! max_answer_chars = 200        # VQA answers longer than this are "overlong"
//! max_caption_chars = 1000
//! extra_hedging = ["I reckon"]  # added to the built-in English and Chinese lists
//! extra_refusals = ["不好说"]
//! disable = ["truncated"]       # flags to turn off
//! [[rules.format]]              # a format rule for questions matching a regex
//! question = "(?i)^what year"
//! expect = "regex"              # yes_no | number | one_of | regex
//! pattern = "^\\d{4}$"
//! ```
//!
//! Yes/no and number questions are recognised on their own (English and Chinese wording,
//! or the item's VQAv2 `answer_type`). Rules never change an answer; they only flag it.

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use mmloop_core::RiskFlag;

use crate::{EngineError, Result};

const HEDGING_EN: &[&str] = &[
    "maybe",
    "perhaps",
    "possibly",
    "probably",
    "likely",
    "unlikely",
    "might",
    "may",
    "may be",
    "could be",
    "seems",
    "seem",
    "seems to be",
    "appears",
    "appears to be",
    "looks like",
    "look like",
    "not sure",
    "unsure",
    "uncertain",
    "unclear",
    "i think",
    "i believe",
    "i guess",
    "presumably",
    "apparently",
    "roughly",
    "approximately",
    "somewhat",
    "sort of",
    "kind of",
    "hard to tell",
    "difficult to tell",
    "hard to say",
    "difficult to say",
    "or so",
];

const HEDGING_ZH: &[&str] = &[
    "可能",
    "也许",
    "也許",
    "大概",
    "似乎",
    "不确定",
    "不確定",
    "不太确定",
    "好像",
    "或许",
    "或許",
    "估计",
    "應該是",
    "应该是",
    "看起来",
    "看起來",
    "看上去",
    "大约",
    "大約",
    "不太清楚",
    "说不定",
    "貌似",
    "疑似",
    "仿佛",
];

const REFUSALS_EN: &[&str] = &[
    "i can't",
    "i cannot",
    "i can not",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "unable to determine",
    "cannot determine",
    "can't determine",
    "cannot be determined",
    "not possible to determine",
    "i'm sorry",
    "i am sorry",
    "as an ai",
    "i don't know",
    "i do not know",
    "there is no image",
];

const REFUSALS_ZH: &[&str] =
    &["无法", "無法", "抱歉", "对不起", "對不起", "不能确定", "我不能", "不知道", "看不清", "没有图片", "沒有圖片"];

/// The `[rules]` section of `mmloop.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Flag answers whose confidence is below this (0 turns the rule off).
    pub low_confidence: f64,
    /// With self-consistency samples: flag when fewer than this share agree.
    pub low_agreement: f64,
    pub max_answer_chars: usize,
    pub max_caption_chars: usize,
    /// Replace the built-in lists (English words match whole words, case-insensitively;
    /// Chinese terms match anywhere).
    pub hedging_en: Vec<String>,
    pub hedging_zh: Vec<String>,
    pub refusals_en: Vec<String>,
    pub refusals_zh: Vec<String>,
    /// Add to the lists without repeating them.
    pub extra_hedging: Vec<String>,
    pub extra_refusals: Vec<String>,
    /// Recognise yes/no and number questions from their wording.
    pub detect_yes_no: bool,
    pub detect_number: bool,
    /// Format rules for questions matching a regex.
    pub format: Vec<FormatRule>,
    /// Flags never to raise (`hedging`, `refusal`, `empty`, `overlong`, `truncated`,
    /// `not_yes_no`, `not_number`, `format`, `low_confidence`, `low_agreement`).
    pub disable: Vec<String>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        RulesConfig {
            low_confidence: 0.5,
            low_agreement: 0.6,
            max_answer_chars: 200,
            max_caption_chars: 1000,
            hedging_en: v(HEDGING_EN),
            hedging_zh: v(HEDGING_ZH),
            refusals_en: v(REFUSALS_EN),
            refusals_zh: v(REFUSALS_ZH),
            extra_hedging: Vec::new(),
            extra_refusals: Vec::new(),
            detect_yes_no: true,
            detect_number: true,
            format: Vec::new(),
            disable: Vec::new(),
        }
    }
}

/// What a format rule expects of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    YesNo,
    Number,
    OneOf,
    Regex,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatRule {
    /// A regex the question must match (use `(?i)` for case-insensitive).
    pub question: String,
    pub expect: Expect,
    /// `one_of`: the allowed answers (compared after lower-casing and trimming).
    #[serde(default)]
    pub choices: Vec<String>,
    /// `regex`: what the whole answer must match.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// Everything a rule may look at.
#[derive(Clone, Debug, Default)]
pub struct RuleInput<'a> {
    pub question: &'a str,
    pub answer: &'a str,
    /// `caption` answers get the caption length limit and no question-format rules.
    pub is_caption: bool,
    /// The dataset's answer type when it has one (VQAv2: `yes/no`, `number`, `other`).
    pub answer_type: Option<&'a str>,
    pub confidence: Option<f64>,
    pub agreement: Option<f64>,
    pub finish_reason: Option<&'a str>,
}

struct Term {
    chars: Vec<char>,
    whole_word: bool,
    text: String,
}

struct CompiledFormat {
    question: Regex,
    expect: Expect,
    choices: Vec<String>,
    pattern: Option<Regex>,
    source: String,
}

/// Rules ready to run.
pub struct RuleSet {
    config: RulesConfig,
    hedging: Vec<Term>,
    refusals: Vec<Term>,
    formats: Vec<CompiledFormat>,
}

fn fold(c: char) -> char {
    match c {
        '\u{2018}' | '\u{2019}' | '\u{02BC}' => '\'',
        c => c.to_lowercase().next().unwrap_or(c),
    }
}

fn terms<'a>(lists: impl IntoIterator<Item = &'a String>) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    for t in lists {
        let chars: Vec<char> = t.trim().chars().map(fold).collect();
        if chars.is_empty() || out.iter().any(|o| o.chars == chars) {
            continue;
        }
        let whole_word = chars.iter().all(|c| c.is_ascii());
        out.push(Term { chars, whole_word, text: t.trim().to_string() });
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '\''
}

/// Non-overlapping matches of `terms` in `text` (longest first at a position), as
/// (start, end, term) in characters.
fn find_terms<'t>(text: &[char], terms: &'t [Term]) -> Vec<(usize, usize, &'t Term)> {
    let mut hits = Vec::new();
    for t in terms {
        let n = t.chars.len();
        if n > text.len() {
            continue;
        }
        for s in 0..=text.len() - n {
            if text[s..s + n] != t.chars[..] {
                continue;
            }
            if t.whole_word {
                let before_ok = s == 0 || !is_word(text[s - 1]);
                let after_ok = s + n == text.len() || !is_word(text[s + n]);
                if !(before_ok && after_ok) {
                    continue;
                }
            }
            hits.push((s, s + n, t));
        }
    }
    hits.sort_by(|a, b| a.0.cmp(&b.0).then((b.1 - b.0).cmp(&(a.1 - a.0))));
    let mut kept: Vec<(usize, usize, &Term)> = Vec::new();
    for h in hits {
        if kept.last().is_none_or(|k| h.0 >= k.1) {
            kept.push(h);
        }
    }
    kept
}

const YES_NO_STARTS: &[&str] = &[
    "is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "will", "would", "should", "shall", "has",
    "have", "had", "may", "might", "must", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't",
    "can't", "won't",
];

/// Whether the question asks for a yes or a no.
pub fn is_yes_no_question(q: &str) -> bool {
    let lower = q.trim().to_lowercase();
    let first = lower.split(|c: char| !is_word(c)).find(|w| !w.is_empty()).unwrap_or("");
    if YES_NO_STARTS.contains(&first) {
        // "Is it red or blue?" asks to choose, not to confirm.
        return !lower.contains(" or ");
    }
    let zh = lower.trim_end_matches(['?', '？', '。', ' ']);
    zh.ends_with('吗')
        || zh.ends_with('嗎')
        || ["是否", "是不是", "有没有", "有沒有", "能不能", "会不会", "會不會"].iter().any(|w| zh.contains(w))
}

/// Whether the question asks for a count or another number.
pub fn is_number_question(q: &str) -> bool {
    let lower = q.trim().to_lowercase();
    ["how many", "how much", "what number", "what is the number", "how old", "what year", "what percentage"]
        .iter()
        .any(|p| lower.starts_with(p) || lower.contains(&format!(" {p}")))
        || ["多少", "几个", "幾個", "几只", "几张", "几位", "几辆", "几岁", "几年", "几点"]
            .iter()
            .any(|w| lower.contains(w))
}

fn answers_yes_no(a: &str) -> bool {
    let lower = a.trim().to_lowercase();
    let first = lower.split(|c: char| !c.is_alphanumeric()).find(|w| !w.is_empty()).unwrap_or("");
    matches!(first, "yes" | "no" | "yeah" | "yep" | "nope" | "true" | "false")
        || ["是", "不是", "否", "对", "對", "不对", "有", "没有", "沒有", "不", "能", "不能", "会", "不会"]
            .iter()
            .any(|w| lower.starts_with(w))
}

fn answers_number(a: &str) -> bool {
    const WORDS: &[&str] = &[
        "zero",
        "none",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "hundred",
        "thousand",
        "dozen",
        "no",
    ];
    let lower = a.to_lowercase();
    lower.chars().any(|c| c.is_ascii_digit() || "零〇一二两兩三四五六七八九十百千万萬".contains(c))
        || lower.split(|c: char| !c.is_alphanumeric()).any(|w| WORDS.contains(&w))
}

impl RuleSet {
    pub fn new(config: RulesConfig) -> Result<RuleSet> {
        let hedging = terms(config.hedging_en.iter().chain(&config.hedging_zh).chain(&config.extra_hedging));
        let refusals = terms(config.refusals_en.iter().chain(&config.refusals_zh).chain(&config.extra_refusals));
        let mut formats = Vec::new();
        for (i, f) in config.format.iter().enumerate() {
            let bad = |what: &str, e: regex::Error| {
                EngineError::Config(format!("[[rules.format]] number {}: bad {what} regex: {e}", i + 1))
            };
            let pattern = match (&f.expect, &f.pattern) {
                (Expect::Regex, None) => {
                    return Err(EngineError::Config(format!(
                        "[[rules.format]] number {}: expect = \"regex\" needs a pattern",
                        i + 1
                    )));
                }
                (_, Some(p)) => Some(Regex::new(p).map_err(|e| bad("pattern", e))?),
                (_, None) => None,
            };
            if f.expect == Expect::OneOf && f.choices.is_empty() {
                return Err(EngineError::Config(format!(
                    "[[rules.format]] number {}: expect = \"one_of\" needs choices",
                    i + 1
                )));
            }
            formats.push(CompiledFormat {
                question: Regex::new(&f.question).map_err(|e| bad("question", e))?,
                expect: f.expect,
                choices: f.choices.iter().map(|c| c.trim().to_lowercase()).collect(),
                pattern,
                source: f.question.clone(),
            });
        }
        for (name, v) in [("low_confidence", config.low_confidence), ("low_agreement", config.low_agreement)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(EngineError::Config(format!("[rules] {name} must be between 0 and 1, not {v}")));
            }
        }
        Ok(RuleSet { config, hedging, refusals, formats })
    }

    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// The flags `input` raises, in a stable order.
    pub fn evaluate(&self, input: &RuleInput) -> Vec<RiskFlag> {
        let mut flags = Vec::new();
        let answer = input.answer;
        let folded: Vec<char> = answer.chars().map(fold).collect();
        let trimmed = answer.trim();
        if trimmed.is_empty() {
            flags.push(RiskFlag { flag: "empty".into(), why: "the answer is empty".into(), span: None });
        }
        let n = folded.len();
        let (limit, key) = if input.is_caption {
            (self.config.max_caption_chars, "max_caption_chars")
        } else {
            (self.config.max_answer_chars, "max_answer_chars")
        };
        if limit > 0 && n > limit {
            flags.push(RiskFlag {
                flag: "overlong".into(),
                why: format!("{n} characters, more than {limit} ([rules] {key})"),
                span: None,
            });
        }
        if input.finish_reason == Some("length") {
            flags.push(RiskFlag {
                flag: "truncated".into(),
                why: "generation stopped at --max-new-tokens: the answer may be cut off".into(),
                span: None,
            });
        }
        for (s, e, t) in find_terms(&folded, &self.refusals) {
            flags.push(RiskFlag {
                flag: "refusal".into(),
                why: format!("refusal: \"{}\"", t.text),
                span: Some([s, e]),
            });
        }
        for (s, e, t) in find_terms(&folded, &self.hedging) {
            flags.push(RiskFlag {
                flag: "hedging".into(),
                why: format!("hedging word \"{}\"", t.text),
                span: Some([s, e]),
            });
        }
        if !input.is_caption && !trimmed.is_empty() {
            self.format_flags(input, &mut flags);
        }
        if let Some(c) = input.confidence
            && c < self.config.low_confidence
        {
            flags.push(RiskFlag {
                flag: "low_confidence".into(),
                why: format!("confidence {c:.2} is below {:.2} ([rules] low_confidence)", self.config.low_confidence),
                span: None,
            });
        }
        if let Some(a) = input.agreement
            && a < self.config.low_agreement
        {
            flags.push(RiskFlag {
                flag: "low_agreement".into(),
                why: format!(
                    "only {:.0}% of the samples agree (below {:.0}%, [rules] low_agreement)",
                    a * 100.0,
                    self.config.low_agreement * 100.0
                ),
                span: None,
            });
        }
        flags.retain(|f| !self.config.disable.contains(&f.flag));
        flags
    }

    fn format_flags(&self, input: &RuleInput, flags: &mut Vec<RiskFlag>) {
        let answer = input.answer;
        let by_type = input.answer_type.map(|t| t.trim().to_lowercase());
        let yes_no = match by_type.as_deref() {
            Some("yes/no") | Some("yes_no") => Some("the dataset's answer type is yes/no"),
            Some(_) => None,
            None if self.config.detect_yes_no && is_yes_no_question(input.question) => {
                Some("the question asks for yes or no")
            }
            None => None,
        };
        if let Some(why) = yes_no
            && !answers_yes_no(answer)
        {
            flags.push(RiskFlag {
                flag: "not_yes_no".into(),
                why: format!("{why}, the answer is neither"),
                span: None,
            });
        }
        let number = match by_type.as_deref() {
            Some("number") => Some("the dataset's answer type is number"),
            Some(_) => None,
            None if self.config.detect_number && is_number_question(input.question) => {
                Some("the question asks for a number")
            }
            None => None,
        };
        if let Some(why) = number
            && !answers_number(answer)
        {
            flags.push(RiskFlag { flag: "not_number".into(), why: format!("{why}, the answer has none"), span: None });
        }
        for f in &self.formats {
            if !f.question.is_match(input.question) {
                continue;
            }
            let a = answer.trim();
            let (ok, expected) = match f.expect {
                Expect::YesNo => (answers_yes_no(a), "yes or no".to_string()),
                Expect::Number => (answers_number(a), "a number".to_string()),
                Expect::OneOf => (f.choices.contains(&a.to_lowercase()), format!("one of {}", f.choices.join(", "))),
                Expect::Regex => {
                    let p = f.pattern.as_ref().expect("checked in RuleSet::new");
                    (p.is_match(a), format!("an answer matching /{}/", p.as_str()))
                }
            };
            if !ok {
                flags.push(RiskFlag {
                    flag: "format".into(),
                    why: format!("questions matching /{}/ expect {expected}", f.source),
                    span: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet::new(RulesConfig::default()).unwrap()
    }

    fn names(flags: &[RiskFlag]) -> Vec<&str> {
        flags.iter().map(|f| f.flag.as_str()).collect()
    }

    fn vqa<'a>(q: &'a str, a: &'a str) -> RuleInput<'a> {
        RuleInput { question: q, answer: a, ..Default::default() }
    }

    #[test]
    fn hedging_words_have_character_spans() {
        let f = rules().evaluate(&vqa("What is it?", "It may be a chair, probably oak."));
        let h: Vec<_> = f.iter().filter(|f| f.flag == "hedging").collect();
        assert_eq!(h.len(), 2, "{f:?}");
        // "may be" wins over "may" (longest match at a position).
        assert_eq!(h[0].span, Some([3, 9]));
        assert_eq!(h[0].why, "hedging word \"may be\"");
        assert_eq!(h[1].span, Some([19, 27]));
    }

    #[test]
    fn chinese_terms_match_inside_text_with_char_spans() {
        let f = rules().evaluate(&vqa("这是什么材料？", "这可能是木头，也许是竹子"));
        let spans: Vec<_> = f.iter().filter(|f| f.flag == "hedging").map(|f| f.span.unwrap()).collect();
        assert_eq!(spans, vec![[1, 3], [7, 9]]);
        let chars: Vec<char> = "这可能是木头，也许是竹子".chars().collect();
        assert_eq!(chars[1..3].iter().collect::<String>(), "可能");
    }

    #[test]
    fn whole_words_only_in_english() {
        assert!(rules().evaluate(&vqa("Who?", "The mayor.")).is_empty());
        assert!(names(&rules().evaluate(&vqa("Who?", "MAYBE the mayor"))).contains(&"hedging"));
    }

    #[test]
    fn refusals_empty_overlong_truncated() {
        let r = rules();
        assert_eq!(names(&r.evaluate(&vqa("What?", "I can’t tell from this image."))), vec!["refusal"]);
        assert_eq!(names(&r.evaluate(&vqa("这是什么？", "无法判断"))), vec!["refusal"]);
        assert_eq!(names(&r.evaluate(&vqa("What?", "  "))), vec!["empty"]);
        let long = "word ".repeat(60);
        assert_eq!(names(&r.evaluate(&vqa("What?", &long))), vec!["overlong"]);
        let cap = RuleInput { is_caption: true, ..vqa("Describe.", &long) };
        assert!(r.evaluate(&cap).is_empty());
        let cut = RuleInput { finish_reason: Some("length"), ..vqa("What?", "a") };
        assert_eq!(names(&r.evaluate(&cut)), vec!["truncated"]);
    }

    #[test]
    fn yes_no_and_number_questions() {
        let r = rules();
        assert_eq!(names(&r.evaluate(&vqa("Is the chair red?", "It is blue."))), vec!["not_yes_no"]);
        assert!(r.evaluate(&vqa("Is the chair red?", "Yes.")).is_empty());
        assert!(r.evaluate(&vqa("Is it red or blue?", "Blue")).is_empty());
        assert_eq!(names(&r.evaluate(&vqa("桌子是木头的吗？", "红色"))), vec!["not_yes_no"]);
        assert!(r.evaluate(&vqa("桌子是木头的吗？", "是的")).is_empty());
        assert_eq!(names(&r.evaluate(&vqa("How many chairs are there?", "Several."))), vec!["not_number"]);
        assert!(r.evaluate(&vqa("How many chairs are there?", "three")).is_empty());
        assert!(r.evaluate(&vqa("图中有几个人？", "三个")).is_empty());
        let typed = RuleInput { answer_type: Some("number"), ..vqa("What is on the sign?", "stop") };
        assert_eq!(names(&r.evaluate(&typed)), vec!["not_number"]);
        let other = RuleInput { answer_type: Some("other"), ..vqa("Is this a test?", "a cat") };
        assert!(r.evaluate(&other).is_empty(), "the dataset's type wins over the wording");
    }

    #[test]
    fn confidence_thresholds_and_disable() {
        let r = rules();
        let low = RuleInput { confidence: Some(0.2), agreement: Some(0.5), ..vqa("What?", "oak") };
        let f = r.evaluate(&low);
        assert_eq!(names(&f), vec!["low_confidence", "low_agreement"]);
        assert!(f[0].why.contains("0.20") && f[0].why.contains("0.50"));
        let off = RuleSet::new(RulesConfig { disable: vec!["low_confidence".into()], ..Default::default() }).unwrap();
        assert_eq!(names(&off.evaluate(&low)), vec!["low_agreement"]);
    }

    #[test]
    fn config_from_toml_shape_and_format_rules() {
        let cfg: RulesConfig = serde_json::from_value(serde_json::json!({
            "low_confidence": 0.3,
            "extra_hedging": ["I reckon"],
            "format": [
                {"question": "(?i)^what year", "expect": "regex", "pattern": "^\\d{4}$"},
                {"question": "(?i)^which side", "expect": "one_of", "choices": ["Left", "right"]}
            ]
        }))
        .unwrap();
        let r = RuleSet::new(cfg).unwrap();
        assert_eq!(names(&r.evaluate(&vqa("What year was it built?", "1990s"))), vec!["format"]);
        assert!(r.evaluate(&vqa("What year was it built?", "1994")).is_empty());
        assert!(r.evaluate(&vqa("Which side is the door on?", "left")).is_empty());
        assert_eq!(names(&r.evaluate(&vqa("Which side?", "middle"))), vec!["format"]);
        assert_eq!(names(&r.evaluate(&vqa("Who?", "I reckon Bob"))), vec!["hedging"]);
        let typo = serde_json::from_value::<RulesConfig>(serde_json::json!({"low_confidense": 0.3}));
        assert!(typo.is_err());
        let bad = RulesConfig {
            format: vec![FormatRule { question: "(".into(), expect: Expect::Number, choices: vec![], pattern: None }],
            ..Default::default()
        };
        assert!(RuleSet::new(bad).is_err());
    }
}
