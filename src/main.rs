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
    }
}
