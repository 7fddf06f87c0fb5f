//! [`ImageBuilder`]: a directory (plus an optional base image) in, an OCI
//! image in an [`OciLayout`] out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ANNOTATION_BASE_IMAGE_DIGEST, ANNOTATION_BASE_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor,
    Digest, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType, PlatformBuilder,
    SCHEMA_VERSION,
};

use super::ImageError;
use super::canonical_json::to_canonical_vec;
use super::config::{NewLayer, Platform, RuntimeSettings, image_config, normalize_port, rfc3339};
use super::layer::{WrittenLayer, write_layer};
use super::layout::OciLayout;
use super::registry::{PulledImage, RegistryClient};
use super::source::{EntryKind, SourceEntry, normalize_image_path, scan};

/// The default gzip level (see the module docs of [`crate::image`] for the
/// measurement behind it).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 1;

/// The name of the layer that holds everything no [`ImageBuilder::layer`]
/// prefix claimed.
const REST_LAYER: &str = "app";

/// Builds a reproducible OCI image from a directory.
///
/// ```no_run
/// # async fn demo() -> Result<(), knative_build::image::ImageError> {
/// use knative_build::image::{ImageBuilder, OciLayout, RegistryClient};
///
/// let layout = OciLayout::create("target/image")?;
/// let image = ImageBuilder::new("target/release/bundle")
///     .target_dir("/app")
///     .layer("deps", ["lib"])
///     .entrypoint(["/app/server"])
///     .env("RUST_LOG", "info")
///     .expose("8080/tcp")
///     .build(&layout)
///     .await?;
/// let registry = RegistryClient::builder().plain_http("127.0.0.1:5000").build()?;
/// let pushed = registry.push(&image, "127.0.0.1:5000/demo/server:v1").await?;
/// println!("{}", pushed.reference); // 127.0.0.1:5000/demo/server@sha256:...
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    context: PathBuf,
    target_dir: String,
    layers: Vec<(String, Vec<String>)>,
    settings: RuntimeSettings,
    exposed_ports: Vec<String>,
    platform: Option<Platform>,
    epoch: u64,
    compression_level: u32,
    base: Option<(String, RegistryClient)>,
    tag: String,
    annotations: BTreeMap<String, String>,
}

impl ImageBuilder {
    /// A builder for an image holding the contents of the directory
    /// `context` (the directory itself is not an entry; its contents land at
    /// the image root unless [`Self::target_dir`] says otherwise).
    pub fn new(context: impl Into<PathBuf>) -> Self {
        Self {
            context: context.into(),
            target_dir: String::new(),
            layers: Vec::new(),
            settings: RuntimeSettings::default(),
            exposed_ports: Vec::new(),
            platform: None,
            epoch: 0,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            base: None,
            tag: "latest".to_string(),
            annotations: BTreeMap::new(),
        }
    }

    /// Where the context's contents go inside the image, e.g. `/app`
    /// (default `/`). Missing parent directories are added with mode 0755.
    pub fn target_dir(mut self, dir: impl Into<String>) -> Self {
        self.target_dir = dir.into();
        self
    }

    /// Puts the files under these context-relative path prefixes (whole path
    /// components: `vendor` matches `vendor/x` but not `vendors`) into a
    /// layer of their own, named `name`. Layers come out in the order of the
    /// calls, before the layer with everything else; a file matching several
    /// calls goes to the first. Put what changes least first, so pushes
    /// after a small change upload little. A layer whose prefixes match
    /// nothing is left out.
    pub fn layer<I, S>(mut self, name: impl Into<String>, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.layers
            .push((name.into(), prefixes.into_iter().map(Into::into).collect()));
        self
    }

    /// The executable and its fixed arguments.
    pub fn entrypoint<I, S>(mut self, entrypoint: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.entrypoint = Some(entrypoint.into_iter().map(Into::into).collect());
        self
    }

    /// Default arguments (replaced by the arguments of `docker run`).
    pub fn cmd<I, S>(mut self, cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    /// Sets an environment variable (replacing the base image's value).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.env.push((name.into(), value.into()));
        self
    }

