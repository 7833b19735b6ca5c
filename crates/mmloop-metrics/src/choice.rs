//! Multiple-choice metrics: plain accuracy, MMBench-style circular evaluation, and MME.
//!
//! - Option extraction is VLMEvalKit's rule-based `can_infer` (`vlmeval/utils/matching_util.py`)
//!   as shipped in the PyPI package `ms-vlmeval` 0.0.20, with `VERBOSE` unset. That version
//!   accepts a lone option letter only among the last four tokens
//!   (`splits.index(ch) > len(splits) - 5`) and skips text matching for answers longer
//!   than twice the option texts. Other upstream commits differ here (open-compass/VLMEvalKit
//!   `18fc37a` has neither check; `134b4ea` flips the position test), so numbers are only
//!   comparable under the same `can_infer`. No LLM judge is ever called: an answer the
//!   rules cannot map is wrong.
//! - Circular evaluation follows `mcq_circular_eval`/`prefetch_circular_group` of the same
//!   package: rows whose `index % 1_000_000` equals a question's `index` are its rotations;
//!   the question scores 1 only if every rotation's extracted option equals its answer.
//!   `report_acc`: `Overall`, then each `l2-category`, then each `category` (names sorted,
//!   MMBench names abbreviated as VLMEvalKit does), each the mean hit of the questions.
//! - MME follows the official `calculation.py` (MME `eval_tool`): `parse_pred_ans`
//!   (`lower()`, exact `yes`/`no`, else `yes` then `no` searched in the first 4 characters,
//!   else `other`), consecutive question pairs per image, subtask score
//!   `acc * 100 + acc_plus * 100`, perception and cognition summed over the official subtask
//!   lists in their order.
//!
//! Pure functions; they never read files.

use std::collections::{BTreeMap, HashMap};

/// What `can_infer` extracted from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inferred {
    /// An option letter.
    Option(char),
    /// `Z`: the model declined (a refusal phrase, or a lone `Z` token).
    Refused,
    /// Nothing could be extracted (`False` in Python).
    Unmatched,
}

impl Inferred {
    pub fn letter(self) -> Option<char> {
        match self {
            Inferred::Option(c) => Some(c),
            Inferred::Refused => Some('Z'),
            Inferred::Unmatched => None,
        }
    }
}

/// VLMEvalKit `can_infer(answer, choices)`; `choices` are `(letter, text)` in letter order,
/// letters upper-case ASCII.
pub fn can_infer(answer: &str, choices: &[(char, &str)]) -> Inferred {
    match can_infer_option(answer, choices) {
        Inferred::Unmatched => can_infer_text(answer, choices),
        found => found,
    }
}

const REFUSALS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

fn can_infer_option(answer: &str, choices: &[(char, &str)]) -> Inferred {
    if answer.contains("Failed to obtain answer via API") {
        return Inferred::Unmatched;
    }
    if REFUSALS.iter().any(|r| answer.contains(r)) {
        return Inferred::Refused;
    }
    let spaced: String = answer.chars().map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c }).collect();
    let splits: Vec<&str> = crate::pystr::split(&spaced).collect();
    let mut buf = [0u8; 4];
    let is_token = |c: char, buf: &mut [u8; 4]| {
        let s: &str = c.encode_utf8(buf);
        splits.iter().position(|t| *t == s)
    };
    let count = choices.iter().filter(|(c, _)| is_token(*c, &mut buf).is_some()).count();
    if count == 1 {
        for &(c, _) in choices {
            if let Some(pos) = is_token(c, &mut buf) {
                // `splits.index(ch) > len(splits) - 5`, in signed arithmetic.
                if pos as i64 > splits.len() as i64 - 5 {
                    return Inferred::Option(c);
                }
            }
        }
    } else if count == 0 && splits.contains(&"Z") {
        return Inferred::Refused;
    }
    Inferred::Unmatched
}

fn can_infer_text(answer: &str, choices: &[(char, &str)]) -> Inferred {
    let answer = answer.to_lowercase();
    let budget: usize = choices.iter().map(|(_, t)| crate::pystr::char_len(t)).sum();
    if crate::pystr::char_len(&answer) > 2 * budget {
        return Inferred::Unmatched;
    }
    let mut found = None;
    for &(c, text) in choices {
        if answer.contains(text.to_lowercase().as_str()) {
            if found.is_some() {
                return Inferred::Unmatched;
            }
            found = Some(c);
        }
    }
    found.map_or(Inferred::Unmatched, Inferred::Option)
}

