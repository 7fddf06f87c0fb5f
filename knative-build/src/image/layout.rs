//! An OCI image layout directory (image-spec `image-layout.md`, BUILD.md
//! §2.2): `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
//!
//! Blobs are written to a temporary file in the layout root and renamed into
//! `blobs/sha256/` once their digest is known, so a blob file that exists is
//! always complete. Several images can share one layout (blobs are
//! deduplicated by digest); `index.json` keeps one entry per tag
//! (`org.opencontainers.image.ref.name`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, MediaType, OciLayoutBuilder,
};

use super::ImageError;
use super::canonical_json::to_canonical_vec;
use super::digest::sha256_of;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An OCI image layout on disk.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens the layout at `dir`, creating the directory, `oci-layout`,
    /// `blobs/sha256/` and an empty `index.json` as needed.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let layout = Self { root: dir.into() };
        let blobs = layout.root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| ImageError::write(&blobs, e))?;
        let marker = layout.root.join("oci-layout");
        if !marker.exists() {
            let header = OciLayoutBuilder::default()
                .image_layout_version("1.0.0")
                .build()
                .map_err(|e| ImageError::document("oci-layout", e))?;
            let bytes = to_canonical_vec(&header, "oci-layout")?;
            layout.write_atomically(&marker, &bytes)?;
        }
        if !layout.index_path().exists() {
            layout.write_index(&empty_index()?)?;
        }
        Ok(layout)
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    /// Whether the layout holds the blob with this digest.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads `index.json`.
    pub fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|e| ImageError::read(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::document("index.json", e))
    }

    /// Reads a blob whole (for small blobs: manifests and configs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        if !path.is_file() {
            return Err(ImageError::MissingBlob {
                layout: self.root.clone(),
                digest: digest.to_string(),
            });
        }
        fs::read(&path).map_err(|e| ImageError::read(&path, e))
    }

    /// A fresh path for a blob being written; pass it to
    /// [`Self::commit_blob`] once its digest is known.
    pub(crate) fn temp_blob_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".tmp-blob-{}-{n}", std::process::id()))
    }

    /// Moves a finished temporary blob to its content address.
    pub(crate) fn commit_blob(&self, temp: &Path, digest: &Digest) -> Result<(), ImageError> {
        let dest = self.blob_path(digest);
        fs::rename(temp, &dest).map_err(|e| {
            let _ = fs::remove_file(temp);
            ImageError::write(&dest, e)
        })
    }

    /// Stores a small blob given in memory and returns its digest.
    pub(crate) fn write_blob(&self, bytes: &[u8]) -> Result<Digest, ImageError> {
        let digest = sha256_of(bytes);
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            self.write_atomically(&dest, bytes)?;
        }
        Ok(digest)
    }

    /// Adds (or replaces) the manifest entry tagged `tag` in `index.json`.
    pub(crate) fn tag_manifest(
        &self,
        mut descriptor: Descriptor,
        tag: &str,
    ) -> Result<(), ImageError> {
        let mut index = self.index()?;
        let mut annotations = descriptor.annotations().clone().unwrap_or_default();
        annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
        descriptor.set_annotations(Some(annotations));
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REF_NAME))
                    .is_none_or(|t| t != tag)
            })
            .cloned()
            .collect();
        manifests.push(descriptor);
        index.set_manifests(manifests);
        self.write_index(&index)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), ImageError> {
        let bytes = to_canonical_vec(index, "index.json")?;
        self.write_atomically(&self.index_path(), &bytes)
    }

    fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let temp = self.temp_blob_path();
        fs::write(&temp, bytes).map_err(|e| ImageError::write(&temp, e))?;
        fs::rename(&temp, dest).map_err(|e| {
            let _ = fs::remove_file(&temp);
            ImageError::write(dest, e)
        })
    }
}

fn empty_index() -> Result<ImageIndex, ImageError> {
    oci_spec::image::ImageIndexBuilder::default()
        .schema_version(oci_spec::image::SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::new())
        .build()
        .map_err(|e| ImageError::document("index.json", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_writes_the_marker_and_an_empty_index() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let layout = OciLayout::create(dir.path().join("img"))?;
        let marker = fs::read_to_string(layout.path().join("oci-layout"))?;
        assert_eq!(marker, r#"{"imageLayoutVersion":"1.0.0"}"#);
        assert!(layout.index()?.manifests().is_empty());
        let digest = layout.write_blob(b"{}")?;
        assert!(layout.has_blob(&digest));
        assert_eq!(layout.read_blob(&digest)?, b"{}");
        Ok(())
    }

    #[test]
    fn retagging_replaces_the_index_entry() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let layout = OciLayout::create(dir.path())?;
        let a = layout.write_blob(b"a")?;
        let b = layout.write_blob(b"b")?;
        layout.tag_manifest(Descriptor::new(MediaType::ImageManifest, 1, a), "v1")?;
        layout.tag_manifest(
            Descriptor::new(MediaType::ImageManifest, 1, b.clone()),
            "v1",
        )?;
        let index = layout.index()?;
        assert_eq!(index.manifests().len(), 1);
        assert_eq!(index.manifests()[0].digest(), &b);
        Ok(())
    }
}
