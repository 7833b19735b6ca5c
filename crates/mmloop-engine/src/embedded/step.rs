//! The hook that makes mistralrs generate our tokens: a per-request logits processor
//! that sees each step's raw f32 logits, records the exact log-probabilities, chooses the
//! next token itself ([`crate::logprobs::step`]), and hands mistralrs a row that is `-inf`
//! everywhere but the chosen id, so its greedy sampler can only emit that token.
//!
//! mistralrs calls it once per generated token (the first one after prefill included),
//! after its own penalties (all off: requests go out deterministic) and before its argmax.

use std::sync::Mutex;

use mistralrs::{CustomLogitsProcessor, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::logprobs::{self, Step, StepPolicy};
use crate::params::GenParams;

pub struct StepRecorder {
    policy: StepPolicy,
    min_new_tokens: usize,
    eos: Vec<u32>,
    rng: Mutex<StdRng>,
    steps: Mutex<Vec<Step>>,
}

impl StepRecorder {
    pub fn new(params: &GenParams, stream: u64, eos: Vec<u32>) -> Self {
        StepRecorder {
            policy: StepPolicy {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                repetition_penalty: params.repetition_penalty,
                // Two at least: the first-token margin needs the runner-up.
                top_n: params.top_logprobs.max(2),
            },
            min_new_tokens: params.min_new_tokens,
            eos,
            rng: Mutex::new(StdRng::seed_from_u64(logprobs::request_seed(params.seed, stream))),
            steps: Mutex::new(Vec::new()),
        }
    }

    pub fn take_steps(&self) -> Vec<Step> {
        std::mem::take(&mut *self.steps.lock().expect("steps lock"))
    }
}

impl CustomLogitsProcessor for StepRecorder {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let row: Vec<f32> = logits.flatten_all()?.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
        let mut steps = self.steps.lock().expect("steps lock");
        let suppress: &[u32] = if steps.len() < self.min_new_tokens { &self.eos } else { &[] };
        let step = {
            let mut rng = self.rng.lock().expect("rng lock");
            logprobs::step(&row, context, &self.policy, suppress, &mut *rng).map_err(candle_core::Error::msg)?
        };
        let mut forced = vec![f32::NEG_INFINITY; row.len()];
        forced[step.id as usize] = 0.0;
        steps.push(step);
        Tensor::from_vec(forced, logits.shape(), logits.device())
    }
}
