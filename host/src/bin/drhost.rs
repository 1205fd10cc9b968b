//! `drhost`: the command line. Parses flags (clap), sets up logging, and
//! calls the library; `anyhow` lives only here and in tests.
//!
//! Exit codes: 0 success (run completed, test passed, audit verified);
//! 1 the scenario did not complete (a step failed, timed out, trapped or was
//! declined), a test expectation failed, or an audit log did not verify;
//! 2 bad input (config, fixture, plugin refused at load, usage);
//! 3 host failure (audit log unwritable, engine); 4 the plugin halted the
//! scenario on purpose (e.g. the operator refused a data loss).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use drhost::capability::Capabilities;
use drhost::capability::operator::approver::PROMPT_ACTIVE;
use drhost::capability::operator::{
    Approval, ApprovalRequest, Approver, AutoApprove, RefuseApprover, TtyApprover,
};
use drhost::capability::postgres::restore::Progress;
use drhost::engine::{DrEngine, LoadSource};
use drhost::fixture::{Fixture, check_expect};
use drhost::gate::{CallRecord, CallStatus};
use drhost::plugin::{self, Plugin};
use drhost::runbook::{Runbook, fmt_duration};
use drhost::runner::{
    self, RunObserver, RunOptions, RunOutcome, RunReport, StepReport, StepStatus,
};
use drhost::sim::RunClock;

const EXIT_HELP: &str = "\
Exit codes:
  0  success: run completed, test passed, audit log verified
  1  the scenario did not complete (step failed, timed out, trapped or declined),
     a test expectation failed, or an audit log did not verify
  2  bad input: runbook config, fixture, or plugin refused at load
  3  host failure: audit log unwritable, engine or cache unusable
  4  the plugin halted the scenario on purpose (e.g. the operator refused a data loss)
  5  a drill completed but took longer than the RTO";

/// Runs disaster-recovery scenarios as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "drhost", version, about, after_help = EXIT_HELP)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); also shows every capability call.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Compiled-plugin cache directory [default: $DRHOST_CACHE_DIR, $XDG_CACHE_HOME/drhost or ~/.cache/drhost].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Compile plugins every time instead of using the cache.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Md,
    Html,
    Json,
}

