//! Support code for drhost's integration tests: the paths of the real guest
//! components (built from `plugins/` and `tests/plugins/` by `build.rs`, for
//! `wasm32-wasip2`, into `plugins/target/wasm32-wasip2/release/`) and of the
//! repository.
//!
//! ```no_run
//! let wasm = drhost_tests::plugin("misbehave");
//! let runbooks = drhost_tests::repo_root().join("runbooks");
//! # let _ = (wasm, runbooks);
//! ```
//!
//! Each guest's path is also available at compile time as
//! `env!("DRHOST_PLUGIN_<NAME>")`, e.g. `DRHOST_PLUGIN_DATABASE_CORRUPTION`.

use std::path::PathBuf;

pub mod fake_kube;
pub mod s3_server;

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The `drhost` binary of the profile the tests were built with
/// (`target/<profile>/drhost`, next to the test executables' `deps/`).
///
/// # Panics
/// When it is missing: `cargo test --workspace` builds it.
pub fn drhost_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("drhost"))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the drhost binary",
        bin.display()
    );
    bin
}

/// The absolute path of the component built from the guest package `name`
/// (e.g. `"database-corruption"`, `"misbehave"`, `"fs-access"`,
/// `"wrong-wit"`; underscores are accepted for hyphens).
///
/// # Panics
///
/// When `name` is not a guest of the plugins workspace, or its `.wasm` is
/// gone (e.g. after `cargo clean` in `plugins/`); the message says what to do.
pub fn plugin(name: &str) -> PathBuf {
    let wanted = name.replace('_', "-");
    let Some((_, path)) = PLUGINS.iter().find(|(package, _)| *package == wanted) else {
        let known: Vec<&str> = PLUGINS.iter().map(|(package, _)| *package).collect();
        panic!(
            "no plugin named {name:?}: the plugins workspace builds {}",
            known.join(", ")
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} is missing; rebuild it with `cargo build --release --target wasm32-wasip2 \
         --manifest-path plugins/Cargo.toml` (or touch tests/build.rs)",
        path.display()
    );
    path
}

/// The repository root (the directory holding the workspace `Cargo.toml`,
/// `wit/`, `plugins/` and `runbooks/`).
pub fn repo_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .expect("the tests crate lives in <repo>/tests")
        .to_path_buf()
}

/// PostgreSQL client tools for the real-backend tests: the server is
/// PGHOST/PGUSER (default 127.0.0.1, postgres; PGPORT as libpq reads it), and
/// a failure says what to install or start instead of being skipped.
pub mod pg {
    use std::process::Command;

    /// PGHOST, or 127.0.0.1.
    pub fn host() -> String {
        std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into())
    }

    /// PGUSER, or postgres.
    pub fn user() -> String {
        std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
    }

    /// `cmd` with PGHOST and PGUSER set.
    pub fn env(cmd: &mut Command) -> &mut Command {
        cmd.env("PGHOST", host()).env("PGUSER", user())
    }

    /// Runs a PostgreSQL client tool; panics with its message on failure.
    pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
        let out = env(&mut Command::new(program))
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {program}: {e}; install the PostgreSQL client tools (Debian: postgresql-client)")
            });
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n(is PostgreSQL running on 127.0.0.1:5432 with trust auth? `.ci/run` starts it; or set PGHOST/PGPORT/PGUSER)",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `psql -c SQL` on `db`, stopping at the first error; its raw output.
    pub fn psql(db: &str, sql: &str) -> Vec<u8> {
        run(
            "psql",
            &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
        )
    }

    /// `psql -At -c SQL` on `db`: unaligned rows without headers, trimmed.
    pub fn psql_at(db: &str, sql: &str) -> String {
        let out = run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-d",
                db,
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out).trim().to_owned()
    }
}

