//! Step sequencing overhead of the local executor (BUILD.md §4, §5 pain
//! point 2).
//!
//! Runs a 20-step no-op Task (`script: "true"`, so each step is `sh -e
//! <script>`) with `LocalExecutor`, from `start` to the final status, and
//! in the same run the baseline: 20 × `sh -c true` spawned and awaited one
//! after another with `tokio::process`. Per-step overhead = (Task −
//! baseline) / 20. Tekton's entrypoint polled wait files every second
//! (tektoncd/pipeline#1570: ~18 s for such a Task). Goal: ≤ 5 ms per step.
//! Each timing is the median of `BENCH_RUNS` runs (default 10), after one
//! warm-up run of each.
//!
//! Run: `nice -n 19 cargo bench -j 1 --bench task`

use std::time::{Duration, Instant};

use knative_build::api::{Step, TaskSpec};
use knative_build::executor::{
    ExecutionPhase, ExecutionRequest, LocalExecutor, LocalExecutorConfig, RunKey, StepExecutor,
};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const STEPS: usize = 20;

fn task() -> TaskSpec {
    TaskSpec {
        steps: (0..STEPS)
            .map(|i| Step::script(format!("noop-{i}"), "alpine", "true"))
            .collect(),
        ..TaskSpec::default()
    }
}

async fn run_task(executor: &LocalExecutor, attempt: u32) -> BenchResult<Duration> {
    let started = Instant::now();
    let execution = executor
        .start(ExecutionRequest {
            key: RunKey::new("bench", "noop", attempt),
            task_spec: task(),
            workspaces: Vec::new(),
            timeout: None,
        })
        .await?;
    let mut status = execution.status.clone();
    let phase = status.wait_for(|s| s.phase.is_done()).await?.phase;
    let elapsed = started.elapsed();
    if phase != ExecutionPhase::Succeeded {
        return Err(format!("the no-op Task ended {phase:?}").into());
    }
    Ok(elapsed)
}

async fn run_baseline() -> BenchResult<Duration> {
    let started = Instant::now();
    for _ in 0..STEPS {
        let status = tokio::process::Command::new("sh")
            .args(["-c", "true"])
            .status()
            .await?;
        if !status.success() {
            return Err("sh -c true failed".into());
        }
    }
    Ok(started.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> BenchResult<()> {
    // `cargo test --benches` runs bench targets too; keep it quick there.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    let runs: u32 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(10);
    let root = tempfile::tempdir()?;
    let executor = LocalExecutor::new(LocalExecutorConfig::new(root.path()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        run_baseline().await?;
        run_task(&executor, 0).await?;
        let mut task_times = Vec::new();
        let mut baseline_times = Vec::new();
        for attempt in 1..=runs {
            baseline_times.push(run_baseline().await?);
            task_times.push(run_task(&executor, attempt).await?);
        }
        let task = median(task_times);
        let baseline = median(baseline_times);
        let per_step = task.saturating_sub(baseline) / STEPS as u32;
        println!("{STEPS}-step no-op Task, median of {runs} runs");
        println!(
            "  baseline  {STEPS} x `sh -c true`: {:8.2} ms ({:.2} ms per process)",
            ms(baseline),
            ms(baseline) / STEPS as f64
        );
        println!(
            "  LocalExecutor Task:          {:8.2} ms ({:.2} ms per step)",
            ms(task),
            ms(task) / STEPS as f64
        );
        println!(
            "  overhead per step:           {:8.2} ms (goal <= 5 ms; Tekton polled at 1000 ms)",
            ms(per_step)
        );
        Ok(())
    })
}
