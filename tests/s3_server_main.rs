//! `s3-server`: serves a directory over S3 (s3s-fs, SigV4 enforced) until
//! killed, for benchmarks and manual tests.
//!
//! ```text
//! s3-server --root DIR [--port P]
//! ```
//!
//! Each subdirectory of DIR is a bucket, and each file under it is an
//! object. Files copied in directly get their sha256 recorded first (see
//! `drhost_tests::s3_server::adopt_files`). Once the server is listening, it
//! prints one line on stdout:
//! `endpoint=http://127.0.0.1:P access_key=... secret_key=... region=...`.
//! Use path-style addressing.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use drhost_tests::s3_server::{S3Server, adopt_files};

const USAGE: &str = "usage: s3-server --root DIR [--port P]";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut root: Option<PathBuf> = None;
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" => root = Some(args.next().context(USAGE)?.into()),
            "--port" => {
                let p = args.next().context(USAGE)?;
                port = p
                    .parse()
                    .with_context(|| format!("bad port {p:?}; {USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let root = root.context(USAGE)?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let adopted = adopt_files(&root)?;
    if adopted > 0 {
        eprintln!(
            "s3-server: recorded the sha256 of {adopted} file(s) copied into {}",
            root.display()
        );
    }
    let server = S3Server::start_at(&root, port).await?;
    println!(
        "endpoint={} access_key={} secret_key={} region={}",
        server.endpoint, server.access_key, server.secret_key, server.region
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    drop(server);
    Ok(())
}
