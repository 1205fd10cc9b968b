//! `drill-bench`: wall time of a full drill of each scenario on mocks
//! (BENCHMARKS.md, "Drills"), process start to report written: `drhost
//! drill runbooks/<scenario>.toml --mock runbooks/fixtures/<scenario>/drill.toml`
//! at `--time-scale max`, writing the HTML, Markdown and JSON reports.
//!
//! ```text
//! cargo build --release -p drhost --target-dir target && \
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml && \
//! cargo run --release -p drhost-tests --bin drill-bench [-- ROUNDS]
//! ```
//!
//! Uses `target/release/drhost` (or `$DRHOST_BIN`). The first drill of each
//! scenario compiles the plugin into the cache and is reported apart; the
//! figures are over the cached rounds that follow, as an on-call engineer's
//! machine has them after `drhost describe` or a first drill.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let root = drhost_tests::repo_root();
    let bin = std::env::var_os("DRHOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/drhost"));
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: cargo build --release -p drhost (or set DRHOST_BIN)",
        bin.display()
    );
    let work = tempfile::tempdir()?;
    println!(
        "| scenario | first drill (compiles) | min | median | p95 | max | simulated total |\n|---|---|---|---|---|---|---|"
    );
    for scenario in [
        "cluster-failure",
        "database-corruption",
        "app-rollback",
        "security-breach",
    ] {
        let mut times = Vec::new();
        let mut first = 0.0;
        let mut simulated = String::new();
        for round in 0..=rounds {
            let audit = work.path().join(format!("{scenario}-{round}"));
            let t = Instant::now();
            let out = Command::new(&bin)
                .current_dir(&root)
                .env("DRHOST_CACHE_DIR", work.path().join("cache"))
                .args(["drill", &format!("runbooks/{scenario}.toml"), "--mock"])
                .arg(format!("runbooks/fixtures/{scenario}/drill.toml"))
                .arg("--audit-dir")
                .arg(&audit)
                .output()?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                out.status.success(),
                "{scenario}: drill failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let written = std::fs::read_dir(&audit)?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains(".drill."))
                .count();
            anyhow::ensure!(
                written == 3,
                "{scenario}: {written} report files, expected 3"
            );
            if round == 0 {
                first = ms;
                let text = String::from_utf8_lossy(&out.stderr).into_owned();
                simulated = text
                    .lines()
                    .find(|l| l.contains("drill (simulated time)"))
                    .and_then(|l| l.split(" in ").nth(1))
                    .and_then(|l| l.split(" of ").next())
                    .unwrap_or("?")
                    .to_owned();
            } else {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {scenario} | {first:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {simulated} |",
            times[0],
            pct(0.5),
            pct(0.95),
            times[times.len() - 1]
        );
    }
    Ok(())
}
