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
