//! Talking to a registry with the distribution API (BUILD.md §2.3), on top
//! of `oci-client`.
//!
//! * Push order is layers, config, manifest. Each blob is first checked with
//!   `HEAD /v2/<repo>/blobs/<digest>` and skipped when present; a base layer
//!   that lives in another repository of the same registry is mounted
//!   (`POST ...uploads/?mount=&from=`); the rest is streamed from the OCI
//!   layout in one monolithic `PUT`, never loaded whole into memory. The
//!   manifest is sent as the exact bytes that were hashed, so the digest the
//!   registry reports is the one computed locally.
//! * Credentials are kept per registry host. oci-client answers the
//!   `WWW-Authenticate` challenge: Basic credentials are sent as they are, or
//!   traded for a token when the registry asks for `Bearer` (the Docker token
//!   flow); a `Bearer` credential is sent as it is.
//! * Hosts listed with [`RegistryClientBuilder::plain_http`] are spoken to
//!   over plain HTTP (a local test registry on `127.0.0.1:PORT`); all others
//!   use HTTPS.
//!
//! TLS: oci-client is built with `rustls-tls-no-provider` and this crate
//! enables rustls' `aws-lc-rs` provider, the one the workspace settles on
//! (the NATS log uses it, and the Kubernetes adapter builds kube with it),
//! so a binary holding all of them has a single provider (BUILD.md §2.4:
//! with two, building a client panics). [`RegistryClientBuilder::build`]
//! installs it as the process default provider if none is installed yet.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest};
use tokio::io::AsyncReadExt;

use super::ImageError;
use super::OciLayout;
use super::builder::BuiltImage;
use super::config::Platform;
use super::digest::sha256_of;

/// Media types accepted when fetching a manifest (OCI and Docker v2).
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Read size when streaming a blob from disk to the registry.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// How to authenticate to one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// A user name and password (sent as HTTP Basic auth, or exchanged for
    /// a token when the registry asks for Bearer auth).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A ready-made bearer token.
    Bearer(String),
}

impl Credentials {
    /// User name and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    fn to_auth(&self) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

/// Settings for a [`RegistryClient`].
#[derive(Debug, Default)]
pub struct RegistryClientBuilder {
    plain_http: Vec<String>,
    credentials: HashMap<String, Credentials>,
    connect_timeout: Option<std::time::Duration>,
    read_timeout: Option<std::time::Duration>,
}

impl RegistryClientBuilder {
    /// Speak plain HTTP (no TLS) to this `host[:port]`, e.g. a test
    /// registry on `127.0.0.1:5000`.
    pub fn plain_http(mut self, host: impl Into<String>) -> Self {
        self.plain_http.push(host.into());
        self
    }

    /// Credentials for the registry at `host[:port]` (as written in image
    /// references). Registries without an entry are accessed anonymously.
    pub fn credentials(mut self, host: impl Into<String>, credentials: Credentials) -> Self {
        self.credentials.insert(host.into(), credentials);
        self
    }

    /// Timeout for establishing connections.
    pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Timeout for each read from a connection.
    pub fn read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Creates the client.
    pub fn build(self) -> Result<RegistryClient, ImageError> {
        ensure_crypto_provider();
        let config = ClientConfig {
            protocol: if self.plain_http.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.plain_http)
            },
            use_monolithic_push: true,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(ImageError::Client)?;
        Ok(RegistryClient {
            client,
            credentials: Arc::new(self.credentials),
        })
    }
}

/// Installs rustls' `aws-lc-rs` provider as the process default unless a
/// provider is installed already (see the module docs).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// A registry client: pushes [`BuiltImage`]s and pulls images into an
/// [`OciLayout`]. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    client: Client,
    credentials: Arc<HashMap<String, Credentials>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The result of a push.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// Digest of the manifest, as the registry stores it.
    pub digest: Digest,
    /// The pinned reference `host/repo@sha256:...`.
    pub reference: String,
    /// The reference that was pushed to (with its tag).
    pub target: String,
    /// Blobs that were uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs that were mounted from the base image's repository.
    pub mounted: Vec<Digest>,
    /// Blobs that the registry already had (and were not sent).
    pub skipped: Vec<Digest>,
}

/// An image fetched from a registry into an [`OciLayout`].
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// The reference it was pulled from.
    pub reference: String,
    /// Digest of its (platform-specific) manifest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfiguration,
}

