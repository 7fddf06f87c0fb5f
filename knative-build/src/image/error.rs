//! The one error type of the `image` module.

use std::path::PathBuf;

/// Everything that can go wrong while building, writing, pulling or pushing
/// an image. Each variant names the file, reference or registry involved so
/// the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file or directory of the build context could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadSource {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A source file changed size while it was being archived.
    #[error("{} changed while it was being archived (expected {expected} bytes)", path.display())]
    SourceChanged {
        /// The file that changed.
        path: PathBuf,
        /// The size it had when it was listed.
        expected: u64,
    },

    /// A file of the OCI layout (or a temporary blob) could not be written
    /// or read back.
    #[error("cannot write {}: {source}", path.display())]
    WriteLayout {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A blob that the manifest needs is missing from the OCI layout.
    #[error("blob {digest} is missing from the OCI layout at {}", layout.display())]
    MissingBlob {
        /// The layout directory.
        layout: PathBuf,
        /// The digest of the missing blob.
        digest: String,
    },

    /// The OCI layout has no image with this tag.
    #[error("no image tagged `{tag}` in the OCI layout at {}", layout.display())]
    MissingTag {
        /// The layout directory.
        layout: PathBuf,
        /// The tag that was asked for.
        tag: String,
    },

    /// A builder setting is invalid (a bad env name, an absolute layer
    /// prefix, an unparsable `SOURCE_DATE_EPOCH`, ...).
    #[error("invalid image setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting, as named by its builder method.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An image reference such as `host:port/repo:tag` could not be parsed.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The text that was given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },

    /// The registry refused the credentials that were sent.
    #[error("registry {registry} rejected the credentials for user {user} ({status})")]
    AuthRejected {
        /// `host[:port]` of the registry.
        registry: String,
        /// The user name that was sent (`<bearer token>` for a token).
        user: String,
        /// The HTTP status the registry answered with (401 or 403).
        status: u16,
    },

    /// The registry wants credentials and none were configured for it.
    #[error(
        "registry {registry} requires credentials ({status}) and none are configured for it; \
         add them with RegistryClient::credentials"
    )]
    AuthRequired {
        /// `host[:port]` of the registry.
        registry: String,
        /// The HTTP status the registry answered with (401 or 403).
        status: u16,
    },

    /// A registry request failed for a reason other than authentication.
    #[error("registry {registry}: {action} failed: {source}")]
    Registry {
        /// `host[:port]` of the registry.
        registry: String,
        /// What was being done, e.g. `upload of blob sha256:...`.
        action: String,
        /// The error reported by the distribution client.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },

    /// The base image could not be used.
    #[error("base image {reference}: {reason}")]
    BaseImage {
        /// The base image reference.
        reference: String,
        /// Why it could not be used.
        reason: String,
    },

    /// An OCI document (manifest, config, index) could not be built or
    /// (de)serialized.
    #[error("invalid OCI {what}: {reason}")]
    Document {
        /// Which document (`manifest`, `image config`, `index.json`, ...).
        what: &'static str,
        /// The serializer's or builder's message.
        reason: String,
    },

    /// The registry client could not be created (TLS setup and the like).
    #[error("cannot create the registry client: {0}")]
    Client(#[source] oci_client::errors::OciDistributionError),

    /// A blocking build task was cancelled or panicked.
    #[error("the layer build task did not finish: {0}")]
    Task(String),
}

impl ImageError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::ReadSource {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::WriteLayout {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn document(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Document {
            what,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidSetting {
            setting,
            reason: reason.into(),
        }
    }
}
