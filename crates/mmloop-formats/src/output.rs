//! Output files that appear whole or not at all: written to a temporary file beside the
//! target, then renamed over it.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tempfile::NamedTempFile;

use crate::error::FormatError;

/// A temporary file beside the target. Temporary files are created owner-only; the
/// finished file should be an ordinary one.
pub(crate) fn temp_file_in(dir: &Path) -> std::io::Result<NamedTempFile> {
    let mut b = tempfile::Builder::new();
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    b.tempfile_in(dir)
}

pub(crate) struct AtomicFile {
    path: PathBuf,
    out: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    pub(crate) fn create(path: &Path) -> Result<Self, FormatError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, e))?;
        let tmp = temp_file_in(dir).map_err(|e| FormatError::io(dir, e))?;
        Ok(AtomicFile { path: path.to_path_buf(), out: BufWriter::with_capacity(1 << 20, tmp) })
    }

    pub(crate) fn write_all(&mut self, b: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(b).map_err(|e| FormatError::io(&self.path, e))
    }

    pub(crate) fn json<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FormatError> {
        serde_json::to_writer(&mut self.out, v).map_err(|e| FormatError::io(&self.path, std::io::Error::other(e)))
    }

    /// Flushes, syncs and renames into place.
    pub(crate) fn commit(self) -> Result<PathBuf, FormatError> {
        let path = self.path;
        let tmp = self.out.into_inner().map_err(|e| FormatError::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| FormatError::io(&path, e))?;
        tmp.persist(&path).map_err(|e| FormatError::io(&path, e.error))?;
        Ok(path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One JSON value per line.
pub(crate) struct JsonLines(pub AtomicFile);

impl JsonLines {
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FormatError> {
        self.0.json(v)?;
        self.0.write_all(b"\n")
    }
}

/// A JSON array written element by element, one element per line.
pub(crate) struct JsonArray {
    file: AtomicFile,
    first: bool,
}

impl JsonArray {
    pub(crate) fn create(path: &Path) -> Result<Self, FormatError> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(b"[")?;
        Ok(JsonArray { file, first: true })
    }

    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FormatError> {
        self.file.write_all(if self.first { b"\n" } else { b",\n" })?;
        self.first = false;
        self.file.json(v)
    }

    pub(crate) fn commit(mut self) -> Result<PathBuf, FormatError> {
        self.file.write_all(b"\n]\n")?;
        self.file.commit()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finished_files_are_ordinary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"[]").unwrap();
        f.commit().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