/// One multiple-choice row, as VLMEvalKit's data frame holds it.
#[derive(Debug, Clone)]
pub struct ChoiceItem<'a> {
    /// VLMEvalKit `index`; rotation k of question q has index `q + k * 1_000_000`.
    pub index: u64,
    pub prediction: &'a str,
    /// `(letter, option text)` for each present option, in letter order.
    pub choices: Vec<(char, &'a str)>,
    /// The correct letter.
    pub answer: char,
    pub category: Option<&'a str>,
    pub l2_category: Option<&'a str>,
}

/// Whether the extracted option is the answer (VLMEvalKit `eval_vanilla` without a judge).
pub fn choice_hit(item: &ChoiceItem<'_>) -> bool {
    can_infer(item.prediction, &item.choices).letter() == Some(item.answer)
}

/// Accuracy report in VLMEvalKit `report_acc` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceReport {
    /// `(index, hit)` per scored question, in input order.
    pub hits: Vec<(u64, bool)>,
    /// Mean hit over all questions, in [0, 1].
    pub overall: f64,
    /// Per `l2-category` then per `category`, names sorted within each, abbreviated for
    /// MMBench's six L2 names.
    pub groups: Vec<(String, f64)>,
}

/// Plain accuracy: every row is its own question.
pub fn choice_accuracy(items: &[ChoiceItem<'_>]) -> ChoiceReport {
    let hits: Vec<bool> = items.iter().map(choice_hit).collect();
    report(items.iter().zip(hits).collect())
}

/// MMBench CircularEval over questions and their rotations (rows in any order).
/// Rotations without a main row (`index < 1_000_000`) are ignored, as in VLMEvalKit.
pub fn circular_accuracy(items: &[ChoiceItem<'_>]) -> ChoiceReport {
    let mut all_right: HashMap<u64, bool> = HashMap::new();
    for item in items {
        let entry = all_right.entry(item.index % 1_000_000).or_insert(true);
        *entry = *entry && choice_hit(item);
    }
    let main: Vec<(&ChoiceItem<'_>, bool)> =
        items.iter().filter(|it| it.index < 1_000_000).map(|it| (it, all_right[&it.index])).collect();
    report(main)
}

fn report<'a>(scored: Vec<(&ChoiceItem<'a>, bool)>) -> ChoiceReport {
    let mean = |hits: &[bool]| hits.iter().filter(|&&h| h).count() as f64 / hits.len() as f64;
    let all: Vec<bool> = scored.iter().map(|(_, h)| *h).collect();
    let mut groups = Vec::new();
    for level in [Level::L2, Level::Category] {
        let mut by: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
        for (it, h) in &scored {
            let name = match level {
                Level::L2 => it.l2_category,
                Level::Category => it.category,
            };
            if let Some(name) = name {
                by.entry(name).or_default().push(*h);
            }
        }
        for (name, hits) in by {
            groups.push((mmbench_abbreviation(name).unwrap_or(name).to_string(), mean(&hits)));
        }
    }
    ChoiceReport { overall: mean(&all), hits: scored.iter().map(|(it, h)| (it.index, *h)).collect(), groups }
}

enum Level {
    L2,
    Category,
}

fn mmbench_abbreviation(name: &str) -> Option<&'static str> {
    Some(match name {
        "coarse_perception" => "CP",
        "finegrained_perception (instance-level)" => "FP-S",
        "finegrained_perception (cross-instance)" => "FP-C",
        "logic_reasoning" => "LR",
        "relation_reasoning" => "RR",
        "attribute_reasoning" => "AR",
        _ => return None,
    })
}

/// MME subtasks counted in the perception sum, in `calculation.py` order.
pub const MME_PERCEPTION: [&str; 10] =
    ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"];
/// MME subtasks counted in the cognition sum, in `calculation.py` order.
pub const MME_COGNITION: [&str; 4] =
    ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"];

/// MME `parse_pred_ans` after `lower()`: `Some(true)` yes, `Some(false)` no, `None` other.
pub fn mme_parse_answer(prediction: &str) -> Option<bool> {
    let p = prediction.to_lowercase();
    match p.as_str() {
        "yes" => return Some(true),
        "no" => return Some(false),
        _ => {}
    }
    let end = p.char_indices().nth(4).map_or(p.len(), |(i, _)| i);
    let prefix = &p[..end];
    if prefix.contains("yes") {
        Some(true)
    } else if prefix.contains("no") {
        Some(false)
    } else {
        None
    }
}

