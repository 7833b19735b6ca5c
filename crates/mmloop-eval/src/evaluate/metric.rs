//! The metrics the command line can ask for, their names in `metrics.json`, the tasks
//! they apply to, and each task's defaults.

use serde::{Serialize, Serializer};

use crate::error::EvalError;
use crate::references::{EvalTask, References};

/// A metric the command line can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    VqaAcc,
    ExactMatch,
    F1,
    Anls,
    Bleu,
    Meteor,
    RougeL,
    Cider,
    McAcc,
    Mmbench,
    Mme,
    Ece,
    Brier,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::VqaAcc,
        Metric::ExactMatch,
        Metric::F1,
        Metric::Anls,
        Metric::Bleu,
        Metric::Meteor,
        Metric::RougeL,
        Metric::Cider,
        Metric::McAcc,
        Metric::Mmbench,
        Metric::Mme,
        Metric::Ece,
        Metric::Brier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::VqaAcc => "vqa_acc",
            Metric::ExactMatch => "exact_match",
            Metric::F1 => "f1",
            Metric::Anls => "anls",
            Metric::Bleu => "bleu",
            Metric::Meteor => "meteor",
            Metric::RougeL => "rouge_l",
            Metric::Cider => "cider",
            Metric::McAcc => "mc_acc",
            Metric::Mmbench => "mmbench",
            Metric::Mme => "mme",
            Metric::Ece => "ece",
            Metric::Brier => "brier",
        }
    }

    /// The tasks a metric applies to.
    pub fn applies_to(self, task: EvalTask) -> bool {
        use EvalTask::*;
        match self {
            Metric::VqaAcc | Metric::ExactMatch | Metric::F1 | Metric::Anls => task == Vqa,
            Metric::Bleu | Metric::Meteor | Metric::RougeL | Metric::Cider => task == Caption,
            Metric::McAcc | Metric::Mmbench => task == Choice,
            Metric::Mme => task == Mme,
            Metric::Ece | Metric::Brier => task != Caption,
        }
    }

    /// Lower is better (calibration errors), unlike every score.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::Ece | Metric::Brier)
    }

    /// Parses `vqa_acc,cider,bleu` (aliases: `vqa`, `em`, `rouge`, `cider_d`, `bleu_4`, ...).
    pub fn parse_list(s: &str) -> Result<Vec<Metric>, EvalError> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = name.parse::<Metric>()?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for Metric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.to_ascii_lowercase().replace('-', "_");
        Ok(match n.as_str() {
            "vqa_acc" | "vqa" | "vqa_accuracy" => Metric::VqaAcc,
            "exact_match" | "em" => Metric::ExactMatch,
            "f1" | "token_f1" => Metric::F1,
            "anls" => Metric::Anls,
            "bleu" | "bleu_4" | "bleu4" => Metric::Bleu,
            "meteor" => Metric::Meteor,
            "rouge_l" | "rouge" | "rougel" => Metric::RougeL,
            "cider" | "cider_d" => Metric::Cider,
            "mc_acc" | "mc" | "choice" | "accuracy" => Metric::McAcc,
            "mmbench" | "circular" => Metric::Mmbench,
            "mme" => Metric::Mme,
            "ece" => Metric::Ece,
            "brier" => Metric::Brier,
            _ => {
                return Err(EvalError::usage(
                    format!("unknown metric `{s}`"),
                    format!("use some of: {}", Metric::ALL.map(Metric::name).join(", ")),
                ));
            }
        })
    }
}

/// The task's metrics when none are named.
pub fn default_metrics(task: EvalTask, refs: &References) -> Vec<Metric> {
    match task {
        EvalTask::Vqa => {
            // VQA accuracy needs several human answers; with one it is always 0.
            if refs.items.iter().any(|r| r.answers.len() >= 3) {
                vec![Metric::VqaAcc, Metric::ExactMatch, Metric::Anls]
            } else {
                vec![Metric::ExactMatch, Metric::F1, Metric::Anls]
            }
        }
        EvalTask::Caption => vec![Metric::Bleu, Metric::Meteor, Metric::RougeL, Metric::Cider],
        EvalTask::Choice => {
            if refs.items.iter().any(|r| r.id.parse::<u64>().is_ok_and(|i| i >= 1_000_000)) {
                vec![Metric::McAcc, Metric::Mmbench]
            } else {
                vec![Metric::McAcc]
            }
        }
        EvalTask::Mme => vec![Metric::Mme],
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// As its name (`"vqa_acc"`), the way `metrics.json` has always written it.
impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}
