//! Decider throughput: single decider ticks per second, and one 2-second
//! tick across 10 000 revisions with realistic windows (each revision
//! records its second of metrics into its stable/panic windows, reads them,
//! and runs the decider).
//!
//! Run: `cargo bench -p knative-serving --bench decider`
//! (a plain harness: prints the median of several runs; one core).

use std::hint::black_box;
use std::time::{Duration, Instant};

use knative_serving::autoscaling::kpa::{Decider, DeciderSpec, Observation};
use knative_serving::autoscaling::metrics::{Algorithm, MetricWindows};

const REVISIONS: usize = 10_000;
const RUNS: usize = 7;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// A deterministic load in [0, 500) per revision and second.
fn load(revision: usize, second: u64) -> f64 {
    let x = (revision as u64).wrapping_mul(2_654_435_761) ^ second.wrapping_mul(40_503);
    (x % 500) as f64
}

fn bench_single_decider() -> (f64, Duration) {
    let ticks = 1_000_000u64;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut decider = Decider::new(DeciderSpec::default());
        let start = Instant::now();
        for t in 0..ticks {
            let l = load(1, t);
            let d = decider.decide(
                Duration::from_secs(2 * t),
                Observation {
                    ready_pods: 3,
                    stable: l,
                    panic: l * 1.5,
                },
            );
            black_box(d);
        }
        runs.push(start.elapsed());
    }
    let m = median(runs);
    (
        ticks as f64 / m.as_secs_f64(),
        m / u32::try_from(ticks).unwrap_or(u32::MAX),
    )
}

fn bench_fleet_tick() -> Duration {
    let spec = DeciderSpec::default();
    let mut fleet: Vec<(MetricWindows, Decider)> = (0..REVISIONS)
        .map(|_| {
            (
                MetricWindows::new(spec.stable_window, spec.panic_window, Algorithm::Linear),
                Decider::new(spec.clone()),
            )
        })
        .collect();
    // Fill a full stable window of history first.
    for second in 0..60u64 {
        for (i, (windows, _)) in fleet.iter_mut().enumerate() {
            windows.record(Duration::from_secs(second), load(i, second));
        }
    }
    let mut runs = Vec::with_capacity(RUNS);
    let mut second = 60u64;
    for _ in 0..RUNS {
        let start = Instant::now();
        // One tick: two seconds of records, then a decision per revision.
        for (i, (windows, decider)) in fleet.iter_mut().enumerate() {
            let now = Duration::from_secs(second + 1);
            windows.record(Duration::from_secs(second), load(i, second));
            windows.record(now, load(i, second + 1));
            if let Some((stable, panic)) = windows.stable_and_panic(now) {
                black_box(decider.decide(
                    now,
                    Observation {
                        ready_pods: 3,
                        stable,
                        panic,
                    },
                ));
            }
        }
        runs.push(start.elapsed());
        second += 2;
    }
    median(runs)
}

fn main() {
    let (per_second, per_tick) = bench_single_decider();
    println!("decider: {per_second:.0} ticks/s ({per_tick:?} per tick), median of {RUNS}");
    let fleet = bench_fleet_tick();
    println!(
        "fleet: one 2 s tick across {REVISIONS} revisions (record 2 s + read windows + decide): {fleet:?}, median of {RUNS}"
    );
}
