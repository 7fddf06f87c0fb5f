//! Reproducible OCI images from a directory, without Docker
//! (`specs/BUILD.md` §2).
//!
//! This is the "compile on the host, then add layers on a base image and
//! push" path of BUILD.md §2.1 (what ko and Jib do): only tar, gzip,
//! SHA-256 and the distribution API, no daemon and no privileges.
//!
//! - [`ImageBuilder`] turns a directory into gzip-compressed tar layers
//!   (one by default, more with [`ImageBuilder::layer`] path prefixes), an
//!   image config and a manifest (§2.2), on top of an optional base image
//!   pulled from a registry, and writes them into an [`OciLayout`] on disk
//!   (`oci-layout`, `index.json`, `blobs/sha256/...`).
//! - [`RegistryClient`] pushes a [`BuiltImage`] with the distribution API
//!   (§2.3): blobs the registry has are skipped after a `HEAD`, base layers
//!   are mounted across repositories, the rest is streamed from disk; it
//!   returns the manifest digest and the pinned `host/repo@sha256:...`
//!   reference. It also pulls images (the base image) into a layout.
//!
//! # Reproducibility
//! The same directory contents and settings give the same digest, whatever
//! the files' mtimes, owners or the order `readdir` returns them in:
//! entries are sorted, every tar header has mtime = the build's
//! [`source_date_epoch`](ImageBuilder::source_date_epoch) (default 0),
//! uid/gid 0 and empty user/group names; permission bits (the exec bit) and
//! symlinks are kept, directories are included; the gzip header has mtime 0
//! and no name; JSON documents are written with sorted keys; the config's
//! `created` is the same epoch. Hard links are stored as separate files.
//!
//! # Special files
//! Sockets, FIFOs and device nodes in the context are **skipped**: they
//! cannot be meaningfully shipped in a layer and tools leave sockets in
//! source trees. They are logged at `warn` and listed by
//! [`BuiltImage::skipped_files`]. A file that cannot be read is an error
//! naming it ([`ImageError::ReadSource`]).
//!
//! # Speed
//! The layer is written by two threads, one making and hashing the tar
//! stream, one compressing, hashing and writing it, as `tar czf` pipes tar
//! into gzip; both digests are computed on the way, nothing is read twice
//! and memory stays at a few 256 KiB chunks. gzip level 1
//! ([`DEFAULT_COMPRESSION_LEVEL`]; go-containerregistry's
//! `tarball.LayerFromOpener`, which ko builds on, also defaults to
//! `gzip.BestSpeed`) is the default. Measured with `benches/image.rs` on its
//! mixed 49.6 MB tree (2 shared cores, best of 3): `tar czf` (gzip -6)
//! 2.19 s / 20.8 MB; this builder at level 1 0.22 s / 24.2 MB (0.10×), at
//! level 3 0.67 s / 21.8 MB (0.31×), at level 6 2.26 s / 20.7 MB (1.03×).
//! Level 1 costs 16 % more bytes for a tenth of the time; pass
//! [`ImageBuilder::compression_level`] to trade time for size (a different
//! level gives different layer digests).

mod builder;
mod canonical_json;
mod config;
mod digest;
mod error;
mod layer;
mod layout;
mod registry;
mod source;

pub use builder::{
    BuiltImage, DEFAULT_COMPRESSION_LEVEL, ImageBuilder, LayerInfo, source_date_epoch,
};
pub use config::Platform;
pub use error::ImageError;
pub use layout::OciLayout;
pub use registry::{Credentials, PulledImage, PushedImage, RegistryClient, RegistryClientBuilder};
