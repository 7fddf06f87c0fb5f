//! Image builds pushed to a real `docker-registry` (CNCF distribution 2.8)
//! on a loopback port, checked independently with `skopeo`
//! (specs/BUILD.md §2.5). Needs `/usr/bin/docker-registry` and `skopeo`
//! (Debian packages `docker-registry` and `skopeo`).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{Registry, free_port, skopeo, skopeo_run};
use knative_build::image::{BuiltImage, ImageBuilder, ImageError, OciLayout, RegistryClient};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A small app tree: a script with the exec bit, a symlink, nested dirs,
/// a vendored dependency.
fn app_tree(root: &Path) -> std::io::Result<()> {
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("vendor/dep"))?;
    fs::create_dir_all(root.join("static/css"))?;
    fs::write(root.join("bin/serve"), "#!/bin/sh\nexec echo serving\n")?;
    fs::write(
        root.join("vendor/dep/lib.txt"),
        "dependency v1\n".repeat(200),
    )?;
    fs::write(root.join("static/css/site.css"), "body { margin: 0 }\n")?;
    fs::write(root.join("README"), "hello\n")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("bin/serve"), fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink("bin/serve", root.join("serve"))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, mtime: SystemTime) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    let mut names: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    // Create entries in reverse order: readdir order must not matter.
    names.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
    for entry in names {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst, mtime)?;
        } else {
            fs::copy(&src, &dst)?;
            fs::File::options()
                .write(true)
                .open(&dst)?
                .set_modified(mtime)?;
        }
    }
    fs::set_permissions(to, fs::metadata(from)?.permissions())?;
    Ok(())
}

fn layout_in(dir: &tempfile::TempDir, name: &str) -> Result<(OciLayout, PathBuf), ImageError> {
    let path = dir.path().join(name);
    Ok((OciLayout::create(&path)?, path))
}

#[tokio::test]
async fn pushed_image_is_seen_by_skopeo_with_the_same_digest() -> TestResult {
    let registry = Registry::start()?;
    let src = tempfile::tempdir()?;
    app_tree(src.path())?;
    let scratch = tempfile::tempdir()?;
    let (layout, _) = layout_in(&scratch, "layout")?;

    let image = ImageBuilder::new(src.path())
        .target_dir("/app")
        .entrypoint(["/app/bin/serve"])
        .env("MODE", "test")
        .label("org.opencontainers.image.source", "knative-rs")
        .expose("8080")
        .build(&layout)
        .await?;
    let target = registry.image("demo/app:v1");
    let pushed = registry.client()?.push(&image, &target).await?;

    assert_eq!(&pushed.digest, image.digest());
    assert_eq!(
        pushed.reference,
        format!("{}/demo/app@{}", registry.host, image.digest())
    );
    assert_eq!(pushed.uploaded.len(), 2, "one layer and the config");

    let docker_ref = format!("docker://{target}");
    let inspect = skopeo(&["inspect", "--tls-verify=false", &docker_ref])?;
    assert_eq!(inspect["Digest"], image.digest().to_string());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(
        strings(&inspect["Layers"]),
        [image.layers()[0].digest.to_string()]
    );
    assert!(strings(&inspect["Env"]).contains(&"MODE=test".to_string()));

    // Pinned reference works too.
    let pinned = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}", pushed.reference),
    ])?;
    assert_eq!(pinned["Digest"], image.digest().to_string());

    // Copy it back out and look at the layer's tar entries.
    let copy_dir = scratch.path().join("copy");
    skopeo_run(&[
        "copy",
        "--src-tls-verify=false",
        &docker_ref,
        &format!("oci:{}:v1", copy_dir.display()),
    ])?;
    let copied = skopeo(&["inspect", &format!("oci:{}:v1", copy_dir.display())])?;
    assert_eq!(strings(&copied["Layers"]), strings(&inspect["Layers"]));
    let layer_digest = &image.layers()[0].digest;
    let blob = copy_dir.join("blobs/sha256").join(layer_digest.digest());
    let listing = Command::new("tar").arg("-tvzf").arg(&blob).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("app/bin/serve"), "{listing}");
    assert!(
        listing.contains("-rwxr-xr-x 0/0"),
        "exec bit and root owner kept: {listing}"
    );
    assert!(
        listing.contains("app/serve -> bin/serve"),
        "symlink kept: {listing}"
    );
    assert!(listing.contains("1970-01-01"), "fixed mtime: {listing}");
    Ok(())
}

