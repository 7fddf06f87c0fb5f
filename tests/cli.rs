//! The `knative` binary, run as a real child process.

use std::process::Command;

fn knative(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_knative"))
        .args(args)
        .output()
        .expect("the knative binary runs")
}

#[test]
fn version_prints_the_release_and_the_compiled_parts() {
    let out = knative(&["version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "knative {} (serving, eventing, build)",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn help_lists_the_commands() {
    let out = knative(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Usage: knative"), "{stdout}");
    assert!(stdout.contains("version"), "{stdout}");
}

#[test]
fn an_unknown_command_fails_with_a_clear_message() {
    let out = knative(&["serve-everything"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'serve-everything'"),
        "{stderr}"
    );
}

mod queue_proxy {
    //! `knative queue-proxy` as a real sidecar process in front of a
    //! little HTTP app.

    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// An app answering `hello from the app` to everything.
    async fn app() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\nconnection: close\r\n\r\nhello from the app")
                        .await;
                });
            }
        });
        port
    }

    async fn get(address: SocketAddr, extra: &str) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    }

    struct Sidecar {
        child: Child,
        serving: SocketAddr,
        metrics: SocketAddr,
    }

    fn start(user_port: u16, extra_env: &[(&str, &str)]) -> Sidecar {
        let (serving, admin, metrics) = (free_port(), free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_knative"));
        command
            .arg("queue-proxy")
            .env("QUEUE_SERVING_PORT", serving.to_string())
            .env("QUEUE_ADMIN_PORT", admin.to_string())
            .env("QUEUE_METRICS_PORT", metrics.to_string())
            .env("USER_PORT", user_port.to_string())
            .env("QUEUE_DRAIN_SECONDS", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        Sidecar {
            child: command.spawn().expect("queue-proxy starts"),
            serving: SocketAddr::from(([127, 0, 0, 1], serving)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
        }
    }

    async fn eventually_get(address: SocketAddr, extra: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(r) = get(address, extra).await {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{address} never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_sidecar_answers_probes_proxies_counts_and_drains_on_sigterm() {
        let user_port = app().await;
        let mut sidecar = start(user_port, &[("CONTAINER_CONCURRENCY", "2")]);
        let probe = eventually_get(sidecar.serving, "K-Network-Probe: queue\r\n").await;
        assert!(
            probe.starts_with("HTTP/1.1 200") && probe.ends_with("\r\n\r\nqueue"),
            "the probe body is exactly `queue`: {probe}"
        );
        for _ in 0..5 {
            let response = eventually_get(sidecar.serving, "").await;
            assert!(response.ends_with("hello from the app"), "{response}");
        }
        // The autoscaler's metrics are published once a second: the
        // requests show up in one window or spread over two or three.
        let start = Instant::now();
        let mut seen = 0.0;
        let mut last = String::new();
        while seen < 5.0 {
            let metrics = eventually_get(sidecar.metrics, "").await;
            assert!(
                metrics.contains("queue_average_concurrent_requests"),
                "{metrics}"
            );
            if metrics != last {
                seen += metrics
                    .lines()
                    .find_map(|l| l.strip_prefix("queue_requests_per_second "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                last = metrics;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "counted {seen} of 5: {last}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        nix_kill(&sidecar.child);
        let status = tokio::task::spawn_blocking(move || sidecar.child.wait())
            .await
            .expect("joined")
            .expect("exits");
        assert!(status.success(), "{status:?}");
    }

    #[tokio::test]
    async fn a_sidecar_without_its_app_fails_probes() {
        let mut sidecar = start(free_port(), &[]);
        let probe = eventually_get(sidecar.serving, "K-Network-Probe: queue\r\n").await;
        assert!(probe.starts_with("HTTP/1.1 503"), "{probe}");
        let response = eventually_get(sidecar.serving, "").await;
        assert!(response.starts_with("HTTP/1.1 502"), "{response}");
        assert!(response.contains("could not reach the app"), "{response}");
        let _ = sidecar.child.kill();
        let _ = sidecar.child.wait();
    }

    #[test]
    fn a_bad_variable_is_named_in_the_error() {
        let out = Command::new(env!("CARGO_BIN_EXE_knative"))
            .arg("queue-proxy")
            .env("CONTAINER_CONCURRENCY", "many")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("environment variable CONTAINER_CONCURRENCY=\"many\""),
            "{stderr}"
        );
    }

    fn nix_kill(child: &Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
}

/// `knative up` in the background with its own state directory and free
/// ports; stopped with SIGINT (as Ctrl-C) when dropped, unless
/// [`Up::stop`] stopped it.
struct Up {
    child: std::process::Child,
    state: tempfile::TempDir,
    exited: bool,
}

impl Up {
    fn start(manifests: &str) -> Up {
        let state = tempfile::tempdir().expect("temp dir");
        let child = Command::new(env!("CARGO_BIN_EXE_knative"))
            .args(["--state-dir"])
            .arg(state.path())
            .args([
                "up",
                "--ingress-port",
                "0",
                "--broker-port",
                "0",
                "-f",
                manifests,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("knative up starts");
        let admin = state.path().join("admin.json");
        let start = std::time::Instant::now();
        while !admin.exists() {
            assert!(
                start.elapsed().as_secs() < 30,
                "knative up never wrote admin.json"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Up {
            child,
            state,
            exited: false,
        }
    }

    /// Sends `signal` and waits (at most 30 s) for the process to exit.
    fn stop(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalled");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                self.exited = true;
                return status;
            }
            assert!(
                start.elapsed().as_secs() < 30,
                "knative up did not exit within 30 s of {signal}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_knative"))
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .output()
            .expect("the knative binary runs")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }
}

#[test]
fn up_serves_the_samples_and_the_other_commands_talk_to_it() {
    let up = Up::start(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/manifests"));
    // The admin file is the owner's only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(up.state.path().join("admin.json"))
        .expect("admin.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Wait for the sample service to be Ready, through `knative get`.
    let start = std::time::Instant::now();
    loop {
        let out = up.run(&["get", "ksvc", "hello", "-o", "json"]);
        if out.status.success() {
            let svc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            let ready = svc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                break;
            }
        }
        assert!(start.elapsed().as_secs() < 60, "hello never became ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let table = up.run(&["get", "ksvc"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("hello") && table.contains("event-display"),
        "{table}"
    );
    assert!(table.contains("True"), "{table}");

    let yaml = up.run(&["get", "broker", "default", "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("kind: Broker"));

    // A bad manifest: refused with the field path, exit code 1.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: default\n  subscriber: {}\n",
    )
    .expect("writes");
    let out = up.run(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.subscriber"), "{stderr}");

    let out = up.run(&["delete", "ksvc", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = up.run(&["get", "ksvc", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn up_stops_cleanly_on_sigterm() {
    let empty = tempfile::tempdir().expect("temp dir");
    let mut up = Up::start(empty.path().to_str().expect("utf-8"));
    // A service's replica is a child process that must go too.
    let service = empty.path().join("svc.yaml");
    std::fs::write(
        &service,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello, namespace: default}\nspec:\n  template:\n    metadata:\n      annotations: {autoscaling.knative.dev/min-scale: \"1\"}\n    spec:\n      containers: [{image: knative.dev/sample-app}]\n",
    )
    .expect("writes");
    let out = up.run(&["apply", "-f", service.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    let replicas = loop {
        let out = up.run(&["get", "ksvc", "hello"]);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let replicas = children_of(up.child.id());
        if table.contains("True") && !replicas.is_empty() {
            break replicas;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "hello never became Ready with a replica process: {table}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };

    let status = up.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        !up.state.path().join("admin.json").exists(),
        "admin.json was left behind"
    );
    for pid in replicas {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "replica process {pid} outlived knative up"
        );
    }
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`: the fields after the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

#[test]
fn commands_without_a_running_platform_say_how_to_start_one() {
    let state = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_knative"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["get", "ksvc"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("knative up"));
}

#[test]
fn the_demo_runs_every_step_and_ends_with_a_summary() {
    let start = std::time::Instant::now();
    let out = knative(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.split("summary").nth(1).expect("a summary");
    assert!(
        summary.lines().filter(|l| l.contains('✓')).count() >= 5,
        "{stdout}"
    );
    assert!(!summary.contains('✗'), "{stdout}");
    assert!(
        start.elapsed().as_secs() < 120,
        "the demo took {:?}",
        start.elapsed()
    );
}