    /// The working directory of the process.
    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.settings.working_dir = Some(dir.into());
        self
    }

    /// The user (name, `uid` or `uid:gid`) the process runs as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.settings.user = Some(user.into());
        self
    }

    /// Adds a label to the image config.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.labels.insert(key.into(), value.into());
        self
    }

    /// Declares a port: `8080`, `8080/tcp` or `53/udp`.
    pub fn expose(mut self, port: impl Into<String>) -> Self {
        self.exposed_ports.push(port.into());
        self
    }

    /// The target platform (default `linux/amd64`); also selects the
    /// manifest of a multi-platform base image.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// The time stamp of every file and of the config's `created` field, in
    /// seconds since the Unix epoch (default 0). See [`source_date_epoch`].
    pub fn source_date_epoch(mut self, seconds: u64) -> Self {
        self.epoch = seconds;
        self
    }

    /// The gzip level, 0 (store) to 9 (smallest); default
    /// [`DEFAULT_COMPRESSION_LEVEL`]. Changing it changes the layer digests.
    pub fn compression_level(mut self, level: u32) -> Self {
        self.compression_level = level;
        self
    }

    /// Builds on top of `reference` (e.g. `gcr.io/distroless/static:nonroot`),
    /// pulled with `registry`: its layers come first, its config is
    /// inherited where this builder sets nothing.
    pub fn base(mut self, reference: impl Into<String>, registry: RegistryClient) -> Self {
        self.base = Some((reference.into(), registry));
        self
    }

    /// The tag under which the image is recorded in the layout's
    /// `index.json` (default `latest`).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    /// Adds an annotation to the manifest.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Builds the image into `layout`: pulls the base image (if any), writes
    /// the layers, the config and the manifest as blobs and tags the
    /// manifest in `index.json`. The slow part runs on tokio's blocking
    /// pool.
    pub async fn build(&self, layout: &OciLayout) -> Result<BuiltImage, ImageError> {
        let target = normalize_image_path("target_dir", &self.target_dir)?;
        let groups = self.layer_groups()?;
        let mut settings = self.settings.clone();
        for port in &self.exposed_ports {
            settings.exposed_ports.insert(normalize_port(port)?);
        }
        if self.compression_level > 9 {
            return Err(ImageError::setting(
                "compression_level",
                format!("{} is not in 0..=9", self.compression_level),
            ));
        }
        if self.tag.is_empty() {
            return Err(ImageError::setting("tag", "must not be empty"));
        }
        let created = rfc3339(self.epoch)?;
        self.check_layout_outside_context(layout)?;

        let base = match &self.base {
            Some((reference, registry)) => {
                let wanted = self.platform.clone().unwrap_or_default();
                let pulled = registry.pull(reference, &wanted, layout).await?;
                Some(self.check_base_platform(pulled)?)
            }
            None => None,
        };
        let platform = match &base {
            Some(pulled) => Platform {
                os: pulled.config.os().to_string(),
                architecture: pulled.config.architecture().to_string(),
                variant: pulled.config.variant().clone(),
            },
            None => self.platform.clone().unwrap_or_default(),
        };

        let context = self.context.clone();
        let epoch = self.epoch;
        let level = self.compression_level;
        let blob_layout = layout.clone();
        let WrittenLayers {
            layers: written,
            skipped,
        } = tokio::task::spawn_blocking(move || {
            write_layers(&context, &target, &groups, epoch, level, &blob_layout)
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))??;

        let new_layers: Vec<NewLayer> = written
            .iter()
            .map(|(name, layer)| NewLayer {
                diff_id: layer.diff_id.to_string(),
                comment: format!("layer {name}"),
            })
            .collect();
        let config = image_config(
            base.as_ref().map(|b| &b.config),
            &settings,
            &platform,
            &created,
            &new_layers,
        )?;
        let config_bytes = to_canonical_vec(&config, "image config")?;
        let config_digest = layout.write_blob(&config_bytes)?;
        let config_descriptor = Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            config_digest,
        );

        let mut layer_descriptors: Vec<Descriptor> = base
            .as_ref()
            .map(|b| b.manifest.layers().iter().map(oci_layer).collect())
            .unwrap_or_default();
        let mut layers: Vec<LayerInfo> = layer_descriptors
            .iter()
            .zip(config.rootfs().diff_ids())
            .map(|(d, diff_id)| LayerInfo {
                name: "base".to_string(),
                digest: d.digest().clone(),
                diff_id: diff_id.clone(),
                size: d.size(),
                from_base: true,
            })
            .collect();
        for (name, layer) in &written {
            layer_descriptors.push(Descriptor::new(
                MediaType::ImageLayerGzip,
                layer.size,
                layer.digest.clone(),
            ));
            layers.push(LayerInfo {
                name: name.clone(),
                digest: layer.digest.clone(),
                diff_id: layer.diff_id.to_string(),
                size: layer.size,
                from_base: false,
            });
        }

        let mut annotations = self.annotations.clone();
        if let (Some(pulled), Some((reference, _))) = (&base, &self.base) {
            annotations.insert(ANNOTATION_BASE_IMAGE_NAME.to_string(), reference.clone());
            annotations.insert(
                ANNOTATION_BASE_IMAGE_DIGEST.to_string(),
                pulled.digest.to_string(),
            );
        }
        let mut manifest_builder = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(layer_descriptors);
        if !annotations.is_empty() {
            manifest_builder =
                manifest_builder.annotations(annotations.into_iter().collect::<HashMap<_, _>>());
        }
        let manifest = manifest_builder
            .build()
            .map_err(|e| ImageError::document("manifest", e))?;
        let manifest_bytes = to_canonical_vec(&manifest, "manifest")?;
        let digest = layout.write_blob(&manifest_bytes)?;

        let mut platform_builder = PlatformBuilder::default()
            .os(platform.os.as_str())
            .architecture(platform.architecture.as_str());
        if let Some(variant) = &platform.variant {
            platform_builder = platform_builder.variant(variant.clone());
        }
        let mut index_entry = Descriptor::new(
            MediaType::ImageManifest,
            manifest_bytes.len() as u64,
            digest.clone(),
        );
        index_entry.set_platform(Some(
            platform_builder
                .build()
                .map_err(|e| ImageError::document("index.json", e))?,
        ));
        layout.tag_manifest(index_entry, &self.tag)?;

        tracing::info!(%digest, layers = layers.len(), "built image");
        Ok(BuiltImage {
            layout: layout.clone(),
            digest,
            manifest,
            manifest_bytes,
            config,
            layers,
            skipped,
            base_reference: self.base.as_ref().map(|(r, _)| r.clone()),
            tag: self.tag.clone(),
        })
    }

    fn layer_groups(&self) -> Result<Vec<LayerGroup>, ImageError> {
        let mut groups = Vec::with_capacity(self.layers.len());
        for (name, prefixes) in &self.layers {
            let mut normalized = Vec::with_capacity(prefixes.len());
            for prefix in prefixes {
                let p = normalize_image_path("layer", prefix)?;
                if p.is_empty() {
                    return Err(ImageError::setting(
                        "layer",
                        format!("prefix `{prefix}` of layer `{name}` names the whole context"),
                    ));
                }
                normalized.push(p);
            }
            groups.push(LayerGroup {
                name: name.clone(),
                prefixes: normalized,
            });
        }
        Ok(groups)
    }

    /// A layout inside the context would archive itself while being written.
    fn check_layout_outside_context(&self, layout: &OciLayout) -> Result<(), ImageError> {
        let context =
            std::fs::canonicalize(&self.context).map_err(|e| ImageError::read(&self.context, e))?;
        let layout_dir =
            std::fs::canonicalize(layout.path()).map_err(|e| ImageError::read(layout.path(), e))?;
        if layout_dir.starts_with(&context) {
            return Err(ImageError::setting(
                "layout",
                format!(
                    "the OCI layout {} is inside the build context {}; put it elsewhere",
                    layout_dir.display(),
                    context.display()
                ),
            ));
        }
        Ok(())
    }

    fn check_base_platform(&self, pulled: PulledImage) -> Result<PulledImage, ImageError> {
        if let Some(wanted) = &self.platform {
            let os = pulled.config.os().to_string();
            let arch = pulled.config.architecture().to_string();
            if !wanted.matches(&os, &arch, pulled.config.variant().as_deref()) {
                return Err(ImageError::BaseImage {
                    reference: pulled.reference,
                    reason: format!("it is {os}/{arch} but platform {wanted} was requested"),
                });
            }
        }
        Ok(pulled)
    }
}

