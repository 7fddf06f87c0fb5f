//! SHA-256 content digests, computed while bytes stream past.

use std::io::{self, Write};

use oci_spec::image::{Digest, Sha256Digest};
use sha2::{Digest as _, Sha256};

/// Turns 32 hash bytes into the `sha256:<hex>` digest of the OCI specs.
pub(crate) fn digest_from_bytes(hash: &[u8]) -> Digest {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(hash.len() * 2);
    for byte in hash {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    // 64 lowercase hex characters always form a valid SHA-256 digest.
    match hex.parse::<Sha256Digest>() {
        Ok(sha) => sha.into(),
        Err(_) => unreachable!("64 lowercase hex characters are a valid sha256 digest"),
    }
}

/// The digest of a byte slice.
pub(crate) fn sha256_of(bytes: &[u8]) -> Digest {
    digest_from_bytes(&Sha256::digest(bytes))
}

/// A writer that hashes and counts everything written through it before
/// handing it to `inner`.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the digest and the number of bytes written.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        let digest = digest_from_bytes(&self.hasher.finalize());
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(
            sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() -> io::Result<()> {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ")?;
        w.write_all(b"world")?;
        let (inner, digest, len) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(len, 11);
        assert_eq!(digest, sha256_of(b"hello world"));
        Ok(())
    }
}
