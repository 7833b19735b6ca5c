//! Readers of one JSON document (COCO captions, VQAv2, TextVQA) and of JSON arrays of
//! tasks (Label Studio, LLaVA). VQAv2 is read once alone and once with the same file as
//! its `--annotations`, so one input holding both `questions` and `annotations` drives
//! the join.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmloop_formats::{Format, ReadOptions};
use mmloop_fuzz::{input_file, read_checked};

fuzz_target!(|data: &[u8]| {
    let path = input_file("input.json", data);
    let opts = ReadOptions::default();
    for format in [Format::Coco, Format::Vqav2, Format::TextVqa, Format::LabelStudio, Format::Llava] {
        read_checked(format, &path, &opts);
    }
    let joined = ReadOptions { annotations: Some(path.clone()), ..ReadOptions::default() };
    read_checked(Format::Vqav2, &path, &joined);
});
