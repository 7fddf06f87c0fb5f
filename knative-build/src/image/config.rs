//! The image configuration: what to run, and the layer history.
//!
//! Settings of the builder are laid over the base image's config the way
//! `docker build` does it: env entries replace base entries of the same
//! name, labels and exposed ports are merged, an entrypoint set here drops
//! the base's cmd unless a cmd is set too, and anything not set is
//! inherited. BUILD.md §2.2 lists the fields.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::image::{Arch, Config, History, ImageConfiguration, Os, RootFs};

use super::ImageError;

/// Target platform of an image: `os`/`architecture` (+ optional variant),
/// as in Go's `GOOS`/`GOARCH`. Defaults to `linux/amd64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `amd64` or `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8` for `arm64`.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform without a variant.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Self {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    pub(crate) fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::new("linux", "amd64")
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The runtime settings collected by the builder; `None` means "inherit".
#[derive(Clone, Debug, Default)]
pub(crate) struct RuntimeSettings {
    pub(crate) entrypoint: Option<Vec<String>>,
    pub(crate) cmd: Option<Vec<String>>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) exposed_ports: BTreeSet<String>,
}

/// A layer this build adds, for `rootfs` and `history`.
pub(crate) struct NewLayer {
    pub(crate) diff_id: String,
    pub(crate) comment: String,
}

/// Builds the image config: the base's (if any) with the settings laid
/// over it and the new layers appended.
pub(crate) fn image_config(
    base: Option<&ImageConfiguration>,
    settings: &RuntimeSettings,
    platform: &Platform,
    created: &str,
    layers: &[NewLayer],
) -> Result<ImageConfiguration, ImageError> {
    let mut config = base.and_then(|b| b.config().clone()).unwrap_or_default();
    apply_settings(&mut config, settings)?;

    let mut image = ImageConfiguration::default();
    image.set_created(Some(created.to_string()));
    image.set_architecture(Arch::from(platform.architecture.as_str()));
    image.set_os(Os::from(platform.os.as_str()));
    image.set_variant(platform.variant.clone());
    if let Some(base) = base {
        image.set_os_version(base.os_version().clone());
        image.set_os_features(base.os_features().clone());
    }
    image.set_config(Some(config));

    let mut diff_ids = base
        .map(|b| b.rootfs().diff_ids().clone())
        .unwrap_or_default();
    let mut history = match base {
        Some(b) => b.history().clone().unwrap_or_else(|| {
            // A base without history: one entry per base layer keeps the
            // "non-empty history entries = layers" rule that tools check.
            diff_ids
                .iter()
                .map(|_| history_entry(created, "layer of the base image"))
                .collect()
        }),
        None => Vec::new(),
    };
    for layer in layers {
        diff_ids.push(layer.diff_id.clone());
        history.push(history_entry(created, &layer.comment));
    }
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(diff_ids);
    image.set_rootfs(rootfs);
    image.set_history(Some(history));
    Ok(image)
}

fn history_entry(created: &str, comment: &str) -> History {
    let mut entry = History::default();
    entry.set_created(Some(created.to_string()));
    entry.set_created_by(Some("knative-build".to_string()));
    entry.set_comment(Some(comment.to_string()));
    entry
}

fn apply_settings(config: &mut Config, settings: &RuntimeSettings) -> Result<(), ImageError> {
    if let Some(entrypoint) = &settings.entrypoint {
        config.set_entrypoint(Some(entrypoint.clone()));
        // As in a Dockerfile: a new entrypoint does not inherit the base's cmd.
        if settings.cmd.is_none() {
            config.set_cmd(None);
        }
    }
    if let Some(cmd) = &settings.cmd {
        config.set_cmd(Some(cmd.clone()));
    }
    if !settings.env.is_empty() {
        let mut env = config.env().clone().unwrap_or_default();
        for (name, value) in &settings.env {
            validate_env_name(name)?;
            let entry = format!("{name}={value}");
            match env
                .iter_mut()
                .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name)
            {
                Some(existing) => *existing = entry,
                None => env.push(entry),
            }
        }
        config.set_env(Some(env));
    }
    if let Some(dir) = &settings.working_dir {
        config.set_working_dir(Some(dir.clone()));
    }
    if let Some(user) = &settings.user {
        config.set_user(Some(user.clone()));
    }
    if !settings.labels.is_empty() {
        let mut labels = config.labels().clone().unwrap_or_default();
        labels.extend(settings.labels.clone());
        config.set_labels(Some(labels));
    }
    if !settings.exposed_ports.is_empty() {
        let mut ports: BTreeSet<String> = config
            .exposed_ports()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        ports.extend(settings.exposed_ports.iter().cloned());
        config.set_exposed_ports(Some(ports.into_iter().collect()));
    }
    Ok(())
}