/// A layer asked for with [`ImageBuilder::layer`], prefixes normalized.
#[derive(Clone, Debug)]
struct LayerGroup {
    name: String,
    prefixes: Vec<Vec<u8>>,
}

/// What the blocking part of a build produced.
struct WrittenLayers {
    /// `(name, layer)` in manifest order.
    layers: Vec<(String, WrittenLayer)>,
    /// Special files that were left out.
    skipped: Vec<PathBuf>,
}

/// Scans the context and writes one blob per non-empty layer group plus
/// the rest layer.
fn write_layers(
    context: &Path,
    target: &[u8],
    groups: &[LayerGroup],
    epoch: u64,
    level: u32,
    layout: &OciLayout,
) -> Result<WrittenLayers, ImageError> {
    let scan = scan(context, target)?;
    // Which group each entry belongs to; `groups.len()` is the rest layer.
    let owner: Vec<usize> = scan
        .entries
        .iter()
        .map(|entry| {
            groups
                .iter()
                .position(|group| {
                    !entry.source_path.is_empty()
                        && group
                            .prefixes
                            .iter()
                            .any(|p| under_prefix(&entry.source_path, p))
                })
                .unwrap_or(groups.len())
        })
        .collect();

    let mut written = Vec::new();
    for group in 0..=groups.len() {
        let name = groups.get(group).map_or(REST_LAYER, |g| g.name.as_str());
        let owned = owner.iter().filter(|o| **o == group).count();
        if owned == 0 && group < groups.len() {
            tracing::debug!(
                layer = name,
                "no files match this layer's prefixes; left out"
            );
            continue;
        }
        let entries = entries_of(&scan.entries, &owner, group);
        let temp = layout.temp_blob_path();
        let layer = match write_layer(&entries, epoch, level, &temp) {
            Ok(layer) => layer,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        layout.commit_blob(&temp, &layer.digest)?;
        written.push((name.to_string(), layer));
    }
    Ok(WrittenLayers {
        layers: written,
        skipped: scan.skipped,
    })
}

/// The entries owned by `group`, plus the directories above them (so each
/// layer carries the modes of its parent directories), in scan order.
fn entries_of<'a>(
    entries: &'a [SourceEntry],
    owner: &[usize],
    group: usize,
) -> Vec<&'a SourceEntry> {
    let mut parents: HashSet<&[u8]> = HashSet::new();
    for (entry, _) in entries.iter().zip(owner).filter(|(_, o)| **o == group) {
        let path = entry.image_path.as_slice();
        for (i, byte) in path.iter().enumerate() {
            if *byte == b'/' {
                parents.insert(&path[..i]);
            }
        }
    }
    entries
        .iter()
        .zip(owner)
        .filter(|(entry, o)| {
            **o == group
                || (entry.kind == EntryKind::Dir && parents.contains(entry.image_path.as_slice()))
        })
        .map(|(entry, _)| entry)
        .collect()
}

