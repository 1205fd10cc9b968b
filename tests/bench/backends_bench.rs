//! `backends-bench`: the real backends' figures (BENCHMARKS.md, "Real
//! backends").
//!
//! ```text
//! cargo run --release -p drhost-tests --bin backends-bench [-- s3|wait-ready]
//! ```
//!
//! - **s3**: a 512 MiB object on the in-process S3 server (s3s-fs, SigV4),
//!   read through `S3Store::open_stream` as one GET of the whole object and
//!   as parallel ranged GETs (8 and 16 MiB, 4 and 8 in flight), all against
//!   the same server in the same run; MB/s, median of 3 reads each.
//! - **wait-ready**: the fake API server's controller marks a deployment
//!   ready 150 ms after a scale; `LiveK8s::wait_ready` (started during the
//!   unready window) returns; the figure is the time from the controller's
//!   mark to the return, over 40 rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drhost::capability::k8s::K8sBackend;
use drhost::capability::k8s::live::{K8sSettings, LiveK8s, ObjectGuard};
use drhost::capability::object_store::s3::{S3Config, S3Store};
use drhost_tests::fake_kube::{FakeKube, deployment};
use drhost_tests::s3_server::{S3Server, adopt_files};

const MIB: u64 = 1 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn s3_bench() -> anyhow::Result<()> {
    let server = S3Server::start().await?;
    server.create_bucket("bench").await?;
    let size = 512 * MIB;
    let path = server.object_path("bench", "big.dump");
    {
        // Incompressible, deterministic content, written straight to the
        // server's folder (uploading 512 MiB through SigV4 would take
        // longer than the reads).
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; MIB as usize];
        for _ in 0..size / MIB {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block)?;
        }
    }
    adopt_files(server.root())?;
    let config = |range_size: u64, max_in_flight: usize| S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        path_style: true,
        access_key_id: Some(server.access_key.clone()),
        secret_access_key: Some(server.secret_key.clone()),
        range_size,
        max_in_flight,
        ..Default::default()
    };
    println!("| reader | MB/s (median of 3) | runs |");
    println!("|---|---|---|");
    for (label, range, in_flight) in [
        ("one GET of the whole object", size, 1),
        ("8 MiB ranges, 4 in flight (default)", 8 * MIB, 4),
        ("8 MiB ranges, 8 in flight", 8 * MIB, 8),
        ("16 MiB ranges, 8 in flight", 16 * MIB, 8),
    ] {
        let store = S3Store::new(config(range, in_flight))?;
        let meta = store.head("bench", "big.dump").await?;
        anyhow::ensure!(meta.size == size, "object is {} bytes", meta.size);
        let mut rates = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let mut stream = store.open_stream(&meta);
            let mut n = 0u64;
            while let Some(chunk) = stream.next_chunk().await {
                n += chunk?.len() as u64;
            }
            anyhow::ensure!(n == size, "read {n} of {size} bytes");
            rates.push(size as f64 / 1e6 / started.elapsed().as_secs_f64());
        }
        let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {label} | {:.0} | {} |",
            median(rates.clone()),
            runs.join(", ")
        );
    }
    Ok(())
}

async fn wait_ready_bench() -> anyhow::Result<()> {
    drhost::capability::install_crypto_provider();
    let fake = FakeKube::start().await?;
    fake.set_ready_delay(Duration::from_millis(150));
    fake.insert(deployment("bench", "web", 1, "web:1"));
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig)?;
    let allow: ObjectGuard = Arc::new(|_: &str, _: &str, _: &str| Ok(()));
    let k8s = LiveK8s::connect(
        K8sSettings {
            kubeconfig: Some(kubeconfig),
            context: None,
            manifest_dir: dir.path().into(),
            secret_sources: BTreeMap::new(),
        },
        allow,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    k8s.wait_ready("bench", "web", Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut latencies = Vec::new();
    for round in 0..40u32 {
        let replicas = 2 + round % 2;
        k8s.scale("bench", "web", replicas)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let status = k8s
            .wait_ready("bench", "web", Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let returned = Instant::now();
        anyhow::ensure!(
            status.ready == replicas,
            "returned before ready: {status:?}"
        );
        let marked = fake
            .ready_marked_at("bench", "web")
            .ok_or_else(|| anyhow::anyhow!("never marked ready"))?;
        latencies.push(returned.duration_since(marked).as_secs_f64() * 1e3);
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "wait-ready: controller mark -> drhost return over {} rounds: min {:.2} ms, median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        sorted.len(),
        sorted[0],
        median(latencies),
        sorted[sorted.len() * 95 / 100],
        sorted[sorted.len() - 1],
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let only = std::env::args().nth(1);
    if only.as_deref().is_none_or(|o| o == "wait-ready") {
        wait_ready_bench().await?;
    }
    if only.as_deref().is_none_or(|o| o == "s3") {
        s3_bench().await?;
    }
    Ok(())
}
