//! The mmloop data model: what an item, an image, a candidate, a label and a version are.
//!
//! Every other crate speaks in these types. This crate does no I/O and knows no storage or
//! file format; it only defines the values and how their content is hashed, so that the
//! same content always gets the same id wherever it is computed.

pub mod candidate;
pub mod hash;
pub mod model;
pub mod record;
pub mod redact;
pub mod risk;

pub use candidate::{Candidate, ConfidenceDetail, Finish};
pub use hash::{Digest, ItemContent, LabelContent, canonical_json, row_digest, version_digest};
pub use model::{Answer, HumanAnswer, LabelStatus, Message, ParseEnumError, Prediction, RunStatus, Task};
pub use record::{ImageInfo, ImageSource, Location, Record, RecordError};
pub use risk::RiskFlag;