impl ReportFormat {
    fn extension(self) -> &'static str {
        match self {
            ReportFormat::Md => "md",
            ReportFormat::Html => "html",
            ReportFormat::Json => "json",
        }
    }
    fn render(self, report: &drhost::recovery_report::RecoveryReport) -> Result<String, Failure> {
        Ok(match self {
            ReportFormat::Md => report.to_markdown(),
            ReportFormat::Html => report.to_html(),
            ReportFormat::Json => report.to_json().map_err(host_failure)?,
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show a plugin's metadata, steps, budgets and imports.
    #[command(after_help = EXIT_HELP)]
    Describe {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a run of RUNBOOK would do: steps, budgets, approvals, grants, and whether every import is granted.
    #[command(after_help = EXIT_HELP)]
    Plan {
        /// The runbook config (.toml).
        runbook: PathBuf,
    },
    /// Run a scenario.
    #[command(after_help = EXIT_HELP)]
    Run {
        /// The runbook config (.toml).
        runbook: PathBuf,
        /// Run against mock backends seeded from this fixture instead of real ones.
        #[arg(long, value_name = "FIXTURE")]
        mock: Option<PathBuf>,
        /// Execute reads, simulate mutations, and list what would have changed.
        #[arg(long)]
        dry_run: bool,
        /// Approve every mutating step and operator.confirm (audited as --yes).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Directory for audit logs and run state.
        #[arg(long, default_value = "drhost-audit")]
        audit_dir: PathBuf,
        /// Print the run report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// With --mock: simulated seconds per real second (60 plays an hour in a minute), or `max` (no waiting).
        #[arg(long, value_name = "N|max", default_value = "max")]
        time_scale: String,
        /// Take the run's leases even from a live holder (its run id, operator and host are audited).
        #[arg(long)]
        break_lease: bool,
        /// Continue the interrupted run RUN_ID (its audit log in --audit-dir) after its last
        /// completed step: same plugin (sha256) and parameters; completed calls are replayed,
        /// not executed again. `drhost runs` lists the runs.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "dry_run")]
        resume: Option<String>,
    },
    /// List the runs in an audit directory with their status (completed, stopped, interrupted).
    Runs {
        /// Directory of the audit logs.
        #[arg(long, default_value = "drhost-audit")]
        audit_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A DR drill: run the scenario with --yes against a simulation (--mock) or the runbook's
    /// real backends, measure every step against its budget and the whole against the RTO, and
    /// write the recovery report.
    Drill {
        /// The runbook config (.toml).
        runbook: PathBuf,
        /// Simulate the disaster with this fixture (its latency model sets the simulated times).
        #[arg(long, value_name = "FIXTURE")]
        mock: Option<PathBuf>,
        /// With --mock: simulated seconds per real second (60 plays an hour in a minute), or `max` (no waiting).
        #[arg(long, value_name = "N|max", default_value = "max")]
        time_scale: String,
        /// Directory for audit logs and run state.
        #[arg(long, default_value = "drhost-audit")]
        audit_dir: PathBuf,
        /// Directory for the report files [default: the audit directory].
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Report formats to write, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "html,md,json"
        )]
        format: Vec<ReportFormat>,
    },
    /// The recovery report of a run from its audit log: timeline against budgets and RTO, calls, approvals, denials, backup age vs RPO, chain verification.
    Report {
        /// The audit log (.audit.jsonl).
        audit: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write to this file instead of stdout.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Run a plugin against mocks seeded from a fixture and check the fixture's [expect].
    #[command(after_help = EXIT_HELP)]
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The fixture (.toml) with [expect].
        #[arg(long)]
        fixture: PathBuf,
        /// Runbook config for grants and params [default: the fixture's `runbook`].
        #[arg(long)]
        runbook: Option<PathBuf>,
        /// Directory for audit logs [default: a temporary directory, removed after].
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
    /// Verify or show an audit log.
    #[command(subcommand, after_help = EXIT_HELP)]
    Audit(AuditCommand),
    /// Run one capability operation by hand, through the runbook's grants, audit and real backends.
    #[command(after_help = EXIT_HELP)]
    Exec {
        /// The runbook config: its [grants] decide, its [backends] do the work.
        #[arg(long)]
        config: PathBuf,
        /// Perform a mutating operation without asking (audited).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Directory for the audit log.
        #[arg(long, default_value = "drhost-audit")]
        audit_dir: PathBuf,
        /// Time limit for the operation.
        #[arg(long, default_value = "1h")]
        timeout: String,
        #[command(subcommand)]
        op: ExecCommand,
    },
    /// Check that every backend the runbook configures answers and its credentials work, changing nothing.
    #[command(after_help = EXIT_HELP)]
    Doctor {
        /// The runbook config.
        #[arg(long)]
        config: PathBuf,
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ExecCommand {
    /// PostgreSQL operations.
    #[command(subcommand)]
    Postgres(PgCommand),
    /// Object-store operations.
    #[command(subcommand, name = "object-store")]
    ObjectStore(ObjCommand),
    /// Kubernetes operations.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// HTTP health checks of the runbook's named targets.
    #[command(subcommand)]
    Health(HealthCommand),
    /// Post MESSAGE to a notification channel of the runbook.
    Notify { channel: String, message: String },
}

#[derive(Subcommand)]
enum K8sCommand {
    /// Desired/ready/available replicas, revision and images of a deployment.
    Status { namespace: String, name: String },
    /// Set a deployment's replicas through the scale subresource; prints the previous count.
    Scale {
        namespace: String,
        name: String,
        replicas: u32,
    },
    /// Roll a deployment back the way `kubectl rollout undo` does.
    RolloutUndo {
        namespace: String,
        name: String,
        /// Revision to go back to [default: the previous one].
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Wait (a watch, bounded by --timeout) until a deployment is ready.
    WaitReady { namespace: String, name: String },
    /// Server-side apply a manifest bundle from the runbook's manifest_dir.
    Apply { bundle: String },
    /// Replace a secret's data from a named secret source of the runbook.
    ReplaceSecret {
        namespace: String,
        name: String,
        source: String,
    },
    /// Whether the API server answers; prints its version.
    Reachable,
}

#[derive(Subcommand)]
enum HealthCommand {
    /// Check TARGET once.
    Check { target: String },
    /// Check TARGET with backoff until healthy (bounded by --timeout).
    Wait { target: String },
}

#[derive(Subcommand)]
enum PgCommand {
    /// Restore DATABASE from the backup BUCKET/KEY (new database, verify, swap; the old one kept).
    Restore {
        database: String,
        bucket: String,
        key: String,
    },
    /// Integrity check: connectivity, amcheck where installed, the runbook's validations.
    Check { database: String },
    /// One read-only statement.
    Query { database: String, sql: String },
    /// Terminate the other sessions on DATABASE.
    TerminateConnections { database: String },
}

#[derive(Subcommand)]
enum ObjCommand {
    /// Objects under PREFIX, oldest first.
    List { bucket: String, prefix: String },
    /// The newest object under PREFIX, with its age.
    Newest { bucket: String, prefix: String },
    /// Metadata of one object.
    Head { bucket: String, key: String },
    /// Check an object against its stored sha256.
    Verify { bucket: String, key: String },
    /// Download an object (parallel ranged GETs) to a file.
    Get {
        bucket: String,
        key: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain: edited, removed, inserted or reordered records, a torn last line.
    Verify {
        /// The audit log (.audit.jsonl).
        file: PathBuf,
    },
    /// Print a readable timeline.
    Show {
        /// The audit log (.audit.jsonl).
        file: PathBuf,
    },
}

/// An error with the exit code it maps to.
struct Failure(i32, anyhow::Error);

fn bad_input(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}
fn host_failure(e: impl Into<anyhow::Error>) -> Failure {
    Failure(3, e.into())
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let clock = match run_clock(&cli.command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drhost: error: {e}");
            std::process::exit(2);
        }
    };
    let rt = match clock {
        RunClock::Simulated { time_scale } => drhost::sim::simulated_runtime(time_scale),
        RunClock::Real => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drhost: cannot start the async runtime: {e}");
            std::process::exit(3);
        }
    };
    let code = match rt.block_on(dispatch(cli, clock)) {
        Ok(code) => code,
        Err(Failure(code, e)) => {
            eprintln!("drhost: error: {e:#}");
            code
        }
    };
    std::process::exit(code);
}

fn init_logging(verbose: u8, format: LogFormat) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The clock of a command: simulated for runs whose every backend is a mock
/// (see `drhost::sim`), real otherwise.
fn run_clock(command: &Command) -> Result<RunClock, String> {
    let (fixture, time_scale) = match command {
        Command::Run {
            mock, time_scale, ..
        }
        | Command::Drill {
            mock, time_scale, ..
        } => (mock.as_deref(), Some(time_scale.as_str())),
        Command::Test { fixture, .. } => (Some(fixture.as_path()), None),
        _ => return Ok(RunClock::Real),
    };
    let time_scale = match time_scale {
        Some(t) => drhost::sim::parse_time_scale(t)?,
        None => None,
    };
    let Some(fixture) = fixture else {
        if time_scale.is_some() {
            return Err(
                "--time-scale paces a simulation: it needs --mock FIXTURE (real backends run in real time)"
                    .into(),
            );
        }
        return Ok(RunClock::Real);
    };
    // A fixture that cannot be read is reported by the command itself; one
    // with real backends (`live = [...]`) must run in real time.
    match Fixture::load(fixture) {
        Ok(f) if f.live.is_empty() => Ok(RunClock::Simulated { time_scale }),
        Ok(f) => {
            if time_scale.is_some() {
                return Err(format!(
                    "--time-scale: fixture {} uses real backends ({}), which run in real time",
                    fixture.display(),
                    f.live.join(", ")
                ));
            }
            Ok(RunClock::Real)
        }
        Err(_) => Ok(RunClock::Real),
    }
}

async fn dispatch(cli: Cli, clock: RunClock) -> Result<i32, Failure> {
    let verbose = cli.verbose;
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.or_else(DrEngine::default_cache_dir)
    };
    let engine = || DrEngine::new(cache_dir.clone()).map_err(host_failure);
    match cli.command {
        Command::Describe { plugin, json } => describe(&engine()?, &plugin, json).await,
        Command::Plan { runbook } => plan(&engine()?, &runbook).await,
        Command::Run {
            runbook,
            mock,
            dry_run,
            yes,
            audit_dir,
            json,
            time_scale: _,
            break_lease,
            resume,
        } => {
            let engine = engine()?;
            let rb = Runbook::load(&runbook).map_err(bad_input)?;
            let fixture = match &mock {
                Some(f) => Some(Fixture::load(f).map_err(bad_input)?),
                None => None,
            };
            let plugin = load_for(&engine, &rb, &rb.plugin.path).await?;
            let report = execute(
                &engine,
                &plugin,
                &rb,
                fixture.as_ref(),
                dry_run,
                yes,
                &audit_dir,
                verbose,
                false,
                clock,
                break_lease,
                resume.as_deref(),
            )
            .await?;
            if json {
                let text = serde_json::to_string_pretty(&report).map_err(host_failure)?;
                println!("{text}");
            } else {
                eprint!("{}", drhost::redact::text(&drhost::report::render(&report)));
            }
            Ok(exit_code(&report.outcome))
        }
        Command::Test {
            plugin,
            fixture,
            runbook,
            audit_dir,
        } => {
            test(
                &engine()?,
                &plugin,
                &fixture,
                runbook,
                audit_dir,
                verbose,
                clock,
            )
            .await
        }
        Command::Drill {
            runbook,
            mock,
            time_scale: _,
            audit_dir,
            report_dir,
            format,
        } => {
            let engine = engine()?;
            drill(
                &engine,
                &runbook,
                mock.as_deref(),
                &audit_dir,
                report_dir.as_deref().unwrap_or(&audit_dir),
                &format,
                verbose,
                clock,
            )
            .await
        }
        Command::Runs { audit_dir, json } => {
            let runs = drhost::runs::list(&audit_dir).map_err(|e| bad_input(anyhow::anyhow!(e)))?;
            if json {
                let text = serde_json::to_string_pretty(&runs).map_err(host_failure)?;
                println!("{text}");
            } else if runs.is_empty() {
                println!("no runs in {}", audit_dir.display());
            } else {
                print!("{}", drhost::runs::render(&runs));
            }
            Ok(0)
        }
        Command::Report { audit, format, out } => {
            let report =
                drhost::recovery_report::RecoveryReport::from_audit(&audit).map_err(bad_input)?;
            let text = format.render(&report)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write the report to {}", path.display()))
                        .map_err(host_failure)?;
                    eprintln!("report written to {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(0)
        }
        Command::Audit(AuditCommand::Verify { file }) => {
            let report = drhost::audit::verify(&file).map_err(bad_input)?;
            println!("{report}");
            Ok(if report.is_ok() { 0 } else { 1 })
        }
        Command::Exec {
            config,
            yes,
            audit_dir,
            timeout,
            op,
        } => exec(&config, yes, &audit_dir, &timeout, op).await,
        Command::Doctor { config, json } => doctor(&config, json).await,
        Command::Audit(AuditCommand::Show { file }) => {
            let records = drhost::audit::read_records(&file).map_err(bad_input)?;
            print!("{}", drhost::audit::render_timeline(&records));
            Ok(0)
        }
    }
}

async fn doctor(config: &Path, json: bool) -> Result<i32, Failure> {
    use drhost::doctor::Status;
    let rb = Runbook::load(config).map_err(bad_input)?;
    let checks = drhost::doctor::doctor(&rb)
        .await
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", config.display())))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).map_err(host_failure)?
        );
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!(
                "{mark} {:<12} {:<32} {} ({} ms)",
                c.backend, c.subject, c.detail, c.millis
            );
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        eprintln!("drhost doctor: {failed} check(s) failed");
        return Ok(1);
    }
    Ok(0)
}

async fn exec(
    config: &Path,
    yes: bool,
    audit_dir: &Path,
    timeout: &str,
    op: ExecCommand,
) -> Result<i32, Failure> {
    use drhost::exec::ExecOp;
    let rb = Runbook::load(config).map_err(bad_input)?;
    let timeout = humantime::parse_duration(timeout)
        .map_err(|e| bad_input(anyhow::anyhow!("--timeout {timeout:?}: {e}")))?;
    let op = match op {
        ExecCommand::Postgres(PgCommand::Restore {
            database,
            bucket,
            key,
        }) => ExecOp::PgRestore {
            database,
            bucket,
            key,
        },
        ExecCommand::Postgres(PgCommand::Check { database }) => ExecOp::PgCheck { database },
        ExecCommand::Postgres(PgCommand::Query { database, sql }) => {
            ExecOp::PgQuery { database, sql }
        }
        ExecCommand::Postgres(PgCommand::TerminateConnections { database }) => {
            ExecOp::PgTerminate { database }
        }
        ExecCommand::ObjectStore(ObjCommand::List { bucket, prefix }) => {
            ExecOp::ObjList { bucket, prefix }
        }
        ExecCommand::ObjectStore(ObjCommand::Newest { bucket, prefix }) => {
            ExecOp::ObjNewest { bucket, prefix }
        }
        ExecCommand::ObjectStore(ObjCommand::Head { bucket, key }) => {
            ExecOp::ObjHead { bucket, key }
        }
        ExecCommand::ObjectStore(ObjCommand::Verify { bucket, key }) => {
            ExecOp::ObjVerify { bucket, key }
        }
        ExecCommand::ObjectStore(ObjCommand::Get { bucket, key, out }) => {
            ExecOp::ObjGet { bucket, key, out }
        }
        ExecCommand::K8s(K8sCommand::Status { namespace, name }) => {
            ExecOp::K8sStatus { namespace, name }
        }
        ExecCommand::K8s(K8sCommand::Scale {
            namespace,
            name,
            replicas,
        }) => ExecOp::K8sScale {
            namespace,
            name,
            replicas,
        },
        ExecCommand::K8s(K8sCommand::RolloutUndo {
            namespace,
            name,
            to_revision,
        }) => ExecOp::K8sUndo {
            namespace,
            name,
            to_revision,
        },
        ExecCommand::K8s(K8sCommand::WaitReady { namespace, name }) => {
            ExecOp::K8sWaitReady { namespace, name }
        }
        ExecCommand::K8s(K8sCommand::Apply { bundle }) => ExecOp::K8sApply { bundle },
        ExecCommand::K8s(K8sCommand::ReplaceSecret {
            namespace,
            name,
            source,
        }) => ExecOp::K8sReplaceSecret {
            namespace,
            name,
            source,
        },
        ExecCommand::K8s(K8sCommand::Reachable) => ExecOp::K8sReachable,
        ExecCommand::Health(HealthCommand::Check { target }) => ExecOp::HealthCheck { target },
        ExecCommand::Health(HealthCommand::Wait { target }) => ExecOp::HealthWait { target },
        ExecCommand::Notify { channel, message } => ExecOp::Notify { channel, message },
    };
    if op.mutates() && !yes {
        let asked = TtyApprover::if_terminal().is_some();
        let confirmed = asked && {
            eprint!("{:?} changes the system. Proceed? [y/N] ", op);
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).is_ok()
                && matches!(line.trim(), "y" | "Y" | "yes")
        };
        if !confirmed {
            return Err(bad_input(anyhow::anyhow!(
                "{op:?} changes the system: confirm at the prompt or pass --yes"
            )));
        }
    }
    let progress = Progress::default();
    let ticker = ProgressTicker::start(progress.clone());
    let outcome = drhost::exec::exec(&rb, &op, audit_dir, timeout, progress)
        .await
        .map_err(|e| match e {
            drhost::exec::ExecError::Config(..) => bad_input(e),
            other => host_failure(other),
        })?;
    drop(ticker);
    eprintln!("audit log: {}", outcome.audit.display());
    match outcome.result {
        Ok(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).map_err(host_failure)?
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "drhost: {} failed: {}: {}",
                op.op().class().operation,
                e.kind(),
                e.message()
            );
            Ok(1)
        }
    }
}

