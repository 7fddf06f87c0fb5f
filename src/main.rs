//! The `knative` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use tokio::signal::unix::SignalKind;

/// mimalloc rather than glibc's allocator: the data planes allocate per
/// request and per event (measured in the README's broker section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use cli::{admin, demo, table};

/// Knative Serving, Eventing and Build on your machine, no cluster needed.
#[derive(Debug, Parser)]
#[command(name = "knative", version, about, long_about = None)]
struct Cli {
    /// Where `knative up` keeps its state (the event log, admin.json);
    /// default: $KNATIVE_STATE_DIR, else $XDG_STATE_HOME/knative, else
    /// ~/.local/state/knative.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    /// A table (default).
    Table,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the parts compiled into this build.
    Version,
    /// Run the local platform: Serving, Eventing and Build on loopback ports.
    ///
    /// Applies the manifests in each -f directory or file at start and
    /// again when they change; other commands (apply, get, delete, logs,
    /// events) talk to it. Stops on Ctrl-C (SIGINT) or SIGTERM, removing
    /// admin.json and every replica process.
    Up {
        /// Manifests to apply and watch (files or directories).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// The Serving ingress port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8080)]
        ingress_port: u16,
        /// The broker ingress port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8081)]
        broker_port: u16,
        /// The channel ingress port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8082)]
        channel_port: u16,
    },
    /// Apply manifests to the running platform (all or nothing).
    Apply {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Show objects: `knative get ksvc`, `knative get trigger orders -o yaml`.
    Get {
        /// The kind: service (ksvc), configuration, revision, route, broker,
        /// trigger, inmemorychannel (imc), channel, subscription, sequence,
        /// parallel, pingsource, sinkbinding, containersource, task,
        /// taskrun (tr), pipeline, pipelinerun (pr).
        kind: String,
        /// One object's name (all of them when left out).
        name: Option<String>,
        /// The namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete an object.
    Delete {
        /// The kind.
        kind: String,
        /// Its name.
        name: String,
        /// The namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Print the output of a service's (or revision's) replicas.
    Logs {
        /// The service or revision.
        name: String,
        /// The namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the events the brokers accepted.
    Events {
        /// Keep printing new events.
        #[arg(short, long)]
        follow: bool,
    },
    /// A scripted tour of the platform that ends with a summary.
    Demo,
    /// Run the sample app (the image `knative.dev/sample-app`).
    SampleApp,
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
    QueueProxy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        let features = knative::enabled_features();
        let features = if features.is_empty() {
            "core only".to_owned()
        } else {
            features.join(", ")
        };
        println!("knative {} ({features})", knative::VERSION);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("knative: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let state = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let result = runtime.block_on(run(cli.command, &state));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("knative: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `$KNATIVE_STATE_DIR`, `$XDG_STATE_HOME/knative` or `~/.local/state/knative`.
fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KNATIVE_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("knative");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/knative")
}

async fn run(command: Command, state: &Path) -> Result<(), String> {
    match command {
        Command::Version => Ok(()),
        Command::QueueProxy => {
            init_logs("info");
            knative::serving::dataplane::queue_proxy::run_from_env()
                .await
                .map_err(|e| e.to_string())
        }
        Command::SampleApp => knative::serving::sample_app::run()
            .await
            .map_err(|e| e.to_string()),
        Command::Demo => {
            init_logs("error");
            demo::run().await
        }
        Command::Up {
            files,
            ingress_port,
            broker_port,
            channel_port,
        } => {
            init_logs("error");
            up(state, files, [ingress_port, broker_port, channel_port]).await
        }
        Command::Apply { files } => {
            let yaml = read_manifests(&files)?;
            let client = admin::Client::from_state(state)?;
            let applied = client.call(Method::POST, "/v1/apply", Some(yaml)).await?;
            for a in applied.as_array().into_iter().flatten() {
                println!(
                    "{}/{} {}",
                    a["kind"].as_str().unwrap_or(""),
                    a["name"].as_str().unwrap_or(""),
                    a["action"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let client = admin::Client::from_state(state)?;
            let mut path = format!("/v1/objects/{kind}?");
            if !all_namespaces || name.is_some() {
                path.push_str(&format!("namespace={namespace}&"));
            }
            if let Some(name) = &name {
                path.push_str(&format!("name={name}"));
            }
            let value = client.call(Method::GET, &path, None).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
                ),
                Output::Yaml => print!(
                    "{}",
                    serde_yaml::to_string(&value).map_err(|e| e.to_string())?
                ),
                Output::Table => {
                    let info = client.call(Method::GET, "/v1/info", None).await?;
                    let canonical = canonical_kind(&info, &kind);
                    let objects = match value {
                        serde_json::Value::Array(items) => items,
                        one => vec![one],
                    };
                    print!("{}", table::render(&canonical, &objects));
                }
            }
            Ok(())
        }
        Command::Delete {
            kind,
            name,
            namespace,
        } => {
            let client = admin::Client::from_state(state)?;
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/objects/{kind}/{namespace}/{name}"),
                    None,
                )
                .await?;
            println!("{kind}/{name} deleted");
            Ok(())
        }
        Command::Logs {
            name,
            namespace,
            follow,
        } => {
            let client = admin::Client::from_state(state)?;
            let mut printed = 0usize;
            loop {
                let lines = client
                    .call(Method::GET, &format!("/v1/logs/{namespace}/{name}"), None)
                    .await?;
                let lines = lines.as_array().cloned().unwrap_or_default();
                // Replicas keep their latest lines: print what is new.
                for line in lines.iter().skip(printed.min(lines.len())) {
                    println!(
                        "[{}] {}",
                        line["replica"].as_str().unwrap_or(""),
                        line["line"].as_str().unwrap_or("")
                    );
                }
                printed = lines.len();
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Command::Events { follow } => {
            let client = admin::Client::from_state(state)?;
            let mut seen = 0usize;
            loop {
                let events = client.call(Method::GET, "/v1/events", None).await?;
                let events = events.as_array().cloned().unwrap_or_default();
                for e in events.iter().skip(seen.min(events.len())) {
                    println!(
                        "{}  {}  type={} source={} id={}",
                        e["time"].as_str().unwrap_or(""),
                        e["broker"].as_str().unwrap_or(""),
                        e["type"].as_str().unwrap_or(""),
                        e["source"].as_str().unwrap_or(""),
                        e["id"].as_str().unwrap_or("")
                    );
                }
                seen = events.len();
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The canonical name of `kind` (an alias such as `ksvc`) from the
/// platform's kind list.
fn canonical_kind(info: &serde_json::Value, kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    for entry in info["kinds"].as_array().into_iter().flatten() {
        let name = entry[0].as_str().unwrap_or("");
        let aliases = entry[1].as_array().cloned().unwrap_or_default();
        if name == lower || aliases.iter().any(|a| a.as_str() == Some(lower.as_str())) {
            return name.to_owned();
        }
    }
    lower
}

/// The YAML files in `paths` (directories: their `.yaml`/`.yml` files in
/// name order), joined into one multi-document stream.
fn read_manifests(paths: &[PathBuf]) -> Result<String, String> {
    let mut out = String::new();
    for file in manifest_files(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        out.push_str("\n---\n");
        out.push_str(&text);
    }
    Ok(out)
}

fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(format!("{} does not exist", path.display()));
        }
    }
    Ok(files)
}

/// The stream of `kind` signals, installed now.
fn signal(kind: SignalKind) -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(kind).map_err(|e| format!("cannot handle signals: {e}"))
}

/// `knative up`: serves until SIGINT or SIGTERM, then stops the manifest
/// watcher and the admin API, removes admin.json and shuts the platform
/// down.
async fn up(
    state: &Path,
    files: Vec<PathBuf>,
    [ingress_port, broker_port, channel_port]: [u16; 3],
) -> Result<(), String> {
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // Installed before anything starts, so that a SIGTERM at any point
    // after this shuts the platform down rather than killing the process.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let platform = knative::local::Platform::builder()
        .state_dir(state)
        .ingress_port(ingress_port)
        .broker_port(broker_port)
        .channel_port(channel_port)
        .sample_app([me.to_string_lossy().into_owned(), "sample-app".to_owned()])
        .start()
        .await
        .map_err(|e| {
            format!("{e} (pick other ports with --ingress-port, --broker-port and --channel-port)")
        })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = admin::Endpoint {
        url: format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        ),
        token: admin::token(),
    };
    admin::write_endpoint(state, &endpoint).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(admin::serve(
        platform.clone(),
        endpoint.token.clone(),
        listener,
        wait(stopped.clone()),
    ));
    println!("knative local platform is up");
    println!(
        "  services:  http://{{name}}.{{namespace}}.{}:{}  (ingress 127.0.0.1:{})",
        platform.domain(),
        platform.ingress().port(),
        platform.ingress().port()
    );
    println!(
        "  brokers:   http://{}/{{namespace}}/{{broker}}",
        platform.broker_ingress()
    );
    println!(
        "  channels:  http://{}/{{namespace}}/{{channel}}",
        platform.channel_ingress()
    );
    println!("  state:     {}", state.display());
    println!("  try:       knative get ksvc    (Ctrl-C or SIGTERM stops)");
    let watcher = (!files.is_empty()).then(|| {
        let platform = platform.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move { watch_manifests(platform, files, stopped).await })
    });
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    println!("{name}: stopping… (again to stop at once)");
    // A second signal while replicas get their grace period: stop now.
    let state_dir = state.to_path_buf();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("stopping at once");
        let _ = std::fs::remove_file(admin::endpoint_file(&state_dir));
        std::process::exit(130);
    });
    let _ = stop.send(true);
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = server.await;
    let _ = std::fs::remove_file(admin::endpoint_file(state));
    platform.shutdown().await;
    Ok(())
}

/// Applies the manifests now and whenever a file changes (polled each
/// second), printing what happened.
async fn watch_manifests(
    platform: knative::local::Platform,
    files: Vec<PathBuf>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Vec<(PathBuf, Option<std::time::SystemTime>)> = Vec::new();
    loop {
        let current: Vec<(PathBuf, Option<std::time::SystemTime>)> = manifest_files(&files)
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                let modified = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                (f, modified)
            })
            .collect();
        if current != last {
            let changed: Vec<PathBuf> = current
                .iter()
                .filter(|c| !last.contains(c))
                .map(|(f, _)| f.clone())
                .collect();
            match read_manifests(&changed) {
                Ok(yaml) => match platform.apply(&yaml).await {
                    Ok(applied) => {
                        for a in applied {
                            println!("{}/{} {}", a.kind, a.name, a.action);
                        }
                    }
                    Err(e) => eprintln!("knative: {e}"),
                },
                Err(e) => eprintln!("knative: {e}"),
            }
            last = current;
        }
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `level`).
fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