fn validate_env_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(ImageError::setting(
            "env",
            format!("`{name}` is not a valid variable name (empty, or contains `=` or NUL)"),
        ));
    }
    Ok(())
}

/// Checks an exposed port such as `8080`, `8080/tcp` or `53/udp`.
pub(crate) fn normalize_port(port: &str) -> Result<String, ImageError> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|n| n > 0);
    let valid_protocol = matches!(protocol, "tcp" | "udp" | "sctp");
    if !valid_number || !valid_protocol {
        return Err(ImageError::setting(
            "expose",
            format!("`{port}` is not a port like 8080, 8080/tcp or 53/udp"),
        ));
    }
    Ok(format!("{number}/{protocol}"))
}

/// RFC 3339 text for a Unix time, as the config's `created` field wants it.
pub(crate) fn rfc3339(epoch: u64) -> Result<String, ImageError> {
    let seconds = i64::try_from(epoch)
        .map_err(|_| ImageError::setting("source_date_epoch", "is too large"))?;
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .map_err(|e| ImageError::setting("source_date_epoch", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ImageConfiguration {
        let mut config = Config::default();
        config.set_env(Some(vec!["PATH=/usr/bin".into(), "LANG=C".into()]));
        config.set_entrypoint(Some(vec!["/bin/sh".into()]));
        config.set_cmd(Some(vec!["-c".into(), "true".into()]));
        config.set_working_dir(Some("/base".into()));
        config.set_exposed_ports(Some(vec!["80/tcp".into()]));
        let mut image = ImageConfiguration::default();
        image.set_config(Some(config));
        let mut rootfs = RootFs::default();
        rootfs.set_diff_ids(vec!["sha256:base".into()]);
        image.set_rootfs(rootfs);
        image
    }

    #[test]
    fn settings_override_and_merge_with_the_base() -> Result<(), ImageError> {
        let settings = RuntimeSettings {
            entrypoint: Some(vec!["/app".into()]),
            env: vec![
                ("LANG".into(), "C.UTF-8".into()),
                ("MODE".into(), "prod".into()),
            ],
            exposed_ports: ["8080/tcp".to_string()].into(),
            ..Default::default()
        };
        let layers = [NewLayer {
            diff_id: "sha256:new".into(),
            comment: "app".into(),
        }];
        let image = image_config(
            Some(&base()),
            &settings,
            &Platform::default(),
            "1970-01-01T00:00:00Z",
            &layers,
        )?;
        let config = image.config().clone().unwrap_or_default();
        assert_eq!(
            config.env().clone().unwrap_or_default(),
            ["PATH=/usr/bin", "LANG=C.UTF-8", "MODE=prod"]
        );
        assert_eq!(config.entrypoint().clone().unwrap_or_default(), ["/app"]);
        assert_eq!(config.cmd(), &None, "a new entrypoint drops the base cmd");
        assert_eq!(config.working_dir().as_deref(), Some("/base"));
        let mut ports = config.exposed_ports().clone().unwrap_or_default();
        ports.sort();
        assert_eq!(ports, ["80/tcp", "8080/tcp"]);
        assert_eq!(image.rootfs().diff_ids(), &["sha256:base", "sha256:new"]);
        assert_eq!(image.history().as_ref().map(Vec::len), Some(2));
        Ok(())
    }

    #[test]
    fn bad_env_names_and_ports_are_refused() {
        let settings = RuntimeSettings {
            env: vec![("A=B".into(), "x".into())],
            ..Default::default()
        };
        let err = image_config(None, &settings, &Platform::default(), "x", &[]).err();
        assert!(err.is_some_and(|e| e.to_string().contains("A=B")));
        assert!(normalize_port("8080").is_ok_and(|p| p == "8080/tcp"));
        assert!(normalize_port("0/tcp").is_err());
        assert!(normalize_port("80/http").is_err());
    }

    #[test]
    fn epoch_zero_is_the_unix_epoch() {
        assert!(rfc3339(0).is_ok_and(|t| t == "1970-01-01T00:00:00Z"));
        assert!(rfc3339(1_700_000_000).is_ok_and(|t| t == "2023-11-14T22:13:20Z"));
    }
}