/// Helpers shared by the integration tests: an engine, a misbehave runbook
/// and fixture in a temp dir, and a run of a plugin against mocks.
pub mod support {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use drhost::capability::operator::AutoApprove;
    use drhost::engine::DrEngine;
    use drhost::fixture::Fixture;
    use drhost::plugin::{self, Plugin};
    use drhost::runbook::Runbook;
    use drhost::runner::{self, NullObserver, RunOptions, RunReport};

    /// A runbook for the `misbehave` test plugin: k8s get-deployment and
    /// scale on `ns/app` granted, `behaviour` as given, misbehave's budget
    /// set to `budget`.
    pub fn misbehave_runbook(
        dir: &Path,
        behaviour: &str,
        budget: &str,
        grant_k8s: bool,
    ) -> PathBuf {
        let grants = if grant_k8s {
            "[grants.k8s]\noperations = [\"get-deployment\", \"scale\"]\ndeployments = [\"ns/app\"]\n"
        } else {
            ""
        };
        let text = format!(
            "[plugin]\npath = {:?}\nrequire = \"misbehave@^0.1\"\n\n[run]\ncall_timeout = \"30s\"\nmemory_limit_mib = 64\n\n[params]\nbehaviour = {behaviour:?}\n\n[budgets]\nmisbehave = {budget:?}\n\n{grants}",
            super::plugin("misbehave")
        );
        let path = dir.join(format!("misbehave-{behaviour}.toml"));
        std::fs::write(&path, text).expect("write runbook");
        path
    }

    /// A fixture with deployment `ns/app` (3 replicas); `extra` is appended.
    pub fn misbehave_fixture(dir: &Path, extra: &str) -> PathBuf {
        let text = format!(
            "description = \"misbehave test\"\n[[k8s.deployments]]\nnamespace = \"ns\"\nname = \"app\"\nreplicas = 3\n{extra}"
        );
        let path = dir.join("fixture.toml");
        std::fs::write(&path, text).expect("write fixture");
        path
    }

    /// Loads a plugin for a runbook the way `drhost run` does (pin and
    /// grants checked).
    ///
    /// # Errors
    /// The plugin is refused.
    pub async fn load(
        engine: &DrEngine,
        rb: &Runbook,
        path: &Path,
    ) -> Result<Plugin, plugin::PluginError> {
        let linker = plugin::linker(engine).expect("linker");
        let p = plugin::load(engine, &linker, path, rb.memory_limit_bytes).await?;
        plugin::check_pin(&p, &rb.plugin, &rb.path)?;
        plugin::check_grants(&p, &rb.grants, &rb.path)?;
        Ok(p)
    }

    /// Runs `plugin` under `rb` against the fixture's mocks, approving all.
    pub async fn run(
        engine: &DrEngine,
        plugin: &Plugin,
        rb: &Runbook,
        fixture: &Fixture,
        audit_dir: &Path,
        dry_run: bool,
    ) -> RunReport {
        fixture.env.enforce_bundle_grants(&rb.grants);
        let caps = fixture
            .env
            .capabilities(fixture.approver(Box::new(AutoApprove)));
        let options = RunOptions {
            audit_dir: audit_dir.to_owned(),
            dry_run,
            run_id: None,
            clock: drhost::sim::RunClock::Real,
            simulation: Some(fixture.path.display().to_string()),
            audit_mirror: None,
            leases: Vec::new(),
            break_lease: false,
            lease_renew_every: std::time::Duration::from_secs(60),
            resume: false,
        };
        runner::run(engine, plugin, rb, caps, options, Arc::new(NullObserver))
            .await
            .expect("run")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_guest_is_a_built_component() {
        for name in ["database-corruption", "misbehave", "fs-access", "wrong-wit"] {
            let bytes = std::fs::read(plugin(name)).unwrap();
            assert_eq!(
                &bytes[..8],
                &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00],
                "{name} is not a component"
            );
        }
        assert_eq!(plugin("database_corruption"), plugin("database-corruption"));
        assert!(repo_root().join("wit").is_dir());
    }

