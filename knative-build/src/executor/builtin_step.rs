//! The built-in image step ([`builtin::IMAGE_BUILDER`]) run in-process
//! with [`ImageBuilder`] (`specs/BUILD.md §2`); its params and results are
//! documented in [`super::local`].

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::{Step, builtin};
use crate::image::{ImageBuilder, OciLayout, RegistryClient};

use super::LocalExecutorConfig;

/// Where the image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A registry reference.
    Registry(String),
    /// An OCI layout directory and a tag.
    Layout(PathBuf, String),
}

fn parse_target(image: &str, working_dir: &Path) -> Target {
    let Some(rest) = image.strip_prefix("oci:") else {
        return Target::Registry(image.to_owned());
    };
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.is_empty() && !tag.contains('/') => (path, tag),
        _ => (rest, "latest"),
    };
    Target::Layout(working_dir.join(path), tag.to_owned())
}

fn parse_entrypoint(text: &str) -> Vec<String> {
    if text.trim_start().starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(text)
    {
        return list;
    }
    text.split_whitespace().map(str::to_owned).collect()
}

/// What the image step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageOutput {
    /// `IMAGE_DIGEST`.
    pub(crate) digest: String,
    /// `IMAGE_URL`.
    pub(crate) url: String,
}

/// Builds (and pushes) the image; errors are messages for the step's log
/// and the TaskRun's condition.
pub(crate) async fn run(
    step: &Step,
    config: &LocalExecutorConfig,
    working_dir: &Path,
    scratch: &Path,
    log: &mut std::fs::File,
) -> Result<ImageOutput, String> {
    let param = |name: &str| {
        step.params
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.value.as_string())
            .filter(|v| !v.is_empty())
    };
    let source = param(builtin::PARAM_SOURCE)
        .ok_or_else(|| format!("param {:?} is missing", builtin::PARAM_SOURCE))?;
    let image = param(builtin::PARAM_IMAGE)
        .ok_or_else(|| format!("param {:?} is missing", builtin::PARAM_IMAGE))?;
    let source = working_dir.join(source);
    let target = parse_target(image, working_dir);

    let mut registry = RegistryClient::builder();
    for host in &config.plain_http {
        registry = registry.plain_http(host);
    }
    for (host, credentials) in &config.credentials {
        registry = registry.credentials(host, credentials.clone());
    }
    let registry = registry
        .build()
        .map_err(|e| format!("cannot set up the registry client: {e}"))?;

    let mut builder = ImageBuilder::new(&source);
    if let Some(base) = param(builtin::PARAM_BASE) {
        builder = builder.base(base, registry.clone());
    }
    if let Some(entrypoint) = param(builtin::PARAM_ENTRYPOINT) {
        builder = builder.entrypoint(parse_entrypoint(entrypoint));
    }
    let _ = writeln!(log, "building {} from {}", image, source.display());
    let (layout_dir, tag) = match &target {
        Target::Registry(_) => (scratch.to_path_buf(), "latest".to_owned()),
        Target::Layout(dir, tag) => (dir.clone(), tag.clone()),
    };
    let layout = OciLayout::create(&layout_dir).map_err(|e| e.to_string())?;
    let built = builder
        .tag(tag)
        .build(&layout)
        .await
        .map_err(|e| format!("building the image failed: {e}"))?;
    let digest = built.digest().to_string();
    let _ = writeln!(
        log,
        "built {digest} ({} layers) in {}",
        built.layers().len(),
        layout_dir.display()
    );
    if let Target::Registry(reference) = &target {
        let pushed = registry
            .push(&built, reference)
            .await
            .map_err(|e| format!("pushing the image failed: {e}"))?;
        let _ = writeln!(
            log,
            "pushed {} (uploaded {} blobs, {} already there)",
            pushed.reference,
            pushed.uploaded.len(),
            pushed.skipped.len()
        );
    }
    Ok(ImageOutput {
        digest,
        url: image.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_targets_take_an_optional_tag() {
        let wd = Path::new("/w");
        assert_eq!(
            parse_target("oci:/out/app:v1", wd),
            Target::Layout("/out/app".into(), "v1".into())
        );
        assert_eq!(
            parse_target("oci:out", wd),
            Target::Layout("/w/out".into(), "latest".into())
        );
        assert_eq!(
            parse_target("127.0.0.1:5000/app:v1", wd),
            Target::Registry("127.0.0.1:5000/app:v1".into())
        );
    }

    #[test]
    fn entrypoints_are_json_or_words() {
        assert_eq!(
            parse_entrypoint("/app/server --port 8080"),
            ["/app/server", "--port", "8080"]
        );
        assert_eq!(
            parse_entrypoint(r#"["/app/my server"]"#),
            ["/app/my server"]
        );
    }
}
