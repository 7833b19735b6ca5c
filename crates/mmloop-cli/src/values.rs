//! Flags that take one of a fixed set of values (`--format`, `--task`, `--device`, ...):
//! `--help` lists the values, and a value is checked when the command line is read, by the
//! domain type's own parser — so its aliases (`ms-swift`, `fp16`, `mps`) are still accepted
//! and its error names the values and gives its hint. The flag keeps the text as given.

use std::ffi::OsStr;
use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;

pub const FORMATS: &[&str] =
    &["swift", "llava", "sharegpt", "coco", "vqav2", "textvqa", "labelstudio", "parquet", "jsonl", "csv", "folder"];
pub const TASKS: &[&str] = &["vqa", "caption"];
pub const EVAL_TASKS: &[&str] = &["vqa", "caption", "choice", "mme"];
pub const DEVICES: &[&str] = &["cpu", "cuda", "metal"];
pub const DTYPES: &[&str] = &["auto", "f32", "bf16", "f16"];
pub const VQA_VARIANTS: &[&str] = &["official", "lmms-eval", "lmms-eval-textvqa", "vlmevalkit"];
pub const SCORES: &[&str] = &["confidence", "calibrated"];
pub const P_VALUES: &[&str] = &["binomial", "hb"];
pub const SCHEDULES: &[&str] = &["cosine", "linear", "constant"];
pub const CONFIDENCES: &[&str] = &["auto", "sequence", "min-token", "margin", "agreement"];

/// A flag whose value `T` parses; `names` are the canonical spellings `--help` lists.
pub fn one_of<T>(names: &'static [&'static str]) -> OneOf<T> {
    OneOf { names, _parsed: PhantomData }
}

pub struct OneOf<T> {
    names: &'static [&'static str],
    _parsed: PhantomData<fn() -> T>,
}

impl<T> Clone for OneOf<T> {
    fn clone(&self) -> Self {
        one_of(self.names)
    }
}

impl<T> TypedValueParser for OneOf<T>
where
    T: FromStr + 'static,
    T::Err: Display,
{
    type Value = String;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<String, clap::Error> {
        let flag = arg
            .map_or_else(|| "the value".to_string(), |a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())));
        let Some(text) = value.to_str() else {
            return Err(clap::Error::raw(ErrorKind::InvalidUtf8, format!("{flag}: not UTF-8\n")).with_cmd(cmd));
        };
        match text.parse::<T>() {
            Ok(_) => Ok(text.to_string()),
            Err(e) => {
                let why = e.to_string();
                // The domain's message, with the values when it does not list them itself.
                let listed = self.names.iter().all(|n| why.contains(n));
                let values =
                    if listed { String::new() } else { format!("\n  possible values: {}", self.names.join(", ")) };
                let message = if why.contains(&flag) { why } else { format!("{flag} {text:?}: {why}") };
                Err(clap::Error::raw(ErrorKind::InvalidValue, format!("{message}{values}\n")).with_cmd(cmd))
            }
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.names.iter().map(|n| PossibleValue::new(*n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_parse<T: FromStr>(names: &[&str]) {
        for n in names {
            assert!(n.parse::<T>().is_ok(), "{n} does not parse");
        }
    }

    /// The lists name values the domain types take, and the formats list is all of them.
    #[test]
    fn every_listed_value_parses() {
        all_parse::<mmloop_formats::Format>(FORMATS);
        assert_eq!(FORMATS, mmloop_formats::Format::ALL.map(mmloop_formats::Format::name));
        all_parse::<mmloop_core::Task>(TASKS);
        all_parse::<mmloop_eval::EvalTask>(EVAL_TASKS);
        all_parse::<mmloop_engine::embedded::Device>(DEVICES);
        all_parse::<mmloop_engine::embedded::Dtype>(DTYPES);
        all_parse::<mmloop_metrics::vqa::VqaVariant>(VQA_VARIANTS);
        all_parse::<mmloop_store::route_plan::ScoreKind>(SCORES);
        all_parse::<mmloop_metrics::selective::PValue>(P_VALUES);
        all_parse::<mmloop_engine::ConfidenceSource>(CONFIDENCES);
    }
}