/// One MME question: its subtask file name (without `.txt`), ground truth and prediction.
/// Within a subtask, consecutive questions form an image's pair, as in the result files.
#[derive(Debug, Clone, Copy)]
pub struct MmeQuestion<'a> {
    pub task: &'a str,
    /// `yes` or `no`, any case.
    pub answer: &'a str,
    pub prediction: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MmeTask {
    pub task: String,
    /// Share of questions answered right.
    pub acc: f64,
    /// Share of images with both questions right.
    pub acc_plus: f64,
    /// `acc * 100 + acc_plus * 100`, at most 200.
    pub score: f64,
    /// Predictions that parsed as neither yes nor no.
    pub other: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MmeReport {
    /// Per subtask in order of first appearance.
    pub tasks: Vec<MmeTask>,
    /// Sum over the perception subtasks present, at most 2000.
    pub perception: f64,
    /// Sum over the cognition subtasks present, at most 800.
    pub cognition: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MmeError {
    #[error("MME subtask `{task}` has an odd number of questions ({count}); each image needs its two questions")]
    OddQuestions { task: String, count: usize },
    #[error("MME ground truth `{answer}` in subtask `{task}` is not yes or no; fix the reference file")]
    BadAnswer { task: String, answer: String },
}

/// MME scores as `calculation.py` prints them.
pub fn mme_scores(questions: &[MmeQuestion<'_>]) -> Result<MmeReport, MmeError> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_task: HashMap<&str, Vec<&MmeQuestion<'_>>> = HashMap::new();
    for q in questions {
        by_task
            .entry(q.task)
            .or_insert_with(|| {
                order.push(q.task);
                Vec::new()
            })
            .push(q);
    }
    let mut tasks = Vec::new();
    for task in order {
        let qs = &by_task[task];
        if !qs.len().is_multiple_of(2) {
            return Err(MmeError::OddQuestions { task: task.to_string(), count: qs.len() });
        }
        let mut correct = 0usize;
        let mut both = 0usize;
        let mut other = 0usize;
        for pair in qs.chunks(2) {
            let mut right = 0;
            for q in pair {
                let gt = match q.answer.to_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => {
                        return Err(MmeError::BadAnswer { task: task.to_string(), answer: q.answer.to_string() });
                    }
                };
                let pred = mme_parse_answer(q.prediction);
                other += usize::from(pred.is_none());
                if pred == Some(gt) {
                    right += 1;
                }
            }
            correct += right;
            both += usize::from(right == 2);
        }
        let acc = correct as f64 / qs.len() as f64;
        let acc_plus = both as f64 / (qs.len() / 2) as f64;
        tasks.push(MmeTask { task: task.to_string(), acc, acc_plus, score: acc * 100.0 + acc_plus * 100.0, other });
    }
    let sum = |names: &[&str]| {
        names.iter().filter_map(|n| tasks.iter().find(|t| t.task == *n)).fold(0.0, |acc, t| acc + t.score)
    };
    Ok(MmeReport { perception: sum(&MME_PERCEPTION), cognition: sum(&MME_COGNITION), tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABCD: [(char, &str); 4] = [('A', "cat"), ('B', "dog"), ('C', "bird"), ('D', "fish")];

    #[test]
    fn can_infer_rules() {
        assert_eq!(can_infer("B", &ABCD), Inferred::Option('B'));
        assert_eq!(can_infer("(C) bird", &ABCD), Inferred::Option('C'));
        assert_eq!(can_infer("The answer is A.", &ABCD), Inferred::Option('A'));
        assert_eq!(can_infer("A or B", &ABCD), Inferred::Unmatched);
        assert_eq!(can_infer("a dog", &ABCD), Inferred::Option('B'));
        assert_eq!(can_infer("Cannot determine the answer", &ABCD), Inferred::Refused);
        assert_eq!(can_infer("Z", &ABCD), Inferred::Refused);
        // A lone letter too early among many tokens is not taken.
        assert_eq!(can_infer("A is what I would pick here today", &ABCD), Inferred::Unmatched);
    }

    #[test]
    fn mme_parsing() {
        assert_eq!(mme_parse_answer("Yes"), Some(true));
        assert_eq!(mme_parse_answer("not sure"), Some(false));
        assert_eq!(mme_parse_answer("The answer is yes"), None);
        assert_eq!(mme_parse_answer("ayes, it is"), Some(true));
    }
}
