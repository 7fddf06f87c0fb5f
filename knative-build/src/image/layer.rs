//! Writing one layer: a reproducible tar, gzip-compressed, straight to a
//! blob file.
//!
//! Every header is normalized (mtime = the build's epoch, uid/gid 0, empty
//! user and group names, permission bits kept) and entries come in the
//! sorted order of [`super::source`], so the same tree gives the same bytes.
//! The gzip header carries mtime 0 and no file name.
//!
//! Two threads share the work, like `tar czf` does with its gzip child: the
//! calling thread reads files, writes the tar stream and hashes it (the
//! `diff_id`); a second thread compresses, hashes the compressed bytes (the
//! blob digest) and writes them to disk. They pass 256 KiB chunks through a
//! bounded channel, so memory stays small whatever the layer size and
//! nothing is read or hashed twice.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use flate2::{Compression, GzBuilder};
use oci_spec::image::Digest;

use super::ImageError;
use super::digest::HashingWriter;
use super::source::{EntryKind, SourceEntry};

/// Size of the chunks handed from the tar thread to the gzip thread.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A layer written to disk.
#[derive(Clone, Debug)]
pub(crate) struct WrittenLayer {
    /// Digest of the compressed blob (the manifest's layer digest).
    pub(crate) digest: Digest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub(crate) diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub(crate) size: u64,
}

/// Writes `entries` as a gzip-compressed tar to `blob_path`.
pub(crate) fn write_layer(
    entries: &[&SourceEntry],
    mtime: u64,
    level: u32,
    blob_path: &Path,
) -> Result<WrittenLayer, ImageError> {
    let file = File::create(blob_path).map_err(|e| ImageError::write(blob_path, e))?;
    let (sender, receiver) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);

    std::thread::scope(|scope| {
        let compressor = std::thread::Builder::new()
            .name("knative-build-gzip".to_string())
            .spawn_scoped(scope, move || compress(receiver, file, level))
            .map_err(|e| ImageError::Task(format!("cannot start the gzip thread: {e}")))?;
        let tar_result = write_tar(entries, mtime, ChunkSender::new(sender));
        // Joining after the sender is dropped (inside `write_tar`, on success
        // and on error) lets the compressor see the end of the stream.
        let compressed = compressor
            .join()
            .map_err(|_| ImageError::Task("the gzip thread panicked".to_string()))?;
        let (diff_id, _tar_len) = match tar_result {
            Ok(done) => done,
            Err(TarError::Source(err)) => return Err(err),
            // The gzip side stopped first: its own error says why.
            Err(TarError::Sink(io)) => {
                return Err(match compressed {
                    Err(err) => ImageError::write(blob_path, err),
                    Ok(_) => ImageError::write(blob_path, io),
                });
            }
        };
        let (digest, size) = compressed.map_err(|e| ImageError::write(blob_path, e))?;
        Ok(WrittenLayer {
            digest,
            diff_id,
            size,
        })
    })
}

/// Why the tar side stopped.
enum TarError {
    /// A source file could not be read (or changed under us).
    Source(ImageError),
    /// Writing to the gzip thread failed.
    Sink(io::Error),
}

fn write_tar(
    entries: &[&SourceEntry],
    mtime: u64,
    sink: ChunkSender,
) -> Result<(Digest, u64), TarError> {
    let mut tar = tar::Builder::new(HashingWriter::new(sink));
    for entry in entries {
        append_entry(&mut tar, entry, mtime)?;
    }
    let hashing = tar.into_inner().map_err(TarError::Sink)?;
    let (mut sink, diff_id, len) = hashing.finish();
    sink.flush().map_err(TarError::Sink)?;
    Ok((diff_id, len))
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &SourceEntry,
    mtime: u64,
) -> Result<(), TarError> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(entry.mode);
    let path = bytes_to_path(&entry.image_path);
    match &entry.kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            let mut with_slash = entry.image_path.clone();
            with_slash.push(b'/');
            tar.append_data(&mut header, bytes_to_path(&with_slash), io::empty())
                .map_err(|e| classify(e, entry, None))
        }
        EntryKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, path, target)
                .map_err(|e| classify(e, entry, None))
        }
        EntryKind::File { size } => {
            let source = entry.source.as_deref().unwrap_or(Path::new(""));
            let file =
                File::open(source).map_err(|e| TarError::Source(ImageError::read(source, e)))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(*size);
            let mut reader = ExactReader {
                file,
                remaining: *size,
                fault: None,
            };
            tar.append_data(&mut header, path, &mut reader)
                .map_err(|e| classify(e, entry, reader.fault.take()))
        }
    }
}

