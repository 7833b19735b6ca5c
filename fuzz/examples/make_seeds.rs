//! Writes the binary seed of the `parquet` and `detect` corpora with mmloop's own Parquet
//! writer (the text seeds are written by hand). Rerun after changing the writer:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::path::Path;
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Message, Record, Task};
use mmloop_formats::{Format, WriteOptions};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let file = Arc::new("seed.jsonl".into());

    // A VQA turn with everything the HF layout carries: image bytes, ten-answer style
    // list with confidences, context, conversation, turn, split and extra metadata.
    let mut vqa = Record::new(Task::Vqa, "<image>What colour is the cat?", Location::line(&file, 1));
    vqa.id = Some("q1#1".into());
    vqa.images = vec![ImageSource::Bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec().into())];
    vqa.context = vec![Message::new("user", "Is there a cat?"), Message::new("assistant", "Yes.")];
    vqa.conversation = Some("q1".into());
    vqa.turn = 1;
    vqa.answer = Some(Answer {
        text: Some("black".into()),
        all: vec![
            HumanAnswer { answer: "black".into(), confidence: Some("yes".into()) },
            HumanAnswer { answer: "dark".into(), confidence: None },
        ],
    });
    vqa.split = Some("train".into());
    vqa.meta.insert("source".into(), "fuzz-seed".into());

    // A caption with an image path and nothing optional.
    let mut caption = Record::new(Task::Caption, "Describe this image.", Location::line(&file, 2));
    caption.images = vec![ImageSource::Path("images/dog.jpg".into())];
    caption.answer = Some(Answer::text("A dog on grass."));

    for dir in ["parquet", "detect"] {
        let out = corpus.join(dir).join("seed-hf.parquet");
        std::fs::create_dir_all(out.parent().expect("a parent")).expect("create the corpus folder");
        let records = [vqa.clone(), caption.clone()];
        mmloop_formats::write(Format::Parquet, &out, &mut records.into_iter(), &WriteOptions::default())
            .expect("write the parquet seed");
        println!("wrote {}", out.display());
    }
}
