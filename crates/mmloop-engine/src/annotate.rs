//! From a question to a candidate: ask the backend, compute the confidence from the
//! answer's token log-probabilities (plus extra samples for self-consistency when asked),
//! and run the risk rules. The same for every backend.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{Backend, GenRequest, Generation, Prompt};
use mmloop_core::{Candidate, Finish};

use crate::confidence;
use crate::params::{DEFAULT_SAMPLE_TEMPERATURE, GenParams};
use crate::rules::{RuleInput, RuleSet};
use crate::{EngineError, Result};

/// Which number becomes a candidate's `confidence`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceSource {
    /// Agreement with `--samples`, the sequence probability otherwise.
    #[default]
    Auto,
    Sequence,
    MinToken,
    Margin,
    Agreement,
}

impl std::str::FromStr for ConfidenceSource {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.replace('-', "_").as_str() {
            "auto" => ConfidenceSource::Auto,
            "sequence" => ConfidenceSource::Sequence,
            "min_token" => ConfidenceSource::MinToken,
            "margin" => ConfidenceSource::Margin,
            "agreement" => ConfidenceSource::Agreement,
            _ => {
                return Err(EngineError::Config(format!(
                    "unknown confidence {s:?}: expected auto, sequence, min-token, margin or agreement"
                )));
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct AnnotatorOptions {
    pub params: GenParams,
    /// Extra sampled answers per question for self-consistency (0: none).
    pub samples: usize,
    /// Their temperature when the answer itself is greedy.
    pub sample_temperature: f64,
    pub confidence: ConfidenceSource,
}

impl AnnotatorOptions {
    pub fn new(params: GenParams) -> Self {
        AnnotatorOptions {
            params,
            samples: 0,
            sample_temperature: DEFAULT_SAMPLE_TEMPERATURE,
            confidence: ConfidenceSource::Auto,
        }
    }

    /// Everything that changes answers or their scores, for the run's params hash.
    pub fn identity(&self) -> Value {
        let mut v = self.params.identity();
        if self.samples > 0 {
            v["samples"] = self.samples.into();
            v["sample_temperature"] = self.sample_temperature.into();
        }
        v
    }
}

/// One question to answer.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Prompt,
    /// A number unique to the item (its id), mixed into sampling seeds.
    pub stream: u64,
    pub is_caption: bool,
    /// The dataset's answer type (VQAv2 `yes/no`, `number`, `other`) when known.
    pub answer_type: Option<String>,
}

/// A candidate and how its generation went.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub candidate: Candidate,
    pub finish: Finish,
    /// OpenAI shape: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    pub logprobs: Option<Value>,
}

pub struct Annotator {
    backend: Arc<dyn Backend>,
    scorer: Scorer,
}

impl Annotator {
    pub fn new(backend: Arc<dyn Backend>, rules: RuleSet, opts: AnnotatorOptions) -> Self {
        Annotator { backend, scorer: Scorer::new(rules, opts) }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn options(&self) -> &AnnotatorOptions {
        &self.scorer.opts
    }

    pub fn rules(&self) -> &RuleSet {
        &self.scorer.rules
    }

    /// How many questions to keep in flight (each may carry extra samples).
    pub fn max_in_flight(&self) -> usize {
        (self.backend.max_in_flight() / (1 + self.scorer.opts.samples)).max(1)
    }

    fn sample_params(&self) -> GenParams {
        let mut p = self.scorer.opts.params.clone();
        if p.is_greedy() {
            p.temperature = self.scorer.opts.sample_temperature;
        }
        if p.top_k == 1 {
            p.top_k = 0;
        }
        p.top_logprobs = 0;
        p
    }

    /// Answers one question.
    pub async fn annotate(&self, job: Job) -> Result<Annotation> {
        let main = self.backend.generate(GenRequest {
            prompt: job.prompt.clone(),
            params: self.scorer.opts.params.clone(),
            stream: job.stream,
            adapter: None,
        });
        let sp = self.sample_params();
        let extra = (0..self.scorer.opts.samples).map(|i| {
            self.backend.generate(GenRequest {
                prompt: job.prompt.clone(),
                params: sp.clone(),
                stream: job.stream ^ ((i as u64 + 1) << 56),
                adapter: None,
            })
        });
        let (main, extra) = futures::join!(main, futures::future::join_all(extra));
        let g: Generation = main?;
        let samples: Vec<String> = extra.into_iter().collect::<Result<Vec<_>>>()?.into_iter().map(|g| g.text).collect();
        Ok(self.finish(&job, g, samples))
    }

    /// Scores and flags a generation (public for backends' tests and for re-scoring).
    pub fn finish(&self, job: &Job, g: Generation, samples: Vec<String>) -> Annotation {
        self.scorer.finish(job, g, samples)
    }
}

/// The confidence and risk flags of an answer: the part of an [`Annotator`] that needs no
/// model, for answers generated elsewhere (a proxied server's).
pub struct Scorer {
    rules: RuleSet,
    opts: AnnotatorOptions,
}

impl Scorer {
    pub fn new(rules: RuleSet, opts: AnnotatorOptions) -> Self {
        Scorer { rules, opts }
    }

    /// Scores and flags a generation; `samples` are extra answers to the same question.
    pub fn finish(&self, job: &Job, g: Generation, samples: Vec<String>) -> Annotation {
        let answer = g.text.trim().to_string();
        let mut detail = confidence::from_tokens(&g.tokens);
        let agreement = confidence::agreement(&answer, &samples);
        if let Some(d) = &mut detail {
            d.agreement = agreement;
            d.samples = samples.clone();
        }
        let source = match self.opts.confidence {
            ConfidenceSource::Auto if agreement.is_some() => ConfidenceSource::Agreement,
            ConfidenceSource::Auto => ConfidenceSource::Sequence,
            s => s,
        };
        let score = match source {
            ConfidenceSource::Agreement => agreement,
            ConfidenceSource::Sequence => detail.as_ref().map(|d| d.sequence_prob),
            ConfidenceSource::MinToken => detail.as_ref().map(|d| d.min_token_prob),
            ConfidenceSource::Margin => detail.as_ref().and_then(|d| d.first_token_margin).map(|m| m.max(0.0)),
            ConfidenceSource::Auto => unreachable!("resolved above"),
        };
        if let Some(d) = &mut detail {
            d.source = serde_json::to_value(source).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        }
        let question = job.prompt.text.replace("<image>", "");
        let flags = self.rules.evaluate(&RuleInput {
            question: question.trim(),
            answer: &answer,
            is_caption: job.is_caption,
            answer_type: job.answer_type.as_deref(),
            confidence: score,
            agreement,
            finish_reason: Some(&g.finish_reason),
        });
        Annotation {
            logprobs: g.logprobs_json(self.opts.params.top_logprobs),
            finish: Finish {
                completion_tokens: g.tokens.iter().filter(|t| !t.special).count(),
                finish_reason: g.finish_reason,
                prompt_tokens: g.prompt_tokens,
            },
            candidate: Candidate { answer, confidence: score, detail, flags },
        }
    }
}