/// Shows a restore's progress on stderr while it runs: a line that
/// rewrites itself on a terminal, a line every 10 s otherwise.
struct ProgressTicker(tokio::task::JoinHandle<()>);

impl ProgressTicker {
    fn start(progress: Progress) -> ProgressTicker {
        let tty = std::io::stderr().is_terminal();
        ProgressTicker(tokio::spawn(async move {
            let every = Duration::from_secs(if tty { 1 } else { 10 });
            let started = Instant::now();
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(every).await;
                let s = progress.snapshot();
                if s.phase.is_empty() || s.phase == "done" {
                    continue;
                }
                let mib = |b: u64| b as f64 / 1048576.0;
                let rate = mib(s.read_bytes.saturating_sub(last.0))
                    / last.1.elapsed().as_secs_f64().max(0.001);
                last = (s.read_bytes, Instant::now());
                let total = if s.total_bytes > 0 {
                    format!(
                        " of {:.0} MiB ({:.0}%)",
                        mib(s.total_bytes),
                        100.0 * s.read_bytes as f64 / s.total_bytes as f64
                    )
                } else {
                    String::new()
                };
                let line = format!(
                    "restore {:>5.0}s  {}  read {:.0} MiB{total} at {rate:.0} MiB/s, loaded {:.0} MiB",
                    started.elapsed().as_secs_f64(),
                    s.phase,
                    mib(s.read_bytes),
                    mib(s.loaded_bytes)
                );
                if PROMPT_ACTIVE.load(Ordering::Relaxed) {
                    continue;
                }
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        }))
    }
}

