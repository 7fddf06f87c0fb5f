//! Reading the build context: a sorted list of what goes into the layers.
//!
//! The tree is walked depth first with the names of each directory sorted by
//! their bytes, so the same tree always gives the same list, directories
//! before their contents. Symbolic links are kept as links (never followed),
//! hard links become separate regular files. Sockets, FIFOs and device nodes
//! have no place in an image layer built from a source tree: they are left
//! out and reported in [`SourceScan::skipped`] (and logged at `warn`).

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};

use super::ImageError;

/// What kind of entry a [`SourceEntry`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file of this many bytes (as listed; checked while read).
    File { size: u64 },
    /// A symbolic link to this target (kept verbatim).
    Symlink { target: PathBuf },
}

/// One entry of the build context.
#[derive(Clone, Debug)]
pub(crate) struct SourceEntry {
    /// Where it is on disk; `None` for directories made up by the builder
    /// (the parents of the target directory).
    pub(crate) source: Option<PathBuf>,
    /// Its path inside the image, relative, `/`-separated, without a
    /// trailing slash.
    pub(crate) image_path: Vec<u8>,
    /// Its path relative to the source root (`/`-separated), used to match
    /// layer prefixes; empty for the root and made-up directories.
    pub(crate) source_path: Vec<u8>,
    /// Directory, file or link.
    pub(crate) kind: EntryKind,
    /// Permission bits (`0o7777` mask): the exec bits are kept.
    pub(crate) mode: u32,
}

/// The result of walking the build context.
#[derive(Debug, Default)]
pub(crate) struct SourceScan {
    /// The entries in archive order.
    pub(crate) entries: Vec<SourceEntry>,
    /// Special files (sockets, FIFOs, devices) that were left out.
    pub(crate) skipped: Vec<PathBuf>,
}

/// Walks `root` and places its contents under `target` (a relative,
/// `/`-separated path inside the image; empty for the image root).
pub(crate) fn scan(root: &Path, target: &[u8]) -> Result<SourceScan, ImageError> {
    let meta = fs::metadata(root).map_err(|e| ImageError::read(root, e))?;
    if !meta.is_dir() {
        return Err(ImageError::read(
            root,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut out = SourceScan::default();
    if !target.is_empty() {
        // Parents of the target directory, then the target itself, which
        // stands for the source root and keeps its mode.
        let parts: Vec<&[u8]> = target.split(|b| *b == b'/').collect();
        for depth in 1..parts.len() {
            out.entries.push(SourceEntry {
                source: None,
                image_path: parts[..depth].join(&b'/'),
                source_path: Vec::new(),
                kind: EntryKind::Dir,
                mode: 0o755,
            });
        }
        out.entries.push(SourceEntry {
            source: Some(root.to_path_buf()),
            image_path: target.to_vec(),
            source_path: Vec::new(),
            kind: EntryKind::Dir,
            mode: mode_of(&meta),
        });
    }
    walk(root, target, &[], &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    image_prefix: &[u8],
    source_prefix: &[u8],
    out: &mut SourceScan,
) -> Result<(), ImageError> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(|e| ImageError::read(dir, e))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| ImageError::read(dir, e))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::read(&path, e))?;
        let name_bytes = os_bytes(&name);
        let image_path = join(image_prefix, &name_bytes);
        let source_path = join(source_prefix, &name_bytes);
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File { size: meta.len() }
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| ImageError::read(&path, e))?;
            EntryKind::Symlink { target }
        } else {
            tracing::warn!(path = %path.display(), "skipping special file (socket, FIFO or device)");
            out.skipped.push(path);
            continue;
        };
        let is_dir = kind == EntryKind::Dir;
        out.entries.push(SourceEntry {
            source: Some(path.clone()),
            image_path: image_path.clone(),
            source_path: source_path.clone(),
            kind,
            mode: mode_of(&meta),
        });
        if is_dir {
            walk(&path, &image_path, &source_path, out)?;
        }
    }
    Ok(())
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut joined = Vec::with_capacity(prefix.len() + 1 + name.len());
        joined.extend_from_slice(prefix);
        joined.push(b'/');
        joined.extend_from_slice(name);
        joined
    }
}

#[cfg(unix)]
fn os_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    name.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
fn mode_of(meta: &Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(meta: &Metadata) -> u32 {
    if meta.is_dir() { 0o755 } else { 0o644 }
}

/// Normalizes a path given by the caller (a layer prefix or the target
/// directory) to relative `/`-separated bytes without `.` components or
/// slashes at either end. `..` is refused.
pub(crate) fn normalize_image_path(
    setting: &'static str,
    path: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ImageError::setting(
                    setting,
                    format!("`{path}` must not contain `..`"),
                ));
            }
            other => parts.push(other.as_bytes()),
        }
    }
    Ok(parts.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(scan: &SourceScan) -> Vec<String> {
        scan.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.image_path).into_owned())
            .collect()
    }

    #[test]
    fn walk_is_sorted_depth_first_with_dirs_before_contents()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("b/inner"))?;
        fs::write(dir.path().join("b/inner/z"), "z")?;
        fs::write(dir.path().join("a.txt"), "a")?;
        fs::write(dir.path().join("c"), "c")?;
        let scan = scan(dir.path(), b"")?;
        assert_eq!(paths(&scan), ["a.txt", "b", "b/inner", "b/inner/z", "c"]);
        Ok(())
    }

    #[test]
    fn target_directory_parents_are_made_up() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("f"), "f")?;
        let scan = scan(dir.path(), b"opt/app")?;
        assert_eq!(paths(&scan), ["opt", "opt/app", "opt/app/f"]);
        assert_eq!(scan.entries[2].source_path, b"f");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn sockets_are_skipped_and_reported() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("keep"), "k")?;
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock"))?;
        let scan = scan(dir.path(), b"")?;
        assert_eq!(paths(&scan), ["keep"]);
        assert_eq!(scan.skipped, [dir.path().join("sock")]);
        Ok(())
    }

    #[test]
    fn missing_root_names_the_path() {
        let err = scan(Path::new("/definitely/not/here"), b"").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("/definitely/not/here"), "{message}");
    }

    #[test]
    fn image_paths_are_normalized_and_dotdot_refused() {
        assert!(matches!(
            normalize_image_path("target", "/opt//app/./"),
            Ok(p) if p == b"opt/app"
        ));
        assert!(normalize_image_path("target", "a/../b").is_err());
    }
}