#[tokio::test]
async fn same_input_gives_the_same_digest_across_copies_and_runs() -> TestResult {
    let registry = Registry::start()?;
    let original = tempfile::tempdir()?;
    app_tree(original.path())?;
    let copies = tempfile::tempdir()?;
    let early = copies.path().join("early");
    let late = copies.path().join("late");
    copy_tree(
        original.path(),
        &early,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    )?;
    copy_tree(original.path(), &late, SystemTime::now())?;

    let scratch = tempfile::tempdir()?;
    let build = |context: PathBuf, name: &'static str| {
        let scratch = &scratch;
        async move {
            let (layout, _) = layout_in(scratch, name)?;
            ImageBuilder::new(context)
                .layer("deps", ["vendor"])
                .entrypoint(["/serve"])
                .build(&layout)
                .await
        }
    };
    let a = build(early.clone(), "a").await?;
    let b = build(late, "b").await?;
    let c = build(early, "c").await?;
    assert_eq!(
        a.digest(),
        b.digest(),
        "mtimes and creation order do not matter"
    );
    assert_eq!(a.digest(), c.digest(), "a rebuild gives the same digest");
    assert_eq!(a.manifest_bytes(), b.manifest_bytes());

    let client = registry.client()?;
    let first = client.push(&a, &registry.image("same/app:one")).await?;
    let second = client.push(&b, &registry.image("same/app:two")).await?;
    assert_eq!(first.digest, second.digest);
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_a_clear_auth_error() -> TestResult {
    let registry = Registry::start_with_user("alice", "correct horse")?;
    let src = tempfile::tempdir()?;
    app_tree(src.path())?;
    let scratch = tempfile::tempdir()?;
    let (layout, _) = layout_in(&scratch, "layout")?;
    let image = ImageBuilder::new(src.path()).build(&layout).await?;
    let target = registry.image("private/app:v1");

    let err = registry
        .client_as("alice", "battery staple")?
        .push(&image, &target)
        .await
        .err()
        .ok_or("push with a wrong password succeeded")?;
    assert!(
        matches!(&err, ImageError::AuthRejected { user, status: 401, .. } if user == "alice"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} rejected the credentials for user alice (401)",
            registry.host
        )
    );

    let err = registry
        .client()?
        .push(&image, &target)
        .await
        .err()
        .ok_or("anonymous push succeeded")?;
    assert!(
        matches!(err, ImageError::AuthRequired { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&registry.host), "{err}");

    let pushed = registry
        .client_as("alice", "correct horse")?
        .push(&image, &target)
        .await?;
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:correct horse",
        &format!("docker://{target}"),
    ])?;
    assert_eq!(inspect["Digest"], pushed.digest.to_string());
    Ok(())
}

#[tokio::test]
async fn blobs_the_registry_has_are_not_uploaded_again() -> TestResult {
    let registry = Registry::start()?;
    let src = tempfile::tempdir()?;
    app_tree(src.path())?;
    let scratch = tempfile::tempdir()?;
    let client = registry.client()?;
    let build = |name: &'static str| {
        let scratch = &scratch;
        let context = src.path().to_path_buf();
        async move {
            let (layout, _) = layout_in(scratch, name)?;
            ImageBuilder::new(context)
                .layer("deps", ["vendor"])
                .layer("assets", ["static"])
                .build(&layout)
                .await
        }
    };

    let image = build("one").await?;
    assert_eq!(image.layers().len(), 3);
    let first = client.push(&image, &registry.image("cache/app:v1")).await?;
    assert_eq!(first.uploaded.len(), 4, "three layers and the config");
    assert!(first.skipped.is_empty());

    let again = client
        .push(&image, &registry.image("cache/app:v1-again"))
        .await?;
    assert!(again.uploaded.is_empty(), "uploaded {:?}", again.uploaded);
    assert_eq!(again.skipped.len(), 4);
    assert_eq!(again.digest, first.digest);

    // Change one app file: only the app layer and the config are new.
    fs::write(src.path().join("README"), "hello again\n")?;
    let changed = build("two").await?;
    let third = client
        .push(&changed, &registry.image("cache/app:v2"))
        .await?;
    let app_layer = changed
        .layers()
        .iter()
        .find(|l| l.name == "app")
        .ok_or("no app layer")?;
    assert_eq!(third.skipped.len(), 2, "deps and assets layers reused");
    assert_eq!(third.uploaded.len(), 2);
    assert!(third.uploaded.contains(&app_layer.digest));
    Ok(())
}