impl Drop for ProgressTicker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn exit_code(outcome: &RunOutcome) -> i32 {
    match outcome {
        RunOutcome::Completed => 0,
        RunOutcome::Stopped {
            status: StepStatus::Halted(_),
            ..
        } => 4,
        RunOutcome::Stopped { .. } => 1,
    }
}

async fn load_plugin(
    engine: &DrEngine,
    path: &Path,
    memory_limit: usize,
) -> Result<Plugin, Failure> {
    let linker = plugin::linker(engine).map_err(|e| host_failure(anyhow::anyhow!("{e:#}")))?;
    plugin::load(engine, &linker, path, memory_limit)
        .await
        .map_err(bad_input)
}

/// Loads the plugin at `path` for `rb`: pin and grants checked.
async fn load_for(engine: &DrEngine, rb: &Runbook, path: &Path) -> Result<Plugin, Failure> {
    let p = load_plugin(engine, path, rb.memory_limit_bytes).await?;
    plugin::check_pin(&p, &rb.plugin, &rb.path).map_err(bad_input)?;
    plugin::check_grants(&p, &rb.grants, &rb.path).map_err(bad_input)?;
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    engine: &DrEngine,
    plugin: &Plugin,
    rb: &Runbook,
    fixture: Option<&Fixture>,
    dry_run: bool,
    yes: bool,
    audit_dir: &Path,
    verbose: u8,
    testing: bool,
    clock: RunClock,
    break_lease: bool,
    resume: Option<&str>,
) -> Result<RunReport, Failure> {
    let fallback: Box<dyn Approver> = if yes || testing {
        Box::new(AutoApprove)
    } else if let Some(tty) = TtyApprover::if_terminal() {
        Box::new(tty)
    } else {
        Box::new(RefuseApprover)
    };
    let run_id = resume.map_or_else(runner::new_run_id, str::to_owned);
    let progress = Progress::default();
    let caps = match fixture {
        Some(f) => {
            f.env.enforce_bundle_grants(&rb.grants);
            let mut caps = f.env.capabilities(f.approver(fallback));
            // The simulated world is saved after every mutation, so a
            // resumed run continues where the interrupted one left it.
            let world = audit_dir.join(format!("{run_id}.world.json"));
            if resume.is_some() && world.exists() {
                let saved: serde_json::Value = std::fs::read(&world)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice(&b)?))
                    .and_then(|v| f.env.load_world(&v).map(|()| v).map_err(anyhow::Error::msg))
                    .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", world.display())))?;
                drop(saved);
                eprintln!("simulated world restored from {}", world.display());
            }
            if !testing && !dry_run {
                let env = f.env.clone();
                caps.after_mutation = Some(Arc::new(move || env.save_world(&world)));
            }
            if !f.live.is_empty() {
                caps.use_live(&f.live, rb, &run_id, progress.clone(), true)
                    .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", rb.path.display())))?;
                eprintln!(
                    "live backends from {}: {}",
                    rb.path.display(),
                    f.live.join(", ")
                );
            }
            caps
        }
        None => {
            // A plugin whose capabilities have no backend in this runbook
            // would fail at its first call, possibly after mutating steps:
            // refuse before the first step instead.
            let configured = |import: &str| match import {
                "k8s" => rb.backends.k8s.is_some(),
                "health" => rb.backends.health.is_some(),
                "postgres" => rb.backends.postgres.is_some(),
                "object-store" => rb.backends.object_store.is_some(),
                _ => true,
            };
            let missing: Vec<String> = plugin
                .contract_imports
                .iter()
                .filter(|i| !configured(i))
                .map(|i| format!("[backends.{}]", i.replace('-', "_")))
                .collect();
            if !missing.is_empty() {
                return Err(bad_input(anyhow::anyhow!(
                    "{} imports capabilities that {} does not configure: add {} to the runbook, \
                     or run against simulations with --mock FIXTURE.toml",
                    plugin.path.display(),
                    rb.path.display(),
                    missing.join(" and ")
                )));
            }
            Capabilities::live(rb, &run_id, Arc::from(fallback), progress.clone())
                .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", rb.path.display())))?
        }
    };
    let _ticker = ProgressTicker::start(progress);
    if let Some(f) = fixture {
        eprintln!(
            "simulated environment: {} ({})",
            f.path.display(),
            f.description
        );
    }
    let observer = Arc::new(Console::new(verbose > 0));
    let audit_mirror = audit_mirror(rb, clock)?;
    let live: Vec<&str> = match fixture {
        Some(f) => f.live.iter().map(String::as_str).collect(),
        None => drhost::capability::LIVE_CAPABILITIES.to_vec(),
    };
    let leases = run_leases(rb, plugin, &live).await?;
    let options = RunOptions {
        audit_dir: audit_dir.to_owned(),
        dry_run,
        run_id: Some(run_id),
        clock,
        simulation: fixture.map(|f| format!("{} ({})", f.path.display(), f.description)),
        audit_mirror,
        leases,
        break_lease,
        lease_renew_every: rb.lease_ttl / 3,
        resume: resume.is_some(),
    };
    runner::run(engine, plugin, rb, caps, options, observer)
        .await
        .map_err(|e| match e {
            runner::RunError::Config { .. } | runner::RunError::Resume(_) => bad_input(e),
            other => host_failure(other),
        })
}

