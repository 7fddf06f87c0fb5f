//! Image build speed against `tar czf` of the same tree (BUILD.md §4).
//!
//! Creates a ~50 MB source tree (many small text files, a few large
//! compressible files, a few incompressible ones), then times in the same
//! run: `tar czf` of the tree (the baseline), and `ImageBuilder::build` into
//! a fresh OCI layout at the default gzip level and, for comparison, at the
//! levels listed in `BENCH_LEVELS` (default `6`). Each timing is the best of
//! `BENCH_RUNS` runs (default 3). Goal: default build ≤ 1.3 × `tar czf`.
//!
//! Run: `nice -n 19 cargo bench -j 1 --bench image`

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use knative_build::image::{DEFAULT_COMPRESSION_LEVEL, ImageBuilder, OciLayout};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A small deterministic PRNG (xorshift64*), so every run builds the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "fn", "let", "mut", "struct", "impl", "match", "Some", "None", "Ok", "Err", "self", "return",
    "pub", "use", "crate", "async", "await", "String", "Vec", "u64", "config", "request",
    "response", "handler", "route", "revision", "traffic", "percent", "image", "layer", "digest",
    "registry", "=>", "{", "}", "(", ")", ";", "::", "&", "// TODO", "error", "value", "name",
];

fn text(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 16);
    while out.len() < bytes {
        let indent = rng.below(4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        for _ in 0..(3 + rng.below(9)) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(bytes);
    out
}

fn random_bytes(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// ~50 MB: 4,000 small text files (~16 MB), 4 large text files (20 MB),
/// 3 incompressible blobs (12 MB), in nested directories.
fn make_tree(root: &Path) -> BenchResult<u64> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut total = 0u64;
    for i in 0..4000 {
        let dir = root.join(format!("src/mod{:02}/sub{}", i % 40, i % 7));
        fs::create_dir_all(&dir)?;
        let size = 1000 + rng.below(6000) as usize;
        fs::write(dir.join(format!("file{i}.rs")), text(&mut rng, size))?;
        total += size as u64;
    }
    fs::create_dir_all(root.join("data"))?;
    for i in 0..4 {
        let size = 5 * 1024 * 1024;
        fs::write(root.join(format!("data/log{i}.txt")), text(&mut rng, size))?;
        total += size as u64;
    }
    fs::create_dir_all(root.join("bin"))?;
    for i in 0..3 {
        let size = 4 * 1024 * 1024;
        fs::write(
            root.join(format!("bin/blob{i}.bin")),
            random_bytes(&mut rng, size),
        )?;
        total += size as u64;
    }
    Ok(total)
}

fn best_of<F: FnMut() -> BenchResult<()>>(runs: usize, mut f: F) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

fn tar_czf(tree: &Path, out: &Path) -> BenchResult<()> {
    let status = Command::new("tar")
        .arg("czf")
        .arg(out)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()?;
    if !status.success() {
        return Err(format!("tar czf failed: {status}").into());
    }
    Ok(())
}

fn build_image(
    runtime: &tokio::runtime::Runtime,
    tree: &Path,
    scratch: &Path,
    level: u32,
) -> BenchResult<u64> {
    let dir = scratch.join(format!("layout-{level}"));
    let _ = fs::remove_dir_all(&dir);
    let layout = OciLayout::create(&dir)?;
    let image = runtime.block_on(
        ImageBuilder::new(tree)
            .compression_level(level)
            .entrypoint(["/bin/app"])
            .build(&layout),
    )?;
    Ok(image.layers().iter().map(|l| l.size).sum())
}

fn main() -> BenchResult<()> {
    // `cargo test --benches` runs bench targets with `--bench`-less args; keep it quick there.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let levels: Vec<u32> = std::env::var("BENCH_LEVELS")
        .unwrap_or_else(|_| "6".to_string())
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();

    let scratch = tempfile::tempdir()?;
    let tree = scratch.path().join("tree");
    let total = make_tree(&tree)?;
    let files = 4000 + 4 + 3;
    println!(
        "tree: {files} files, {:.1} MB (small text, large text, incompressible)",
        total as f64 / 1e6
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Warm the page cache for both contenders.
    let tgz = scratch.path().join("tree.tgz");
    tar_czf(&tree, &tgz)?;
    build_image(&runtime, &tree, scratch.path(), DEFAULT_COMPRESSION_LEVEL)?;

    let tar_time = best_of(runs, || tar_czf(&tree, &tgz))?;
    let tar_size = fs::metadata(&tgz)?.len();
    println!(
        "tar czf (gzip -6):              {:>7.3} s  {:>6.1} MB",
        tar_time.as_secs_f64(),
        tar_size as f64 / 1e6
    );

    let report = |level: u32| -> BenchResult<f64> {
        let mut size = 0;
        let time = best_of(runs, || {
            size = build_image(&runtime, &tree, scratch.path(), level)?;
            Ok(())
        })?;
        let ratio = time.as_secs_f64() / tar_time.as_secs_f64();
        println!(
            "ImageBuilder -> OCI layout, gzip level {level}: {:>7.3} s  {:>6.1} MB  ratio {ratio:.2}x",
            time.as_secs_f64(),
            size as f64 / 1e6
        );
        Ok(ratio)
    };
    let default_ratio = report(DEFAULT_COMPRESSION_LEVEL)?;
    for level in levels
        .into_iter()
        .filter(|l| *l != DEFAULT_COMPRESSION_LEVEL)
    {
        report(level)?;
    }
    println!(
        "default level {DEFAULT_COMPRESSION_LEVEL}: {default_ratio:.2}x tar czf (goal <= 1.30x): {}",
        if default_ratio <= 1.3 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
