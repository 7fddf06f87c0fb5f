//! Compare Knative's KPA with a scaling policy of your own on a load trace,
//! using the autoscaling simulator (`knative::serving::autoscaling::sim`).
//!
//! Run it from the repository's root with
//! `cargo run --example compare_scaling_policies`, or give it a trace of
//! your own: `cargo run --example compare_scaling_policies -- trace.csv`,
//! with lines `t_seconds,concurrency[,rps]` (a header line is skipped).
//!
//! It prints a Markdown table (pod-seconds paid, requests that met no ready
//! replica, waiting-time percentiles, most replicas) and writes each
//! policy's per-second timeline as CSV and as an SVG chart under
//! `target/sim/`.

use std::error::Error;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use knative::serving::autoscaling::config::AutoscalerConfig;
use knative::serving::autoscaling::kpa::DeciderSpec;
use knative::serving::autoscaling::pa::ScalingBounds;
use knative::serving::autoscaling::policy::{Kpa, PolicyInput, PolicyOutput, ScalingPolicy};
use knative::serving::autoscaling::sim::{Report, SimConfig, Trace, simulate};

/// A day-in-the-life trace: idle, a ramp, a spike, a plateau, idle again.
/// Requests take about half a second, so requests/s = 2 × in flight.
const TRACE: &str = "\
t_seconds,concurrency,rps
0,0,0
60,20,40
75,50,100
90,90,180
105,140,280
120,200,400
135,260,520
150,900,1800
170,300,600
200,280,560
240,320,640
280,300,600
330,0,0
";

/// One pod per 50 in-flight requests over the last 6 s (the panic window),
/// never fewer than one pod (so never a cold start) and never more than
/// `max-scale`; the activator is in the path only while no pod is ready.
struct OnePodPer50;

impl ScalingPolicy for OnePodPer50 {
    fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput {
        let m = input.metrics;
        let load = m.panic_concurrency.or(m.stable_concurrency).unwrap_or(0.0);
        let mut desired = ((load / 50.0).ceil() as i32).max(1);
        if input.bounds.max_scale > 0 {
            desired = desired.min(input.bounds.max_scale);
        }
        PolicyOutput::scale(desired, input.ready_pods == 0)
    }
}

/// One table row.
fn row(name: &str, r: &Report) -> String {
    format!(
        "| {name} | {:.0} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {} |",
        r.pod_seconds,
        r.cold_start_requests,
        r.wait_p50.as_secs_f64(),
        r.wait_p90.as_secs_f64(),
        r.wait_p99.as_secs_f64(),
        r.max_replicas,
    )
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let (source, text) = match std::env::args().nth(1) {
        Some(path) => {
            let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
            (path, text)
        }
        None => ("the built-in trace".to_owned(), TRACE.to_owned()),
    };
    let trace = Trace::from_csv(&text).map_err(|e| format!("{source}: {e}"))?;
    let config = SimConfig::new(ScalingBounds::from_config(&AutoscalerConfig::default()));

    let kpa = simulate(&mut Kpa::new(DeciderSpec::default()), &trace, &config);
    let user = simulate(&mut OnePodPer50, &trace, &config);

    println!(
        "{source}: {} s simulated, {:.0} requests, {} in-flight requests per pod, pods ready {} s after being asked for\n",
        kpa.samples.len(),
        kpa.requests,
        config.pod_capacity,
        config.pod_startup.as_secs(),
    );
    println!(
        "| policy | pod-seconds | cold-start requests | wait p50 | wait p90 | wait p99 | max replicas |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("KPA (defaults)", &kpa));
    println!("{}", row("user: one pod per 50 in flight, min 1", &user));
    println!();

    let dir = Path::new("target/sim");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (file, title, report) in [
        ("kpa", "KPA (default config-autoscaler)", &kpa),
        (
            "user",
            "User policy: one pod per 50 in flight, min 1",
            &user,
        ),
    ] {
        let csv = dir.join(format!("{file}.csv"));
        fs::write(&csv, report.timeline_csv())
            .map_err(|e| format!("writing {}: {e}", csv.display()))?;
        let svg = dir.join(format!("{file}.svg"));
        fs::write(&svg, report.timeline_svg(title)?)
            .map_err(|e| format!("writing {}: {e}", svg.display()))?;
        println!("wrote {} and {}", csv.display(), svg.display());
    }
    Ok(())
}