fn under_prefix(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// Reads `SOURCE_DATE_EPOCH` (the reproducible-builds convention) for
/// [`ImageBuilder::source_date_epoch`]: `Ok(None)` when unset.
pub fn source_date_epoch() -> Result<Option<u64>, ImageError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|e| {
            ImageError::setting(
                "source_date_epoch",
                format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds: {e}"),
            )
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(ImageError::setting("source_date_epoch", e.to_string())),
    }
}

/// One layer of a built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `base` for base image layers, else the name given to
    /// [`ImageBuilder::layer`] (`app` for the rest layer).
    pub name: String,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (`sha256:...`).
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Whether it comes from the base image.
    pub from_base: bool,
}

/// An image written to an [`OciLayout`], ready to push.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    layout: OciLayout,
    digest: Digest,
    manifest: ImageManifest,
    manifest_bytes: Vec<u8>,
    config: ImageConfiguration,
    layers: Vec<LayerInfo>,
    skipped: Vec<PathBuf>,
    base_reference: Option<String>,
    tag: String,
}

impl BuiltImage {
    /// Opens the image tagged `tag` in `layout`, e.g. one built by an
    /// earlier step, to push it. Layer names come from the history
    /// comments; the base image (and so which layers are its own) from the
    /// manifest's `org.opencontainers.image.base.*` annotations and the base
    /// manifest kept in the layout.
    pub fn open(layout: &OciLayout, tag: &str) -> Result<Self, ImageError> {
        let index = layout.index()?;
        let entry = index
            .manifests()
            .iter()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REF_NAME))
                    .is_some_and(|t| t == tag)
            })
            .ok_or_else(|| ImageError::MissingTag {
                layout: layout.path().to_path_buf(),
                tag: tag.to_string(),
            })?;
        let digest = entry.digest().clone();
        let manifest_bytes = layout.read_blob(&digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImageError::document("manifest", e))?;
        let config_bytes = layout.read_blob(manifest.config().digest())?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::document("image config", e))?;

        let annotations = manifest.annotations().clone().unwrap_or_default();
        let base_reference = annotations.get(ANNOTATION_BASE_IMAGE_NAME).cloned();
        let base_layers = annotations
            .get(ANNOTATION_BASE_IMAGE_DIGEST)
            .and_then(|d| d.parse::<Digest>().ok())
            .and_then(|d| layout.read_blob(&d).ok())
            .and_then(|bytes| serde_json::from_slice::<ImageManifest>(&bytes).ok())
            .map_or(0, |base| base.layers().len());
        let comments: Vec<Option<String>> = config
            .history()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|h| h.empty_layer() != Some(true))
            .map(|h| h.comment().clone())
            .collect();
        let layers = manifest
            .layers()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let from_base = i < base_layers;
                let name = if from_base {
                    "base".to_string()
                } else {
                    comments
                        .get(i)
                        .cloned()
                        .flatten()
                        .and_then(|c| c.strip_prefix("layer ").map(str::to_string))
                        .unwrap_or_else(|| format!("layer{i}"))
                };
                LayerInfo {
                    name,
                    digest: d.digest().clone(),
                    diff_id: config
                        .rootfs()
                        .diff_ids()
                        .get(i)
                        .cloned()
                        .unwrap_or_default(),
                    size: d.size(),
                    from_base,
                }
            })
            .collect();
        Ok(Self {
            layout: layout.clone(),
            digest,
            manifest,
            manifest_bytes,
            config,
            layers,
            skipped: Vec::new(),
            base_reference,
            tag: tag.to_string(),
        })
    }

    /// The manifest digest: the image's identity.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The exact manifest bytes that were hashed (and will be pushed).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The manifest's media type.
    pub fn manifest_media_type(&self) -> &'static str {
        "application/vnd.oci.image.manifest.v1+json"
    }

    /// The image config.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// All layers, base layers first.
    pub fn layers(&self) -> &[LayerInfo] {
        &self.layers
    }

    /// Special files (sockets, FIFOs, devices) of the context that were
    /// left out (empty for an image from [`Self::open`]).
    pub fn skipped_files(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// The layout holding the blobs.
    pub fn layout(&self) -> &OciLayout {
        &self.layout
    }

    /// The base image reference, if there is one.
    pub fn base_reference(&self) -> Option<&str> {
        self.base_reference.as_deref()
    }

    /// The tag in the layout's `index.json`.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// Docker's (schema 2) media type of a gzip layer.
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's (schema 2) media type of a foreign (non-distributable) gzip layer.
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's media type of a non-distributable gzip layer.
const OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// A base image's layer descriptor for an OCI manifest: Docker schema 2
/// layer media types become their OCI equivalents (the blob, so the
/// digest and size, is the same); everything else is kept.
fn oci_layer(layer: &Descriptor) -> Descriptor {
    let mut out = layer.clone();
    let media_type = match layer.media_type().to_string().as_str() {
        DOCKER_LAYER_GZIP => MediaType::ImageLayerGzip,
        DOCKER_FOREIGN_LAYER_GZIP => MediaType::Other(OCI_NONDISTRIBUTABLE_LAYER_GZIP.to_owned()),
        _ => return out,
    };
    out.set_media_type(media_type);
    out
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn docker_base_layers_get_oci_media_types_and_keep_their_digest() -> Result<(), ImageError> {
        let digest: Digest =
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                .parse()
                .map_err(|e| ImageError::document("digest", e))?;
        let docker = Descriptor::new(
            MediaType::Other(DOCKER_LAYER_GZIP.to_owned()),
            42,
            digest.clone(),
        );
        let mapped = oci_layer(&docker);
        assert_eq!(
            mapped.media_type().to_string(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(mapped.digest(), &digest);
        assert_eq!(mapped.size(), 42);
        let foreign = Descriptor::new(
            MediaType::Other(DOCKER_FOREIGN_LAYER_GZIP.to_owned()),
            42,
            digest.clone(),
        );
        assert_eq!(
            oci_layer(&foreign).media_type().to_string(),
            OCI_NONDISTRIBUTABLE_LAYER_GZIP
        );
        let oci = Descriptor::new(MediaType::ImageLayerZstd, 42, digest);
        assert_eq!(oci_layer(&oci), oci);
        Ok(())
    }

    fn tree() -> Result<tempfile::TempDir, std::io::Error> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("vendor/lib"))?;
        fs::create_dir_all(dir.path().join("src"))?;
        fs::write(dir.path().join("vendor/lib/dep.txt"), "dep")?;
        fs::write(dir.path().join("src/main.txt"), "main")?;
        fs::write(dir.path().join("vendors.txt"), "not vendor")?;
        Ok(dir)
    }

    fn names(entries: &[&SourceEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.image_path).into_owned())
            .collect()
    }

    #[test]
    fn prefixes_split_layers_and_parents_are_repeated() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tree()?;
        let scan = scan(dir.path(), b"app")?;
        let prefixes = [b"vendor".to_vec()];
        let owner: Vec<usize> = scan
            .entries
            .iter()
            .map(|e| usize::from(!prefixes.iter().any(|p| under_prefix(&e.source_path, p))))
            .collect();
        assert_eq!(
            names(&entries_of(&scan.entries, &owner, 0)),
            [
                "app",
                "app/vendor",
                "app/vendor/lib",
                "app/vendor/lib/dep.txt"
            ]
        );
        assert_eq!(
            names(&entries_of(&scan.entries, &owner, 1)),
            ["app", "app/src", "app/src/main.txt", "app/vendors.txt"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn build_writes_a_tagged_image() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tree()?;
        let out = tempfile::tempdir()?;
        let layout = OciLayout::create(out.path())?;
        let image = ImageBuilder::new(dir.path())
            .layer("deps", ["vendor"])
            .layer("unused", ["nothing-here"])
            .entrypoint(["/src/main.txt"])
            .tag("v1")
            .build(&layout)
            .await?;
        let names: Vec<&str> = image.layers().iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["deps", "app"]);
        assert_eq!(image.config().rootfs().diff_ids().len(), 2);
        let index = layout.index()?;
        assert_eq!(index.manifests().len(), 1);
        assert_eq!(index.manifests()[0].digest(), image.digest());
        for layer in image.layers() {
            assert!(layout.has_blob(&layer.digest));
        }
        Ok(())
    }

    #[tokio::test]
    async fn invalid_settings_fail_before_any_work() -> Result<(), Box<dyn std::error::Error>> {
        let out = tempfile::tempdir()?;
        let layout = OciLayout::create(out.path())?;
        let context = tempfile::tempdir()?;
        let err = ImageBuilder::new(context.path())
            .expose("eighty")
            .build(&layout)
            .await
            .err();
        assert!(err.is_some_and(|e| e.to_string().contains("eighty")));
        let err = ImageBuilder::new(context.path())
            .layer("all", ["/"])
            .build(&layout)
            .await
            .err();
        assert!(err.is_some_and(|e| e.to_string().contains("whole context")));
        let err = ImageBuilder::new(out.path()).build(&layout).await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("inside the build context")));
        Ok(())
    }
}
