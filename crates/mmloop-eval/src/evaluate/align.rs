//! Matching predictions to references by id: what is scored, and what is missing on
//! either side (an error unless `--allow-missing`).

use std::collections::{HashMap, HashSet};

use super::{Missed, Missing};
use crate::error::EvalError;
use crate::predictions::{Prediction, Predictions};
use crate::references::{Reference, References};

pub(super) struct Aligned<'a> {
    pub pairs: Vec<(&'a Reference, &'a Prediction)>,
    pub missing: Missing,
}

pub(super) fn align<'a>(
    preds: &'a Predictions,
    refs: &'a References,
    allow_missing: bool,
) -> Result<Aligned<'a>, EvalError> {
    let by_id: HashMap<&str, &Prediction> = preds.items.iter().map(|p| (p.id.as_str(), p)).collect();
    let ref_ids: HashSet<&str> = refs.items.iter().map(|r| r.id.as_str()).collect();
    let mut missing = Missing::default();
    let mut pairs = Vec::with_capacity(refs.items.len());
    for r in &refs.items {
        match by_id.get(r.id.as_str()) {
            Some(p) => pairs.push((r, *p)),
            None => missing.references_without_prediction.push(Missed { id: r.id.clone(), at: r.at.to_string() }),
        }
    }
    for p in &preds.items {
        if !ref_ids.contains(p.id.as_str()) {
            missing.predictions_without_reference.push(Missed { id: p.id.clone(), at: p.at.to_string() });
        }
    }
    if !allow_missing {
        let file = preds.file.display();
        if let Some(first) = missing.references_without_prediction.first() {
            return Err(EvalError::Missing {
                what: format!("references have no prediction in {file}"),
                count: missing.references_without_prediction.len(),
                first: format!("id {} at {}", first.id, first.at),
                matched: pairs.len(),
            });
        }
        if let Some(first) = missing.predictions_without_reference.first() {
            return Err(EvalError::Missing {
                what: format!("predictions have no reference in {}", refs.source),
                count: missing.predictions_without_reference.len(),
                first: format!("id {} at {}", first.id, first.at),
                matched: pairs.len(),
            });
        }
    }
    // An empty answer is an answer (a wrong one, usually), as the official VQA, ANLS and
    // SQuAD scripts score it; it is listed in metrics.json and warned about, never refused.
    for (_, p) in &pairs {
        if p.answer.trim().is_empty() {
            missing.empty_predictions.push(Missed { id: p.id.clone(), at: p.at.to_string() });
        }
    }
    if pairs.is_empty() {
        return Err(EvalError::usage(
            format!("no prediction in {} matches a reference in {}", preds.file.display(), refs.source),
            "predictions and references are matched by id (question_id, image_id for captions); are they of the same split?",
        ));
    }
    Ok(Aligned { pairs, missing })
}