impl RegistryClient {
    /// Settings for a new client.
    pub fn builder() -> RegistryClientBuilder {
        RegistryClientBuilder::default()
    }

    /// A client with no credentials that uses HTTPS everywhere.
    pub fn new() -> Result<Self, ImageError> {
        Self::builder().build()
    }

    /// Pushes `image` (whose blobs are in its OCI layout) to `target`, e.g.
    /// `registry.example.com/team/app:v1`.
    pub async fn push(&self, image: &BuiltImage, target: &str) -> Result<PushedImage, ImageError> {
        let target_ref = parse_reference(target)?;
        let registry = target_ref.registry().to_string();
        let auth = self.auth_for(&target_ref);
        self.client
            .store_auth_if_needed(target_ref.resolve_registry(), &auth)
            .await;
        let layout = image.layout();
        let mount_source = image
            .base_reference()
            .and_then(|base| parse_reference(base).ok())
            .filter(|base| {
                base.resolve_registry() == target_ref.resolve_registry()
                    && base.repository() != target_ref.repository()
            });

        let mut pushed = PushedImage {
            digest: image.digest().clone(),
            reference: format!("{registry}/{}@{}", target_ref.repository(), image.digest()),
            target: target.to_string(),
            uploaded: Vec::new(),
            mounted: Vec::new(),
            skipped: Vec::new(),
        };
        let blobs = image
            .manifest()
            .layers()
            .iter()
            .chain(std::iter::once(image.manifest().config()));
        for descriptor in blobs {
            let digest = descriptor.digest();
            let exists = self
                .client
                .blob_exists(&target_ref, digest.as_ref())
                .await
                .map_err(|e| self.fail(&target_ref, format!("HEAD of blob {digest}"), e))?;
            if exists {
                tracing::debug!(%digest, "blob already in the registry");
                pushed.skipped.push(digest.clone());
                continue;
            }
            if let Some(source) = &mount_source {
                match self
                    .client
                    .mount_blob(&target_ref, source, digest.as_ref())
                    .await
                {
                    Ok(()) => {
                        pushed.mounted.push(digest.clone());
                        continue;
                    }
                    Err(e) => tracing::debug!(%digest, error = %e, "mount failed, uploading"),
                }
            }
            self.upload(layout, &target_ref, descriptor).await?;
            pushed.uploaded.push(digest.clone());
        }
        self.client
            .push_manifest_raw(
                &target_ref,
                Bytes::copy_from_slice(image.manifest_bytes()),
                http_header(image.manifest_media_type()),
            )
            .await
            .map_err(|e| self.fail(&target_ref, "upload of the manifest".to_string(), e))?;
        tracing::info!(reference = %pushed.reference, uploaded = pushed.uploaded.len(),
            skipped = pushed.skipped.len(), "pushed image");
        Ok(pushed)
    }

    /// Fetches the image `reference` for `platform` into `layout`: its
    /// manifest, config and layers become blobs of the layout (blobs already
    /// there are not downloaded again). An image index is resolved to the
    /// manifest for `platform`. `index.json` is not changed.
    pub async fn pull(
        &self,
        reference: &str,
        platform: &Platform,
        layout: &OciLayout,
    ) -> Result<PulledImage, ImageError> {
        let image_ref = parse_reference(reference)?;
        let auth = self.auth_for(&image_ref);
        let base_error = |reason: String| ImageError::BaseImage {
            reference: reference.to_string(),
            reason,
        };

        let (mut bytes, _) = self
            .client
            .pull_manifest_raw(&image_ref, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.fail(&image_ref, format!("fetch of manifest {reference}"), e))?;
        let mut digest = sha256_of(&bytes);
        if is_index(&bytes) {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| base_error(format!("unreadable image index: {e}")))?;
            let chosen = pick_platform(&index, platform).ok_or_else(|| {
                base_error(format!("its index has no manifest for platform {platform}"))
            })?;
            let by_digest = image_ref.clone_with_digest(chosen.to_string());
            (bytes, _) = self
                .client
                .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
                .await
                .map_err(|e| self.fail(&image_ref, format!("fetch of manifest {chosen}"), e))?;
            digest = sha256_of(&bytes);
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| base_error(format!("unreadable manifest: {e}")))?;
        layout.write_blob(&bytes)?;

