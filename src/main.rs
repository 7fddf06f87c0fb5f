//! The `knative` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Knative Serving, Eventing and Build on your machine, no cluster needed.
#[derive(Debug, Parser)]
#[command(name = "knative", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the parts compiled into this build.
    Version,
    /// Run a revision's queue-proxy sidecar in front of its app.
    ///
    /// Configured by the environment variables of upstream's sidecar:
    /// QUEUE_SERVING_PORT (8012), USER_PORT (8080), CONTAINER_CONCURRENCY (0),
    /// REVISION_TIMEOUT_SECONDS (300), REVISION_RESPONSE_START_TIMEOUT_SECONDS
    /// and REVISION_IDLE_TIMEOUT_SECONDS (0 = off), SERVING_READINESS_PROBE
    /// (the container's readiness probe as JSON); plus QUEUE_ADMIN_PORT (8022:
    /// /drain, /wait-for-drain), QUEUE_METRICS_PORT (9090: the autoscaler's
    /// metrics) and QUEUE_DRAIN_SECONDS (30: how long to keep serving after
    /// SIGTERM). Logs go to stderr (RUST_LOG, default info).
    #[cfg(feature = "serving")]
    QueueProxy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let features = knative::enabled_features();
            let features = if features.is_empty() {
                "core only".to_owned()
            } else {
                features.join(", ")
            };
            println!("knative {} ({features})", knative::VERSION);
            ExitCode::SUCCESS
        }
        #[cfg(feature = "serving")]
        Command::QueueProxy => {
            init_logs();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("knative queue-proxy: cannot start a runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(knative::serving::dataplane::queue_proxy::run_from_env()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("knative queue-proxy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
#[cfg(feature = "serving")]
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
