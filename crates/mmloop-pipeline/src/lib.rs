//! The loop's jobs as a library, for the command line and the servers alike:
//! - [`infer`]: a pre-annotation run over a project's pending items (candidates stored,
//!   resumable by params hash) or over a dataset file (a JSONL of answers);
//! - [`transfer`]: dataset files into a project and a project's version out to a file;
//! - [`sft`]: LoRA / DoRA fine-tuning on a version's trusted labels or a dataset file, in
//!   ms-swift's output layout, recorded as a `train` run;
//! - [`swift`]: the hand-off of a training run to ms-swift (`swift sft`), followed and recorded.
//!
//! Nothing here prints or reads the terminal: progress goes through a trait, a run stops
//! when the future its caller hands in resolves (Ctrl-C in the CLI, a request in a server).

pub mod infer;
pub mod sft;
pub mod swift;
pub mod transfer;