        let config_digest = manifest.config().digest();
        let mut config_bytes = Vec::new();
        self.client
            .pull_blob(&image_ref, config_digest.as_ref(), &mut config_bytes)
            .await
            .map_err(|e| self.fail(&image_ref, format!("fetch of config {config_digest}"), e))?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| base_error(format!("unreadable image config: {e}")))?;
        layout.write_blob(&config_bytes)?;

        for layer in manifest.layers() {
            let layer_digest = layer.digest();
            if layout.has_blob(layer_digest) {
                continue;
            }
            let temp = layout.temp_blob_path();
            let file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| ImageError::write(&temp, e))?;
            let result = self
                .client
                .pull_blob(&image_ref, layer_digest.as_ref(), file)
                .await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(self.fail(&image_ref, format!("fetch of layer {layer_digest}"), e));
            }
            // pull_blob checked the digest while writing.
            layout.commit_blob(&temp, layer_digest)?;
        }
        Ok(PulledImage {
            reference: reference.to_string(),
            digest,
            manifest,
            config,
        })
    }

    async fn upload(
        &self,
        layout: &OciLayout,
        target: &Reference,
        descriptor: &Descriptor,
    ) -> Result<(), ImageError> {
        let digest = descriptor.digest();
        let path = layout.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::MissingBlob {
                    layout: layout.path().to_path_buf(),
                    digest: digest.to_string(),
                }
            } else {
                ImageError::read(&path, e)
            }
        })?;
        let size = descriptor.size();
        self.client
            .push_blob_stream(target, file_stream(file), digest.as_ref(), Some(size))
            .await
            .map_err(|e| self.fail(target, format!("upload of blob {digest}"), e))?;
        Ok(())
    }

    fn credentials_for(&self, reference: &Reference) -> Credentials {
        [reference.registry(), reference.resolve_registry()]
            .iter()
            .find_map(|host| self.credentials.get(*host))
            .cloned()
            .unwrap_or_default()
    }

    fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        self.credentials_for(reference).to_auth()
    }

    /// Turns an oci-client error into an [`ImageError`], recognizing
    /// authentication failures.
    fn fail(&self, reference: &Reference, action: String, err: OciDistributionError) -> ImageError {
        let registry = reference.registry().to_string();
        match auth_status(&err) {
            Some(status) => match self.credentials_for(reference) {
                Credentials::Anonymous => ImageError::AuthRequired { registry, status },
                Credentials::Basic { username, .. } => ImageError::AuthRejected {
                    registry,
                    user: username,
                    status,
                },
                Credentials::Bearer(_) => ImageError::AuthRejected {
                    registry,
                    user: "<bearer token>".to_string(),
                    status,
                },
            },
            None => ImageError::Registry {
                registry,
                action,
                source: err,
            },
        }
    }
}

/// The HTTP status of an authentication failure, if `err` is one.
fn auth_status(err: &OciDistributionError) -> Option<u16> {
    let is_auth = |code: u16| code == 401 || code == 403;
    match err {
        OciDistributionError::RequestError(e) => {
            e.status().map(|s| s.as_u16()).filter(|c| is_auth(*c))
        }
        OciDistributionError::ServerError { code, .. } if is_auth(*code) => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|e| match e.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                _ => None,
            })
        }
        _ => None,
    }
}

pub(crate) fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

fn http_header(media_type: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(media_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static("application/octet-stream"))
}

fn is_index(manifest: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return false;
    };
    match value.get("mediaType").and_then(|t| t.as_str()) {
        Some(t) => t.contains("index") || t.contains("manifest.list"),
        None => value.get("manifests").is_some(),
    }
}

fn pick_platform<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Digest> {
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                platform.matches(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            })
        })
        .map(|d| d.digest())
}

/// Streams a file in chunks, for a monolithic upload.
fn file_stream(
    file: tokio::fs::File,
) -> impl Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static {
    stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(UPLOAD_CHUNK);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            Ok(None)
        } else {
            Ok(Some((buf.freeze(), file)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_secrets() {
        let text = format!("{:?}", Credentials::basic("alice", "s3cret"));
        assert!(text.contains("alice") && !text.contains("s3cret"), "{text}");
        let text = format!("{:?}", Credentials::Bearer("tok".into()));
        assert!(!text.contains("tok"), "{text}");
    }

    #[test]
    fn indexes_are_told_from_manifests() {
        assert!(is_index(
            br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        ));
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!is_index(
            br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
        ));
    }

    #[test]
    fn bad_references_are_reported_with_the_text() {
        let err = parse_reference("UPPER/Case:tag").err();
        assert!(err.is_some_and(|e| e.to_string().contains("UPPER/Case:tag")));
    }
}
