//! Helpers shared by the integration tests: a real `docker-registry` on a
//! free loopback port, `skopeo`, and a git repository to clone.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knative_build::image::{Credentials, ImageError, RegistryClient};

/// A `docker-registry` child process with its own config and storage,
/// killed when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry (anonymous push and pull).
    pub fn start() -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(None)
    }

    /// A registry that wants HTTP Basic auth for `user`/`password`.
    pub fn start_with_user(user: &str, password: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(user: Option<(&str, &str)>) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: error\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let hash =
                bcrypt::hash_with_result(password, 4)?.format_for_version(bcrypt::Version::TwoA);
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, format!("{name}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: knative-build-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!("cannot start docker-registry (apt-get install docker-registry): {e}")
            })?;
        let registry = Self { child, host, dir };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&self) -> Result<(), Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(&self.host) {
                stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n")?;
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        Err(format!("docker-registry on {} did not start:\n{log}", self.host).into())
    }

    pub fn client(&self) -> Result<RegistryClient, ImageError> {
        RegistryClient::builder().plain_http(&self.host).build()
    }

    pub fn client_as(&self, user: &str, password: &str) -> Result<RegistryClient, ImageError> {
        RegistryClient::builder()
            .plain_http(&self.host)
            .credentials(&self.host, Credentials::basic(user, password))
            .build()
    }

    pub fn image(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs skopeo and parses its JSON output.
pub fn skopeo(args: &[&str]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let stdout = skopeo_run(args)?;
    Ok(serde_json::from_slice(&stdout)?)
}

/// Runs skopeo and returns its standard output.
pub fn skopeo_run(args: &[&str]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let output = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run skopeo (apt-get install skopeo): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "skopeo {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output.stdout)
}

/// Runs `git` in `dir`, failing with its output.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A git repository at `dir` on branch `main` with a few committed files;
/// returns the commit id.
pub fn git_repo(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::write(dir.join("README.md"), "# demo app\n")?;
    fs::write(dir.join("bin/server"), "#!/bin/sh\necho serving\n")?;
    fs::write(dir.join("config.json"), "{\"port\": 8080}\n")?;
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "."])?;
    git(dir, &["commit", "-q", "-m", "first"])?;
    git(dir, &["rev-parse", "HEAD"])
}
