//! drhost's figures, measured (not asserted). Run:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
//! cargo bench -p drhost
//! ```
//!
//! Prints one line per figure with min / median / mean over N samples.
//! Results go in BENCHMARKS.md with the machine and the date.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drhost::capability::operator::AutoApprove;
use drhost::engine::DrEngine;
use drhost::fixture::Fixture;
use drhost::gate::{Gate, GateConfig, StepScope};
use drhost::instance::{PluginCtx, StepOutput};
use drhost::plugin;
use drhost::policy::Op;
use drhost::runbook::Runbook;
use drhost::runner::{self, NullObserver, RunOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm(name: &str) -> PathBuf {
    let p = repo().join(format!("plugins/target/wasm32-wasip2/release/{name}.wasm"));
    if !p.is_file() {
        eprintln!(
            "{} is missing: build the plugins first:\n  cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

fn report(name: &str, target: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    println!(
        "{name:<44} n={n:<6} min {:>10.3?}  median {:>10.3?}  mean {:>10.3?}   target {target}",
        samples[0],
        samples[n / 2],
        mean
    );
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed(), v)
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let tmp = std::env::temp_dir().join(format!("drhost-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp");
    let dc = wasm("database_corruption");
    println!(
        "drhost bench — plugin {} ({} bytes)",
        dc.display(),
        std::fs::metadata(&dc).map(|m| m.len()).unwrap_or(0)
    );

    // DRHOST_BENCH_ONLY=gate: only the gate figures (for profiling).
    let only_gate = std::env::var("DRHOST_BENCH_ONLY").is_ok_and(|v| v == "gate");

    // 1. Cold load: compile every time (no cache).
    let mut samples = Vec::new();
    for _ in 0..if only_gate { 1 } else { 5 } {
        let engine = DrEngine::new(None).expect("engine");
        let linker = plugin::linker(&engine).expect("linker");
        let t = Instant::now();
        let p = plugin::load(&engine, &linker, &dc, 64 << 20)
            .await
            .expect("load");
        samples.push(t.elapsed());
        assert_eq!(engine.compilations(), 1);
        drop(p);
    }
    report("plugin load, cold (compile + describe)", "-", samples);

    // 2. Load from the compiled-plugin cache.
    let cache = tmp.join("cache");
    {
        let engine = DrEngine::new(Some(cache.clone())).expect("engine");
        let linker = plugin::linker(&engine).expect("linker");
        plugin::load(&engine, &linker, &dc, 64 << 20)
            .await
            .expect("warm");
    }
    let engine = DrEngine::new(Some(cache.clone())).expect("engine");
    let linker = plugin::linker(&engine).expect("linker");
    let bytes = std::fs::read(&dc).expect("read");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let mut samples = Vec::new();
    for _ in 0..if only_gate { 1 } else { 200 } {
        samples.push(time(|| engine.load_component(&bytes, &sha).expect("cached")).0);
    }
    report(
        "component from cache (verify + deserialize)",
        "< 5 ms",
        samples,
    );
    let mut samples = Vec::new();
    for _ in 0..if only_gate { 1 } else { 100 } {
        let t = Instant::now();
        let p = plugin::load(&engine, &linker, &dc, 64 << 20)
            .await
            .expect("load");
        samples.push(t.elapsed());
        drop(p);
    }
    assert_eq!(engine.compilations(), 0, "the cache must serve every load");
    report("plugin load from cache (read..describe)", "< 5 ms", samples);

    // 3. Per-step instantiation: Store + limits + epoch fence + instance.
    let rb_path = repo().join("runbooks/database-corruption.toml");
    let rb = Runbook::load(&rb_path).expect("runbook");
    let fixture =
        Fixture::load(&repo().join("runbooks/fixtures/database-corruption/happy-path.toml"))
            .expect("fixture");
    let p = plugin::load(&engine, &linker, &dc, 64 << 20)
        .await
        .expect("load");
    let audit = drhost::audit::AuditWriter::create(&tmp.join("audit"), "bench", p.identity())
        .expect("audit");
    let gate = Arc::new(Gate::new(
        GateConfig {
            grants: rb.grants.clone(),
            caps: fixture.env.capabilities(Arc::new(AutoApprove)),
            dry_run: false,
            call_timeout: Duration::from_secs(60),
            observer: Arc::new(NullObserver),
            retries: drhost::retry::RetryPolicy::default(),
            rto_deadline: None,
        },
        audit,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let scope = StepScope::new("bench", deadline);
    let mut samples = Vec::new();
    for _ in 0..if only_gate { 1 } else { 2000 } {
        let t = Instant::now();
        let output = StepOutput::default();
        let mut store = wasmtime::Store::new(
            engine.engine(),
            PluginCtx::for_step(gate.clone(), scope.clone(), 64 << 20, &output),
        );
        runner::arm_store(&mut store, runner::real_time_fence(deadline.into_std()));
        let inst = p
            .pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        samples.push(t.elapsed());
        drop((inst, store));
    }
    report("per-step Store + instantiate", "< 100 µs", samples);

    // 4. Gate overhead for a read call to a mock backend (policy, two
    // buffered audit records, timeout, call record), host side only.
    let mut samples = Vec::new();
    let backend = fixture.env.capabilities(Arc::new(AutoApprove)).k8s;
    for _ in 0..20_000 {
        let t = Instant::now();
        let r = gate
            .call(
                &scope,
                Op::K8sGetDeployment {
                    namespace: "resume-screening",
                    name: "backend",
                },
                backend.get_deployment("resume-screening", "backend"),
                None,
            )
            .await
            .expect("no trap");
        samples.push(t.elapsed());
        assert!(r.is_ok());
    }
    report("gate: read call to mock (host side)", "-", samples);
    let mut samples = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        let r = backend.get_deployment("resume-screening", "backend").await;
        samples.push(t.elapsed());
        assert!(r.is_ok());
    }
    report("mock backend alone (same call, no gate)", "-", samples);

    // 4b. Where the gate's time goes: its parts, measured alone.
    let mut w = drhost::audit::AuditWriter::create(&tmp.join("audit-parts"), "parts", p.identity())
        .expect("audit");
    let op = Op::K8sGetDeployment {
        namespace: "resume-screening",
        name: "backend",
    };
    let mut samples = Vec::new();
    for _ in 0..20_000 {
        let ev = drhost::audit::Event::new(drhost::audit::EventKind::CallIntent)
            .step("bench")
            .call("k8s", "get-deployment")
            .raw_args(drhost::audit::raw_json(&op));
        let t = Instant::now();
        w.append(ev).expect("append");
        samples.push(t.elapsed());
    }
    report("  part: one buffered audit record", "-", samples);
    let mut samples = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        let v = drhost::audit::raw_json(&op);
        samples.push(t.elapsed());
        drop(v);
    }
    report("  part: arguments to JSON", "-", samples);
    let mut samples = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        let r = rb.grants.check(&op);
        samples.push(t.elapsed());
        assert!(r.is_ok());
    }
    report("  part: policy check", "-", samples);

    if only_gate {
        let _ = std::fs::remove_dir_all(&tmp);
        return;
    }

    // 5. Guest -> host calls through the gate, end to end, from the
    // misbehave plugin's `calls` behaviour (10,000 get-deployment calls in
    // one step, per call).
    let mb = wasm("misbehave");
    let mb_rb_text = format!(
        "[plugin]\npath = {:?}\nrequire = \"misbehave@^0.1\"\n[params]\nbehaviour = \"calls\"\ncount = \"10000\"\n[budgets]\nmisbehave = \"60s\"\n[grants.k8s]\noperations = [\"get-deployment\"]\ndeployments = [\"ns/app\"]\n",
        mb
    );
    std::fs::write(tmp.join("mb.toml"), mb_rb_text).expect("write");
    let mb_rb = Runbook::load(&tmp.join("mb.toml")).expect("runbook");
    let mbp = plugin::load(&engine, &linker, &mb, 64 << 20)
        .await
        .expect("load");
    let mut samples = Vec::new();
    for i in 0..5 {
        let fx = Fixture::parse(
            Path::new("bench.toml"),
            "[[k8s.deployments]]\nnamespace = \"ns\"\nname = \"app\"\nreplicas = 1\n",
        )
        .expect("fixture");
        let caps = fx.env.capabilities(Arc::new(AutoApprove));
        let opts = RunOptions {
            audit_dir: tmp.join(format!("mb{i}")),
            dry_run: false,
            run_id: None,
            clock: drhost::sim::RunClock::Real,
            simulation: None,
            audit_mirror: None,
            leases: Vec::new(),
            break_lease: false,
            lease_renew_every: std::time::Duration::from_secs(60),
            resume: false,
        };
        let r = runner::run(&engine, &mbp, &mb_rb, caps, opts, Arc::new(NullObserver))
            .await
            .expect("run");
        let step = &r.steps[0];
        assert_eq!(r.calls.len(), 10_000, "{:?}", step.status);
        samples.push(step.elapsed / 10_000);
    }
    report(
        "guest->host read call through gate (per call)",
        "gate < 5 µs",
        samples,
    );

    // 6. Whole mock run of database-corruption: process start to exit,
    // no approvals (--yes), cached plugin.
    let exe = env!("CARGO_BIN_EXE_drhost");
    let mut samples = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let out = std::process::Command::new(exe)
            .args(["run", rb_path.to_str().expect("utf8"), "--mock"])
            .arg(repo().join("runbooks/fixtures/database-corruption/happy-path.toml"))
            .args(["--yes", "--audit-dir"])
            .arg(tmp.join(format!("run{i}")))
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .expect("spawn drhost");
        samples.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    report("whole mock run, process start to exit", "< 100 ms", samples);
    let _ = std::fs::remove_dir_all(&tmp);
}
