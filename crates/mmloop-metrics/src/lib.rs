//! Evaluation metrics for VQA and image captioning, as pure functions.
//!
//! Every metric here reproduces a named reference implementation bit for bit (see each
//! module's doc comment for the reference and its version). This crate never does I/O:
//! callers read predictions and references and hand them in as plain Rust values.

pub mod ab;
pub mod agreement;
pub mod bleu;
pub mod calibration;
pub mod choice;
pub mod cider;
pub mod coco;
pub mod compare;
pub mod meteor;
mod ngrams;
pub mod numeric;
pub mod ptb;
pub mod pyfloat;
pub mod pystr;
pub mod rouge;
pub mod selective;
#[doc(hidden)]
pub mod selective_sim;
pub mod text;
pub mod vqa;