#[tokio::test]
async fn base_image_layers_and_config_are_inherited() -> TestResult {
    let registry = Registry::start()?;
    let client = registry.client()?;
    let scratch = tempfile::tempdir()?;

    // The base: an "OS" layer with a shell-ish config.
    let base_src = tempfile::tempdir()?;
    fs::create_dir_all(base_src.path().join("etc"))?;
    fs::write(base_src.path().join("etc/os-release"), "ID=knative-test\n")?;
    let (base_layout, _) = layout_in(&scratch, "base")?;
    let base = ImageBuilder::new(base_src.path())
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["echo base"])
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C")
        .working_dir("/srv")
        .label("layer", "base")
        .build(&base_layout)
        .await?;
    let base_ref = registry.image("library/base:1");
    client.push(&base, &base_ref).await?;

    // The app on top, in a fresh layout: the base is pulled.
    let app_src = tempfile::tempdir()?;
    app_tree(app_src.path())?;
    let (app_layout, _) = layout_in(&scratch, "app")?;
    let app = ImageBuilder::new(app_src.path())
        .base(&base_ref, client.clone())
        .target_dir("/app")
        .cmd(["echo app"])
        .env("LANG", "C.UTF-8")
        .build(&app_layout)
        .await?;
    assert_eq!(app.layers().len(), 2);
    assert!(app.layers()[0].from_base);
    assert_eq!(app.layers()[0].digest, base.layers()[0].digest);
    assert!(
        app_layout.has_blob(&base.layers()[0].digest),
        "base layer pulled"
    );
    assert_eq!(
        app.config().rootfs().diff_ids()[0],
        base.config().rootfs().diff_ids()[0]
    );
    assert_eq!(app.config().history().as_ref().map(Vec::len), Some(2));

    let app_ref = registry.image("team/app:1");
    let pushed = client.push(&app, &app_ref).await?;
    assert_eq!(
        pushed.mounted,
        [base.layers()[0].digest.clone()],
        "base layer mounted"
    );
    assert_eq!(pushed.uploaded.len(), 2, "app layer and config");

    let docker_ref = format!("docker://{app_ref}");
    let inspect = skopeo(&["inspect", "--tls-verify=false", &docker_ref])?;
    assert_eq!(inspect["Digest"], app.digest().to_string());
    let expected: Vec<String> = app.layers().iter().map(|l| l.digest.to_string()).collect();
    assert_eq!(strings(&inspect["Layers"]), expected);
    let env = strings(&inspect["Env"]);
    assert_eq!(env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    assert_eq!(inspect["Labels"]["layer"], "base");

    let config = skopeo(&["inspect", "--config", "--tls-verify=false", &docker_ref])?;
    assert_eq!(strings(&config["config"]["Entrypoint"]), ["/bin/sh", "-c"]);
    assert_eq!(strings(&config["config"]["Cmd"]), ["echo app"]);
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(strings(&config["rootfs"]["diff_ids"]).len(), 2);

    // A later step can reopen the layout and push the same image.
    let reopened = BuiltImage::open(&app_layout, "latest")?;
    assert_eq!(reopened.digest(), app.digest());
    assert_eq!(reopened.layers(), app.layers());
    assert_eq!(reopened.base_reference(), Some(base_ref.as_str()));
    let again = client
        .push(&reopened, &registry.image("team/other:1"))
        .await?;
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(again.mounted.len(), 1);

    // The app's layout is complete: skopeo can copy from it.
    let copy = scratch.path().join("copied");
    skopeo_run(&[
        "copy",
        &format!("oci:{}:latest", app_layout.path().display()),
        &format!("oci:{}:x", copy.display()),
    ])?;
    Ok(())
}