/// Sorts an I/O error from the tar builder into "the source is bad" and
/// "the output is bad".
fn classify(err: io::Error, entry: &SourceEntry, fault: Option<Fault>) -> TarError {
    let path = entry.source.clone().unwrap_or_default();
    match fault {
        Some(Fault::Read(source)) => TarError::Source(ImageError::read(path, source)),
        Some(Fault::Shrunk(expected)) => {
            TarError::Source(ImageError::SourceChanged { path, expected })
        }
        // Path or link name the tar format cannot hold.
        None if err.kind() == io::ErrorKind::Other && entry.source.is_some() => {
            TarError::Source(ImageError::read(path, err))
        }
        None => TarError::Sink(err),
    }
}

#[cfg(unix)]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// What went wrong while reading a source file.
enum Fault {
    Read(io::Error),
    Shrunk(u64),
}

/// Reads exactly the size that was listed for a file: a file that grew is
/// cut at that size, one that shrank is an error (the tar header already
/// promised the size).
struct ExactReader {
    file: File,
    remaining: u64,
    fault: Option<Fault>,
}

impl ExactReader {
    fn fail(&mut self, fault: Fault) -> io::Error {
        self.fault = Some(fault);
        io::Error::other("source file could not be read")
    }
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.file.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(Fault::Read(e))),
            }
        };
        if n == 0 {
            let expected = self.remaining;
            return Err(self.fail(Fault::Shrunk(expected)));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The tar side of the channel: collects writes into chunks.
struct ChunkSender {
    buf: Vec<u8>,
    sender: Option<SyncSender<Vec<u8>>>,
}

impl ChunkSender {
    fn new(sender: SyncSender<Vec<u8>>) -> Self {
        Self {
            buf: Vec::with_capacity(CHUNK),
            sender: Some(sender),
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the gzip thread stopped");
        self.sender
            .as_ref()
            .ok_or_else(closed)?
            .send(chunk)
            .map_err(|_| closed())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    /// Sends what is buffered and closes the channel: called once, at the end.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()?;
        self.sender = None;
        Ok(())
    }
}

/// The gzip side: compresses the chunks, hashes the output and writes it.
fn compress(receiver: Receiver<Vec<u8>>, file: File, level: u32) -> io::Result<(Digest, u64)> {
    let out = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, Compression::new(level));
    for chunk in receiver {
        gz.write_all(&chunk)?;
    }
    let out = gz.finish()?;
    let (buffered, digest, size) = out.finish();
    buffered.into_inner().map_err(|e| e.into_error())?;
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use flate2::read::GzDecoder;

    use super::super::source::scan;
    use super::*;

    fn build(dir: &Path, out: &Path) -> Result<WrittenLayer, ImageError> {
        let scan = scan(dir, b"")?;
        let entries: Vec<&SourceEntry> = scan.entries.iter().collect();
        write_layer(&entries, 0, 6, out)
    }

    #[test]
    fn layer_round_trips_with_normalized_headers() -> Result<(), Box<dyn std::error::Error>> {
        let src = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        fs::create_dir(src.path().join("bin"))?;
        fs::write(src.path().join("bin/run"), "#!/bin/sh\necho hi\n")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                src.path().join("bin/run"),
                fs::Permissions::from_mode(0o755),
            )?;
            std::os::unix::fs::symlink("bin/run", src.path().join("run"))?;
        }
        let blob = out.path().join("blob");
        let layer = build(src.path(), &blob)?;
        let bytes = fs::read(&blob)?;
        assert_eq!(layer.size, bytes.len() as u64);
        assert_eq!(layer.digest, super::super::digest::sha256_of(&bytes));

        let mut tar_bytes = Vec::new();
        GzDecoder::new(&bytes[..]).read_to_end(&mut tar_bytes)?;
        assert_eq!(layer.diff_id, super::super::digest::sha256_of(&tar_bytes));

        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            assert_eq!(header.mtime()?, 0);
            assert_eq!(header.uid()?, 0);
            assert_eq!(header.gid()?, 0);
            assert_eq!(header.username()?, Some(""));
            seen.push((entry.path()?.to_string_lossy().into_owned(), header.mode()?));
        }
        assert_eq!(seen[0].0, "bin/");
        assert_eq!(seen[1], ("bin/run".to_string(), 0o755));
        #[cfg(unix)]
        assert_eq!(seen[2].0, "run");
        Ok(())
    }

    #[test]
    fn same_tree_gives_same_digests() -> Result<(), Box<dyn std::error::Error>> {
        let src = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        for i in 0..50 {
            fs::write(
                src.path().join(format!("f{i}")),
                format!("file {i}\n").repeat(i),
            )?;
        }
        let a = build(src.path(), &out.path().join("a"))?;
        let b = build(src.path(), &out.path().join("b"))?;
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_file_is_an_error_naming_it() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        let secret = src.path().join("secret");
        fs::write(&secret, "x")?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o000))?;
        if File::open(&secret).is_ok() {
            // Running as root: permissions do not stop us; nothing to test.
            return Ok(());
        }
        let err = build(src.path(), &out.path().join("blob")).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("secret"), "{message}");
        Ok(())
    }
}
