//! Format detection, then reading with the detected format, as `mmloop import` does
//! without `--format`. The same bytes are tried under the names a user would give them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmloop_formats::{Format, ReadOptions};
use mmloop_fuzz::{
    check_file_error, has_huge_thrift_bool_collection, input_file, let_decoder_panics_unwind, read_checked,
};

fuzz_target!(|data: &[u8]| {
    let_decoder_panics_unwind();
    for name in ["data.json", "data.jsonl", "data"] {
        let path = input_file(name, data);
        match mmloop_formats::detect(&path) {
            Ok(Format::Folder) => panic!("a file detected as a folder"),
            Ok(Format::Parquet) if has_huge_thrift_bool_collection(data) => {} // see fuzz/README.md
            Ok(format) => {
                read_checked(format, &path, &ReadOptions::default());
            }
            Err(e) => check_file_error("detect", &path, &e),
        }
    }
});
