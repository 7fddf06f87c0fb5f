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