#[tokio::test]
async fn unreachable_registry_error_names_the_host() -> TestResult {
    let src = tempfile::tempdir()?;
    app_tree(src.path())?;
    let scratch = tempfile::tempdir()?;
    let (layout, _) = layout_in(&scratch, "layout")?;
    let image = ImageBuilder::new(src.path()).build(&layout).await?;
    let host = format!("127.0.0.1:{}", free_port()?);
    let client = RegistryClient::builder().plain_http(&host).build()?;
    let err = client
        .push(&image, &format!("{host}/nobody/home:v1"))
        .await
        .err()
        .ok_or("push to a closed port succeeded")?;
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!("registry {host}: ")),
        "{err}"
    );
    assert!(matches!(
        BuiltImage::open(&layout, "no-such-tag"),
        Err(ImageError::MissingTag { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn oci_layout_on_disk_is_readable_by_skopeo() -> TestResult {
    let src = tempfile::tempdir()?;
    app_tree(src.path())?;
    let scratch = tempfile::tempdir()?;
    let (layout, path) = layout_in(&scratch, "layout")?;
    let image = ImageBuilder::new(src.path())
        .layer("deps", ["vendor"])
        .entrypoint(["/bin/serve"])
        .tag("v1")
        .source_date_epoch(1_700_000_000)
        .build(&layout)
        .await?;

    let inspect = skopeo(&["inspect", &format!("oci:{}:v1", path.display())])?;
    assert_eq!(inspect["Digest"], image.digest().to_string());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z");
    let expected: Vec<String> = image
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    assert_eq!(strings(&inspect["Layers"]), expected);
    // With a single image in index.json the tag can be left out.
    let untagged = skopeo(&["inspect", &format!("oci:{}", path.display())])?;
    assert_eq!(untagged["Digest"], image.digest().to_string());
    Ok(())
}

/// A plain HTTP/1.0 PUT to the (anonymous) registry; returns the status line.
fn http_put(host: &str, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(host)?;
    let head = format!(
        "PUT {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn multi_platform_base_is_resolved_through_its_index() -> TestResult {
    use knative_build::image::Platform;

    let registry = Registry::start()?;
    let client = registry.client()?;
    let scratch = tempfile::tempdir()?;

    // Two single-platform base images, then an index over both.
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let src = scratch.path().join(format!("src-{arch}"));
        fs::create_dir_all(&src)?;
        fs::write(src.join("arch"), arch)?;
        let (layout, _) = layout_in(&scratch, arch)?;
        let image = ImageBuilder::new(&src)
            .platform(Platform::new("linux", arch))
            .build(&layout)
            .await?;
        client
            .push(&image, &registry.image(&format!("multi/base:{arch}")))
            .await?;
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest().to_string(),
            "size": image.manifest_bytes().len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let status = http_put(
        &registry.host,
        "/v2/multi/base/manifests/latest",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index)?,
    )?;
    assert!(status.contains("201"), "{status}");
    let base_ref = registry.image("multi/base:latest");

    let app_src = tempfile::tempdir()?;
    fs::write(app_src.path().join("app"), "app")?;
    for arch in ["amd64", "arm64"] {
        let (layout, _) = layout_in(&scratch, &format!("app-{arch}"))?;
        let app = ImageBuilder::new(app_src.path())
            .base(&base_ref, client.clone())
            .platform(Platform::new("linux", arch))
            .build(&layout)
            .await?;
        assert_eq!(app.config().architecture().to_string(), arch);
        let base_layer = &app.layers()[0];
        let pulled = fs::read(layout.blob_path(&base_layer.digest))?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&pulled[..]).read_to_end(&mut tar)?;
        assert!(
            tar.windows(arch.len()).any(|w| w == arch.as_bytes()),
            "the {arch} base layer was picked"
        );
    }

    let (layout, _) = layout_in(&scratch, "app-s390x")?;
    let err = ImageBuilder::new(app_src.path())
        .base(&base_ref, client.clone())
        .platform(Platform::new("linux", "s390x"))
        .build(&layout)
        .await
        .err()
        .ok_or("a missing platform was accepted")?;
    assert!(
        err.to_string()
            .contains("no manifest for platform linux/s390x"),
        "{err}"
    );
    Ok(())
}