    #[test]
    #[should_panic(expected = "no plugin named \"nope\"")]
    fn unknown_plugin_panics_with_the_known_names() {
        plugin("nope");
    }
}

/// What the crash batteries (`tests/crash.rs` on mocks, `tests/postgres.rs`
/// on real backends) check after every kill and resume.
pub mod crash {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use drhost::audit::{EventKind, Record};

    /// Crash points each battery must survive.
    pub const CRASH_POINTS: usize = 50;

    /// xorshift64*: a fixed-seed sequence of kill instants, so a failing
    /// point can be replayed.
    pub struct Rng(pub u64);

    impl Rng {
        /// Uniform in [0, 1).
        pub fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The one audit log in `dir`, if it exists and is not empty.
    pub fn the_log(dir: &Path) -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .find(|p| p.to_string_lossy().ends_with(".audit.jsonl"))
    }

    /// What a finished child wrote to its (piped) stderr.
    pub async fn stderr_of(child: &mut tokio::process::Child) -> String {
        use tokio::io::AsyncReadExt;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        err
    }

    /// The run id of an audit log path.
    pub fn run_id(log: &Path) -> String {
        log.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".audit.jsonl"))
            .expect("an audit log name")
            .to_owned()
    }

    /// The bytes of `log` up to its last whole line, and whether that line
    /// is a `run-end` (the run had finished before the kill).
    pub fn before_crash(log: &Path) -> (Vec<u8>, usize, bool) {
        let bytes = std::fs::read(log).expect("audit log");
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let finished = String::from_utf8_lossy(&bytes[..whole])
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"event\":\"run-end\""));
        (bytes, whole, finished)
    }

    /// After the resume: every byte on disk before the crash is still
    /// there, in place (a torn last line excepted, which is saved to
    /// `<log>.torn-<seq>`).
    pub fn assert_nothing_lost(log: &Path, before: &[u8], whole: usize, point: &str) {
        let after = std::fs::read(log).expect("audit log");
        assert!(
            after.starts_with(&before[..whole]),
            "{point}: records written before the crash were lost or changed"
        );
        if whole < before.len() {
            let lines = String::from_utf8_lossy(&before[..whole]).lines().count();
            let saved = std::fs::read(format!("{}.torn-{lines}", log.display()))
                .unwrap_or_else(|e| panic!("{point}: the torn line was not saved: {e}"));
            assert_eq!(saved, &before[whole..], "{point}: torn line");
        }
    }

    /// Whether an outcome record holds a known result (ok or error), not
    /// "unknown" and not a replay.
    pub fn executed_outcome(r: &Record) -> bool {
        r.event == EventKind::CallOutcome
            && r.outcome
                .as_ref()
                .is_some_and(|o| o.get("ok").is_some() || o.get("error").is_some())
            && !r
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("replayed"))
    }

    /// No mutating call whose outcome was recorded was executed again: a
    /// key has a second intent only after an intent whose outcome is
    /// unknown. Returns (intents, replays) for the counts.
    pub fn assert_no_double_execution(records: &[Record], point: &str) -> (usize, usize) {
        let mut last_intent: HashMap<&str, (u64, bool)> = HashMap::new();
        let (mut intents, mut replays) = (0, 0);
        for r in records {
            let Some(key) = r.key.as_deref() else {
                continue;
            };
            match r.event {
                EventKind::CallIntent => {
                    intents += 1;
                    if let Some((seq, known)) = last_intent.get(key) {
                        assert!(
                            !known,
                            "{point}: {key} executed again (intent seq {}) although the outcome of \
                             its intent seq {seq} was recorded",
                            r.seq
                        );
                    }
                    last_intent.insert(key, (r.seq, false));
                }
                EventKind::CallOutcome => {
                    if r.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("replayed"))
                    {
                        replays += 1;
                    }
                    if executed_outcome(r)
                        && let Some(entry) = last_intent.get_mut(key)
                    {
                        entry.1 = true;
                    }
                }
                _ => {}
            }
        }
        (intents, replays)
    }
}
