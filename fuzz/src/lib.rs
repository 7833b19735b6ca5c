//! The harness the importer fuzz targets share: it writes the fuzzer's bytes to a scratch
//! file (tmpfs where there is one), reads it with `mmloop_formats::read`, and checks what
//! must hold for any input: no panic, every record and every error names the input file,
//! and a sink that says `Break` gets nothing more. Hangs and memory blow-ups are caught by
//! libFuzzer's `-timeout` and `-rss_limit_mb`. It never writes outside its scratch folder.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mmloop_core::{Location, Record, RecordError};
use mmloop_formats::{Format, FormatError, ReadOptions};

/// A private folder for this fuzzing process: `$MMLOOP_FUZZ_SCRATCH`, else `/dev/shm`,
/// else the system temp folder, plus `mmloop-fuzz-<pid>`. Private so that readers which
/// look beside the file (VQAv2 finds its annotations file there) see only our files.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::env::var_os("MMLOOP_FUZZ_SCRATCH") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("mmloop-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch folder");
        dir
    })
}

/// Lets panics raised inside the `parquet` and `arrow` crates unwind instead of aborting,
/// so that the Parquet reader's own guard can turn them into a file error, as it does
/// outside the fuzzer. A panic that the reader does not catch still reaches libFuzzer's
/// handler and is reported as a crash; any other panic aborts at once, as before. Each
/// place the decoder panicked is printed once, so upstream bugs can be reported.
pub fn let_decoder_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        let seen = std::sync::Mutex::new(std::collections::HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let decoder = ["/parquet-", "/arrow-"].iter().any(|c| at.contains(c) && at.contains("/registry/"));
            if !decoder {
                return libfuzzer_hook(info);
            }
            if seen.lock().map(|mut s| s.insert(at.clone())).unwrap_or(false) {
                eprintln!("decoder panic (first at this place): {info}");
            }
        }));
    });
}

/// Whether `data` holds what looks like a Thrift list or map of booleans with more
/// elements than the file has bytes. parquet 60.1 skips such elements as if they took no
/// bytes (in the compact protocol each takes one), so an unknown field of that shape in a
/// footer or page header spins through up to 2^31 empty iterations: under the fuzzer's
/// instrumentation, seconds per list (see fuzz/README.md). The Parquet targets skip these
/// inputs so that runs go on finding other bugs; the match is loose, which only costs a
/// few inputs.
pub fn has_huge_thrift_bool_collection(data: &[u8]) -> bool {
    let varint = |at: usize| -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (k, &b) in data.get(at..)?.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * k);
            if b & 0x80 == 0 {
                return Some((v, at + k + 1));
            }
        }
        None
    };
    let bool_type = |nibble: u8| nibble == 1 || nibble == 2;
    let limit = data.len() as u64;
    (0..data.len()).any(|i| {
        // A list or set header: size nibble 15 (a varint follows) and a bool element type.
        let list = data[i] >> 4 == 15 && bool_type(data[i] & 15) && varint(i + 1).is_some_and(|(n, _)| n > limit);
        // A map header: a varint size, then key and value types, both bool.
        let map = varint(i).is_some_and(|(n, end)| {
            n > limit && data.get(end).is_some_and(|&kv| bool_type(kv >> 4) && bool_type(kv & 15))
        });
        list || map
    })
}

/// Writes `data` to `name` in the scratch folder and returns its path.
pub fn input_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("write the fuzz input");
    path
}

/// What one read produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub errors: u64,
}

/// Reads `path` as `format` twice (to the end, then stopping at the first item) and checks
/// the properties every reader must keep, panicking where one fails.
pub fn read_checked(format: Format, path: &Path, opts: &ReadOptions) -> Counts {
    let mut counts = Counts::default();
    let full = mmloop_formats::read(format, path, opts, &mut |item| {
        check_item(format, path, &item);
        match item {
            Ok(_) => counts.records += 1,
            Err(_) => counts.errors += 1,
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = &full {
        check_file_error(format, path, e);
    }

    let mut after_break = 0u64;
    let first = mmloop_formats::read(format, path, opts, &mut |_| {
        after_break += 1;
        ControlFlow::Break(())
    });
    assert!(after_break <= 1, "{format}: the reader went on after the sink said Break ({after_break} items)");
    // Stopping early may skip a file error found later, never invent one.
    if full.is_ok() {
        assert!(first.is_ok(), "{format}: stopping early turned a good read into {:?}", first.err());
    }
    counts
}

fn check_item(format: Format, path: &Path, item: &Result<Record, RecordError>) {
    match item {
        Ok(r) => check_location(format, path, &r.source, "record"),
        Err(e) => {
            check_location(format, path, &e.location, "record error");
            let _ = e.to_string();
        }
    }
}

fn check_location(format: Format, path: &Path, loc: &Location, what: &str) {
    assert_eq!(loc.file.as_path(), path, "{format}: a {what} names another file: {loc}");
    let _ = loc.to_string();
}

/// File errors must name the input too; usage errors name it in their text.
pub fn check_file_error(format: impl std::fmt::Display, path: &Path, e: &FormatError) {
    let text = e.to_string();
    match e {
        FormatError::Io { path: p, .. }
        | FormatError::Unknown { path: p, .. }
        | FormatError::Parquet { path: p, .. } => {
            assert_eq!(p, path, "{format}: a file error names another file: {text}")
        }
        FormatError::File(re) => {
            assert_eq!(re.location.file.as_path(), path, "{format}: a file error names another file: {text}")
        }
        FormatError::Usage(msg) => {
            assert!(msg.starts_with(&path.display().to_string()), "{format}: a usage error without the file: {msg}")
        }
    }
}