async fn describe(engine: &DrEngine, path: &Path, json: bool) -> Result<i32, Failure> {
    let p = load_plugin(
        engine,
        path,
        drhost::runbook::DEFAULT_MEMORY_LIMIT_MIB as usize * 1024 * 1024,
    )
    .await?;
    let i = &p.info;
    if json {
        let v = serde_json::json!({
            "name": i.name, "version": i.version, "sha256": p.sha256, "size": p.size,
            "summary": i.summary, "rto_ms": i.rto_ms, "params": i.params, "steps": i.steps,
            "imports": p.imports,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(host_failure)?
        );
        return Ok(0);
    }
    println!("{}@{}  ({})", i.name, i.version, path.display());
    println!("  sha256   {}", p.sha256);
    println!(
        "  size     {} bytes, {}",
        p.size,
        match p.source {
            LoadSource::Cache => "loaded from the compiled-plugin cache",
            LoadSource::Compiled => "compiled now",
        }
    );
    println!(
        "  RTO      {}",
        fmt_duration(Duration::from_millis(i.rto_ms))
    );
    println!("  summary  {}", i.summary);
    println!("  params");
    for prm in &i.params {
        println!(
            "    {:<16} {:<28} {}",
            prm.name,
            prm.default_value
                .as_deref()
                .map(|d| format!("[default: {d}]"))
                .unwrap_or_else(|| "[required]".into()),
            prm.description
        );
    }
    println!("  steps");
    for (n, s) in i.steps.iter().enumerate() {
        println!(
            "    {}. {:<22} {:>8}  {}  {}",
            n + 1,
            s.id,
            fmt_duration(Duration::from_millis(s.budget_ms)),
            if s.mutates { "mutates " } else { "read-only" },
            s.title
        );
    }
    println!("  imports");
    for imp in &p.imports {
        println!("    {imp}");
    }
    Ok(0)
}

async fn plan(engine: &DrEngine, runbook: &Path) -> Result<i32, Failure> {
    let rb = Runbook::load(runbook).map_err(bad_input)?;
    let p = load_plugin(engine, &rb.plugin.path, rb.memory_limit_bytes).await?;
    let mut problems = Vec::new();
    if let Err(e) = plugin::check_pin(&p, &rb.plugin, &rb.path) {
        problems.push(e.to_string());
    }
    println!(
        "plan for {} — plugin {}@{} ({})",
        runbook.display(),
        p.info.name,
        p.info.version,
        rb.plugin.path.display()
    );
    println!(
        "  sha256 {}{}",
        p.sha256,
        if rb.plugin.sha256.is_some() {
            " (pinned)"
        } else {
            " (not pinned)"
        }
    );
    println!("  imports:");
    for iface in &p.contract_imports {
        let ok = rb.grants.grants_interface(iface);
        println!(
            "    {:<14} {}",
            iface,
            if ok { "granted" } else { "NOT GRANTED" }
        );
    }
    if let Err(e) = plugin::check_grants(&p, &rb.grants, &rb.path) {
        problems.push(e.to_string());
    }
    let rto = runner::rto(&p, &rb);
    println!("  steps (RTO {}):", fmt_duration(rto));
    let mut total = Duration::ZERO;
    for s in &p.info.steps {
        let (budget, from) = match rb.budgets.get(&s.id) {
            Some(b) => (*b, "runbook"),
            None => (Duration::from_millis(s.budget_ms), "plugin"),
        };
        total += budget;
        println!(
            "    {:<22} budget {:>8} ({from})  {}  {}",
            s.id,
            fmt_duration(budget),
            if s.mutates {
                "needs approval"
            } else {
                "read-only     "
            },
            s.title
        );
    }
    println!(
        "  sum of budgets {} vs RTO {}{}",
        fmt_duration(total),
        fmt_duration(rto),
        if total > rto {
            " — budgets exceed the RTO"
        } else {
            ""
        }
    );
    for k in rb.budgets.keys() {
        if !p.info.steps.iter().any(|s| &s.id == k) {
            problems.push(format!(
                "{}: budgets.{k} names no step of the plugin",
                rb.path.display()
            ));
        }
    }
    println!("  params:");
    for prm in &p.info.params {
        let v = rb.params.get(&prm.name).or(prm.default_value.as_ref());
        println!(
            "    {:<16} = {}",
            prm.name,
            v.map(String::as_str).unwrap_or("(unset)")
        );
    }
    for k in rb.params.keys() {
        if !p.info.params.iter().any(|prm| &prm.name == k) {
            problems.push(format!(
                "{}: params.{k} is not a parameter of the plugin",
                rb.path.display()
            ));
        }
    }
    let g = &rb.grants;
    println!("  grants:");
    if let Some(k) = &g.k8s {
        println!(
            "    k8s: operations {:?}; deployments {:?}; bundles {:?}; secrets {:?}",
            k.operations, k.deployments, k.bundles, k.secrets
        );
        // What a granted bundle may hold and where, and the secret sources
        // the plugin may name: as much a part of the grant as the rest.
        for (what, set) in [
            ("bundle kinds", &k.kinds),
            ("bundle namespaces", &k.namespaces),
            ("secret sources", &k.secret_sources),
        ] {
            if !set.is_empty() {
                println!("      {what} {set:?}");
            }
        }
    }
    if let Some(pg) = &g.postgres {
        println!(
            "    postgres: operations {:?}; databases {:?}",
            pg.operations, pg.databases
        );
    }
    if let Some(o) = &g.object_store {
        println!(
            "    object-store: {:?}",
            o.iter()
                .map(|(b, p)| format!("{b}/{p}"))
                .collect::<Vec<_>>()
        );
    }
    if let Some(h) = &g.health {
        println!("    health targets: {h:?}");
    }
    println!("    notify channels: {:?}", g.notify);
    if problems.is_empty() {
        println!("  ok: every import is granted and the plugin matches the pin");
        Ok(0)
    } else {
        for pr in &problems {
            println!("  PROBLEM: {pr}");
        }
        Ok(2)
    }
}

async fn test(
    engine: &DrEngine,
    plugin_path: &Path,
    fixture_path: &Path,
    runbook: Option<PathBuf>,
    audit_dir: Option<PathBuf>,
    verbose: u8,
    clock: RunClock,
) -> Result<i32, Failure> {
    let fixture = Fixture::load(fixture_path).map_err(bad_input)?;
    let Some(expect) = fixture.expect.clone() else {
        return Err(bad_input(anyhow::anyhow!(
            "fixture {} has no [expect] section: `drhost test` needs to know what must happen",
            fixture_path.display()
        )));
    };
    let runbook = runbook.or_else(|| fixture.runbook.clone()).ok_or_else(|| {
        bad_input(anyhow::anyhow!(
            "no runbook config for grants and params: pass --runbook or set `runbook = \"...\"` in {}",
            fixture_path.display()
        ))
    })?;
    let rb = Runbook::load(&runbook).map_err(bad_input)?;
    let plugin = load_for(engine, &rb, plugin_path).await?;
    let tmp;
    let dir = match audit_dir {
        Some(d) => d,
        None => {
            tmp = tempdir().map_err(host_failure)?;
            tmp.0.clone()
        }
    };
    // Tests never prompt: what [operator] does not script is answered as
    // with --yes.
    let report = execute(
        engine,
        &plugin,
        &rb,
        Some(&fixture),
        false,
        true,
        &dir,
        verbose,
        true,
        clock,
        false,
        None,
    )
    .await;
    let report = report?;
    let verified = drhost::audit::verify(&report.audit_path).map_err(host_failure)?;
    let mut failures = check_expect(&expect, &report);
    if !verified.is_ok() {
        failures.insert(0, format!("audit log does not verify: {verified}"));
    }
    let name = fixture_path.display();
    if failures.is_empty() {
        println!(
            "PASS {name}: {} ({})",
            report.outcome.parts().0,
            fixture.description
        );
        Ok(0)
    } else {
        println!("FAIL {name}: {}", fixture.description);
        for f in failures {
            println!("  {f}");
        }
        Ok(1)
    }
}

/// The runbook's `[run] audit_mirror`, with the object store's client
/// settings (`[backends.object_store]`, else the environment). Simulated
/// runs are not mirrored: their logs are drills on a laptop, not evidence.
fn audit_mirror(
    rb: &Runbook,
    clock: RunClock,
) -> Result<Option<drhost::audit_mirror::AuditMirror>, Failure> {
    let Some(target) = rb.audit_mirror.clone() else {
        return Ok(None);
    };
    if clock.is_simulated() {
        eprintln!(
            "audit mirror s3://{}/{} skipped: simulated run",
            target.bucket, target.prefix
        );
        return Ok(None);
    }
    drhost::capability::install_crypto_provider();
    let each_step = target.each_step;
    let cfg = match &rb.backends.object_store {
        Some(cfg) => cfg.clone(),
        None => drhost::capability::object_store::s3::S3Config::default()
            .resolve_env()
            .map_err(|e| {
                bad_input(anyhow::anyhow!(
                    "{}: run.audit_mirror: {e}",
                    rb.path.display()
                ))
            })?,
    };
    let sink = drhost::audit_mirror::S3AuditSink::new(cfg, target).map_err(|e| {
        bad_input(anyhow::anyhow!(
            "{}: run.audit_mirror: {e}",
            rb.path.display()
        ))
    })?;
    Ok(Some(drhost::audit_mirror::AuditMirror {
        sink: Arc::new(sink),
        each_step,
    }))
}

/// The leases a run takes before its first mutating step: a Kubernetes
/// Lease per granted namespace and an advisory lock per granted database,
/// for the capabilities the plugin imports that run on real backends.
async fn run_leases(
    rb: &Runbook,
    plugin: &Plugin,
    live: &[&str],
) -> Result<Vec<Arc<dyn drhost::lease::TargetLease>>, Failure> {
    let uses = |cap: &str| live.contains(&cap) && plugin.contract_imports.iter().any(|i| i == cap);
    let mut leases: Vec<Arc<dyn drhost::lease::TargetLease>> = Vec::new();
    if uses("k8s")
        && let (Some(grant), Some(settings)) = (&rb.grants.k8s, &rb.backends.k8s)
    {
        let mut namespaces: std::collections::BTreeSet<String> = grant
            .deployments
            .iter()
            .filter_map(|d| d.split_once('/').map(|(ns, _)| ns.to_owned()))
            .collect();
        namespaces.extend(grant.namespaces.iter().cloned());
        if !namespaces.is_empty() {
            let allow_all: drhost::capability::k8s::live::ObjectGuard = Arc::new(|_, _, _| Ok(()));
            let k8s = drhost::capability::k8s::live::LiveK8s::connect(settings.clone(), allow_all)
                .await
                .map_err(|e| {
                    bad_input(anyhow::anyhow!(
                        "{}: [backends.k8s]: {e}",
                        rb.path.display()
                    ))
                })?;
            for ns in namespaces {
                leases.push(Arc::new(drhost::lease::K8sLease::new(
                    k8s.client().clone(),
                    &ns,
                    rb.lease_ttl,
                )));
            }
        }
    }
    if uses("postgres")
        && let (Some(grant), Some(settings)) = (&rb.grants.postgres, &rb.backends.postgres)
    {
        for db in &grant.databases {
            leases.push(Arc::new(drhost::lease::PgLease::new(
                settings.admin.clone(),
                db,
            )));
        }
    }
    Ok(leases)
}

/// `drhost drill`: the scenario with --yes (a fixture's scripted answers
/// first), then the recovery report from the audit log in each format.
#[allow(clippy::too_many_arguments)]
async fn drill(
    engine: &DrEngine,
    runbook: &Path,
    mock: Option<&Path>,
    audit_dir: &Path,
    report_dir: &Path,
    formats: &[ReportFormat],
    verbose: u8,
    clock: RunClock,
) -> Result<i32, Failure> {
    let rb = Runbook::load(runbook).map_err(bad_input)?;
    let fixture = match mock {
        Some(f) => Some(Fixture::load(f).map_err(bad_input)?),
        None => None,
    };
    let plugin = load_for(engine, &rb, &rb.plugin.path).await?;
    if let RunClock::Simulated { time_scale } = clock {
        eprintln!(
            "drill on simulated time ({}): the report shows simulated durations",
            match time_scale {
                Some(s) => format!("time scale {s}: {s} simulated seconds per real second"),
                None => "time scale max: no real waiting".to_owned(),
            }
        );
    }
    let report = execute(
        engine,
        &plugin,
        &rb,
        fixture.as_ref(),
        false,
        true,
        audit_dir,
        verbose,
        false,
        clock,
        false,
        None,
    )
    .await?;
    eprint!("{}", drhost::redact::text(&drhost::report::render(&report)));
    let recovery = drhost::recovery_report::RecoveryReport::from_audit(&report.audit_path)
        .map_err(host_failure)?;
    std::fs::create_dir_all(report_dir)
        .with_context(|| format!("cannot create report directory {}", report_dir.display()))
        .map_err(host_failure)?;
    for f in formats {
        let path = report_dir.join(format!("{}.drill.{}", report.run_id, f.extension()));
        std::fs::write(&path, f.render(&recovery)?)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(host_failure)?;
        eprintln!("  drill report: {}", path.display());
    }
    eprintln!("  {}", recovery.verdict());
    Ok(match exit_code(&report.outcome) {
        0 if !recovery.within_rto() => EXIT_RTO_EXCEEDED,
        code => code,
    })
}

/// A drill that completed but overran its RTO.
const EXIT_RTO_EXCEEDED: i32 = 5;

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "drhost-test-{}-{}",
        std::process::id(),
        runner::new_run_id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(TempDir(dir))
}

