//! Bad-input battery: a bounded mutation fuzzer (no extra dependency; a
//! fixed-seed xorshift, so every CI run tries the same inputs) over the
//! runbook config parser, the fixture parser and `audit verify`. Seeds are
//! every shipped runbook and fixture and a real audit log; mutations flip,
//! insert, delete and duplicate bytes, truncate, and splice lines between
//! inputs. Each input must parse or fail with an error naming the file;
//! none may panic. Prints `fuzz executions without a panic: N` (the figure
//! in BENCHMARKS.md). `cargo fuzz` needs a nightly toolchain, which this
//! machine cannot install; this runs on stable in CI.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use drhost::audit::{AuditWriter, Event, EventKind, PluginIdentity};
use drhost::fixture::Fixture;
use drhost::runbook::Runbook;
use drhost_tests::repo_root;

/// Mutated inputs per target.
const EXECUTIONS: usize = 10_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes for TOML and JSON.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"[[",
    b"{",
    b"}",
    b"=",
    b",",
    b"\n",
    b"\\",
    b"\\u0000",
    b"#",
    b"..",
    b"/",
    b"\xff",
    b"\xe2\x82",
    b"1e999",
    b"-1",
    b"99999999999999999999",
    b"\"\"\"",
    b"null",
    b"true",
    b"0x",
    b"\t",
    b"\r\n",
    b"inf",
    b"nan",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => v.truncate(at),
            4 => {
                let end = (at + rng.below(64)).min(v.len());
                let chunk: Vec<u8> = v[at.min(end)..end].to_vec();
                v.splice(at..at, chunk);
            }
            5 => {
                // A line from another input.
                let other = &seeds[rng.below(seeds.len())];
                let lines: Vec<&[u8]> = other.split(|b| *b == b'\n').collect();
                let line = lines[rng.below(lines.len())];
                v.splice(at..at, line.iter().copied().chain([b'\n']));
            }
            _ => {
                let n = rng.below(8);
                v.splice(at..at, std::iter::repeat_n(b'x', n));
            }
        }
    }
    v
}

fn seeds_of(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            seeds_of(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(std::fs::read(&path).expect("read"));
        }
    }
}

/// Runs `f` on `EXECUTIONS` mutants (`f` says whether the input was
/// rejected); returns how many ran, with each panic reported with its
/// input. Many mutants must be rejected, or the fuzzer tests nothing.
fn fuzz(
    name: &str,
    seed: u64,
    seeds: &[Vec<u8>],
    f: impl Fn(&[u8]) -> Result<bool, String>,
) -> usize {
    let mut rng = Rng(seed);
    let mut problems = Vec::new();
    let mut rejected = 0;
    for i in 0..EXECUTIONS {
        let input = mutate(&mut rng, seeds);
        match catch_unwind(AssertUnwindSafe(|| f(&input))) {
            Ok(Ok(r)) => rejected += usize::from(r),
            Ok(Err(e)) => problems.push(format!("{name} #{i}: {e}")),
            Err(_) => problems.push(format!(
                "{name} #{i}: PANIC on input {:?}",
                String::from_utf8_lossy(&input)
            )),
        }
        if problems.len() > 5 {
            break;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        rejected > EXECUTIONS / 4,
        "{name}: only {rejected} of {EXECUTIONS} mutants rejected"
    );
    println!("{name}: {EXECUTIONS} inputs, {rejected} rejected with an error naming the file");
    EXECUTIONS
}

#[test]
fn malformed_runbooks_fixtures_and_audit_logs_get_errors_not_panics() {
    let root = repo_root();
    let mut config_seeds = Vec::new();
    seeds_of(&root.join("runbooks"), &mut config_seeds);
    assert!(config_seeds.len() >= 30, "{}", config_seeds.len());
    let file = PathBuf::from("/srv/dr/fuzz-input.toml");
    let mut total = 0;

    total += fuzz("runbook", 0x9e37_79b9_7f4a_7c15, &config_seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        match Runbook::parse(&file, &text) {
            Ok(_) => Ok(false),
            Err(e) if e.to_string().contains("fuzz-input.toml") => Ok(true),
            Err(e) => Err(format!("error does not name the file: {e}")),
        }
    });
    total += fuzz("fixture", 0xdead_beef_cafe_f00d, &config_seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        match Fixture::parse(&file, &text) {
            Ok(_) => Ok(false),
            Err(e) if e.to_string().contains("fuzz-input.toml") => Ok(true),
            Err(e) => Err(format!("error does not name the file: {e}")),
        }
    });

    // A real audit log: a short run's records.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = AuditWriter::create(
        dir.path(),
        "20261201T000000Z-f00d",
        PluginIdentity {
            name: "fuzz".into(),
            version: "1.0.0".into(),
            sha256: "0".repeat(64),
        },
    )
    .expect("writer");
    w.append(Event::new(EventKind::RunStart).args(serde_json::json!({"rto_ms": 60000})))
        .expect("append");
    w.append(
        Event::new(EventKind::StepStart)
            .step("s")
            .args(serde_json::json!({"budget_ms": 1000})),
    )
    .expect("append");
    w.append(
        Event::new(EventKind::CallIntent)
            .step("s")
            .call("k8s", "scale")
            .args(serde_json::json!({"namespace": "ns", "name": "app", "replicas": 0})),
    )
    .expect("append");
    w.append(
        Event::new(EventKind::CallOutcome)
            .step("s")
            .call("k8s", "scale")
            .outcome(serde_json::json!({"ok": 3})),
    )
    .expect("append");
    w.append(
        Event::new(EventKind::StepEnd)
            .step("s")
            .outcome(serde_json::json!({"status": "done"})),
    )
    .expect("append");
    w.append_durable(
        Event::new(EventKind::RunEnd).outcome(serde_json::json!({"outcome": "completed"})),
    )
    .expect("append");
    let log_seed = std::fs::read(w.path()).expect("log");
    let target = dir.path().join("fuzz.audit.jsonl");
    total += fuzz(
        "audit verify",
        0x0123_4567_89ab_cdef,
        &[log_seed],
        |bytes| {
            std::fs::write(&target, bytes).map_err(|e| e.to_string())?;
            // Verify reports problems (Ok with a problem) or fails to read:
            // either way it must not panic, and a report names the file.
            match drhost::audit::verify(&target) {
                Ok(report) if report.to_string().contains("fuzz.audit.jsonl") => {
                    Ok(!report.is_ok())
                }
                Ok(report) => Err(format!("report does not name the file: {report}")),
                Err(e) if e.to_string().contains("fuzz.audit.jsonl") => Ok(true),
                Err(e) => Err(format!("error does not name the file: {e}")),
            }
        },
    );
    println!("fuzz executions without a panic: {total}");
}
