//! Files written whole or not at all.

use std::path::Path;

use crate::StoreError;

/// A temporary file beside a target, with ordinary permissions (tempfile's default is
/// owner-only, which would leak into the renamed file).
pub(crate) fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    b.tempfile_in(dir)
}

/// Writes a file whole or not at all.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_file_in(dir).map_err(|e| StoreError::IoPath { path: dir.into(), source: e })?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| StoreError::IoPath { path: path.into(), source: e })?;
    tmp.as_file().sync_all().map_err(|e| StoreError::IoPath { path: path.into(), source: e })?;
    tmp.persist(path).map_err(|e| StoreError::IoPath { path: path.into(), source: e.error })?;
    Ok(())
}