/// Console progress on stderr: step headers, plugin logs, results, and on a
/// terminal a live elapsed/budget ticker.
struct Console {
    verbose: bool,
    tty: bool,
    ticker: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
}

impl Console {
    fn new(verbose: bool) -> Console {
        Console {
            verbose,
            tty: std::io::stderr().is_terminal(),
            ticker: Mutex::new(None),
        }
    }
    fn stop_ticker(&self) {
        let t = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop, handle)) = t {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
            eprint!("\r\x1b[2K");
        }
    }
    /// Prints one console line, redacted (`drhost::redact`): plugin
    /// messages and call arguments can carry what should not be on a
    /// screen that is shared during an incident.
    fn line(&self, s: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{}", drhost::redact::text(s));
    }
}

impl RunObserver for Console {
    fn step_started(
        &self,
        index: usize,
        total: usize,
        step: &drhost::bindings::StepInfo,
        budget: Duration,
    ) {
        self.line(&format!(
            "▶ [{index}/{total}] {} — {} (budget {}{})",
            step.id,
            step.title,
            fmt_duration(budget),
            if step.mutates { ", mutates" } else { "" }
        ));
        if self.tty {
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let started = Instant::now();
            let id = step.id.clone();
            let handle = std::thread::spawn(move || {
                while !s2.load(Ordering::SeqCst) {
                    if !PROMPT_ACTIVE.load(Ordering::SeqCst) {
                        let mut e = std::io::stderr();
                        let _ = write!(
                            e,
                            "\r\x1b[2K  … {id} {} / {}",
                            fmt_duration(started.elapsed()),
                            fmt_duration(budget)
                        );
                        let _ = e.flush();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            *self.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, handle));
        }
    }

    fn step_finished(&self, r: &StepReport) {
        self.stop_ticker();
        let mark = match r.status {
            StepStatus::Done(_) => "✔",
            StepStatus::Halted(_) => "■",
            _ => "✘",
        };
        self.line(&format!(
            "{mark} {} {} in {} (budget {}): {}",
            r.id,
            r.status.name(),
            fmt_duration(r.elapsed),
            fmt_duration(r.budget),
            r.status.message()
        ));
        if !r.output.trim().is_empty() && !matches!(r.status, StepStatus::Done(_)) {
            for l in r.output.lines().take(20) {
                self.line(&format!("    | {l}"));
            }
        }
    }

    fn plugin_log(&self, _step: &str, level: &str, message: &str) {
        self.line(&format!("    [{level}] {message}"));
    }

    fn call(&self, c: &CallRecord) {
        if self.verbose || c.status == CallStatus::Denied {
            self.line(&format!(
                "    · {}{}",
                c.render(),
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.detail)
                }
            ));
        }
    }

    fn approval(&self, request: &ApprovalRequest, answer: &Approval) {
        let verdict = match &answer.text {
            Some(text) if answer.approved && text.is_empty() => {
                "answered \"\" (nothing)".to_owned()
            }
            Some(text) if answer.approved => format!("answered {text:?}"),
            Some(_) => "NOT ANSWERED".to_owned(),
            None if answer.approved => "approved".to_owned(),
            None => "REFUSED".to_owned(),
        };
        self.line(&format!(
            "    ? {} -> {verdict} by {}",
            request.question, answer.by
        ));
    }

    fn warning(&self, message: &str) {
        self.line(&format!("  ! {message}"));
    }
}
