//! drhost's S3 client against a real S3 server (s3s-fs, SigV4 enforced), with
//! and without a fault-injecting proxy in between.
//!
//! Memory bound (see also `memory_is_bounded_and_drop_cancels`): a range
//! holds a semaphore permit from the moment its GET is sent until the
//! consumer takes its bytes, so at most `max_in_flight` ranges, each at most
//! `range_size` bytes, are ever buffered by a stream. The test checks this
//! from outside: a consumer that takes nothing lets through at most
//! `max_in_flight * range_size` response bytes (plus headers), and each
//! chunk taken lets one more range through.

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use drhost::capability::object_store::s3::{ObjectMeta, S3Config, S3Error, S3Store};
use drhost_tests::s3_server::{Fault, FlakyProxy, S3Server, StoredSha256, adopt_files};
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*), cheap to make.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn config(endpoint: &str, server: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_owned()),
        region: Some(server.region.clone()),
        path_style: true,
        access_key_id: Some(server.access_key.clone()),
        secret_access_key: Some(server.secret_key.clone()),
        ..Default::default()
    }
}

fn store(endpoint: &str, server: &S3Server) -> S3Store {
    S3Store::new(config(endpoint, server)).expect("valid config")
}

async fn read_all(store: &S3Store, meta: &ObjectMeta) -> Result<Vec<u8>, S3Error> {
    let mut stream = store.open_stream(meta);
    let mut out = Vec::with_capacity(meta.size as usize);
    while let Some(chunk) = stream.next_chunk().await {
        out.extend_from_slice(&chunk?);
    }
    assert_eq!(stream.bytes_read(), out.len() as u64);
    Ok(out)
}

fn set_mtime(path: &std::path::Path, secs_after_2020: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800 + secs_after_2020);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_sorts_by_age_and_newest_has_sha256() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("backups").await.unwrap();
    let mut sums = Vec::new();
    for i in 0..23u64 {
        let key = format!("db/{i:02}.dump");
        sums.push(
            server
                .put_object("backups", &key, format!("dump {i}"))
                .await
                .unwrap(),
        );
        // Older for higher i, so the age order is the reverse of key order.
        set_mtime(&server.object_path("backups", &key), 1000 - i * 10);
    }
    server.put_object("backups", "other/x", "x").await.unwrap();

    // 23 keys with 5 per page: 5 ListObjectsV2 pages.
    let s3 = S3Store::new(S3Config {
        list_page_size: 5,
        ..config(&server.endpoint, &server)
    })
    .unwrap();
    let listed = s3.list("backups", "db/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    let expected: Vec<String> = (0..23).rev().map(|i| format!("db/{i:02}.dump")).collect();
    assert_eq!(keys, expected, "oldest first, every page, prefix only");
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].last_modified_ms < w[1].last_modified_ms)
    );
    assert!(
        listed.iter().all(|m| m.sha256_hex.is_none()), // no checksums in listings (nor ETags from s3s-fs 0.14)
    );
    assert_eq!(listed[0].size, "dump 22".len() as u64);

    let newest = s3.newest("backups", "db/").await.unwrap().unwrap();
    assert_eq!(newest.key, "db/00.dump");
    assert_eq!(newest.sha256_hex.as_deref(), Some(sums[0].as_str()));
    assert_eq!(newest.last_modified_ms, (1_577_836_800 + 1000) * 1000);
    assert_eq!(s3.newest("backups", "none/").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_more_than_1000_keys_with_default_pages() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("many").await.unwrap();
    // Files copied in (no upload) list as objects too.
    let dir = server.root().join("many/wal");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1003 {
        std::fs::write(dir.join(format!("{i:04}")), i.to_string()).unwrap();
    }
    let s3 = store(&server.endpoint, &server);
    let listed = s3.list("many", "wal/").await.unwrap();
    assert_eq!(listed.len(), 1003);
    let mut keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 1003, "no key twice across pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_verify_detect_tampering() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(3 * MIB as usize + 17, 7);
    let sum = server
        .put_object("bkt", "db.dump", body.clone())
        .await
        .unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: MIB,
        ..config(&server.endpoint, &server)
    })
    .unwrap();

    let meta = s3.head("bkt", "db.dump").await.unwrap();
    assert_eq!(meta.size, body.len() as u64);
    assert_eq!(meta.sha256_hex.as_deref(), Some(sum.as_str()));
    assert_eq!(sum, hex::encode(Sha256::digest(&body)));
    assert!(
        meta.etag.as_deref().is_some_and(|e| e.starts_with('"')),
        "{meta:?}"
    );
    assert!(meta.last_modified_ms > 0);
    assert!(s3.verify("bkt", "db.dump").await.unwrap());

    // Flip one byte on disk; s3s-fs keeps the stored checksum.
    let path = server.object_path("bkt", "db.dump");
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[2 * MIB as usize] ^= 0xff;
    std::fs::write(&path, &on_disk).unwrap();
    assert!(!s3.verify("bkt", "db.dump").await.unwrap());

    // A sha256 in user metadata is used when there is no checksum.
    let sum = server
        .put_with("bkt", "meta.dump", "hello", StoredSha256::Metadata)
        .await
        .unwrap();
    let meta = s3.head("bkt", "meta.dump").await.unwrap();
    assert_eq!(meta.sha256_hex.as_deref(), Some(sum.as_str()));
    assert!(s3.verify("bkt", "meta.dump").await.unwrap());

    // Without either there is nothing to verify against.
    server
        .put_with("bkt", "bare.dump", "hello", StoredSha256::None)
        .await
        .unwrap();
    assert_eq!(s3.head("bkt", "bare.dump").await.unwrap().sha256_hex, None);
    let err = s3.verify("bkt", "bare.dump").await.unwrap_err();
    assert!(matches!(err, S3Error::Invalid(_)), "{err}");
    assert!(
        err.to_string().contains("nothing to verify it against"),
        "{err}"
    );
    assert!(err.to_string().contains("s3://bkt/bare.dump"), "{err}");

    // An empty object verifies and streams to nothing.
    server.put_object("bkt", "empty", Vec::new()).await.unwrap();
    assert!(s3.verify("bkt", "empty").await.unwrap());

    // Files copied in get a sha256 from adopt_files.
    std::fs::write(server.object_path("bkt", "copied.dump"), b"copied").unwrap();
    assert_eq!(adopt_files(server.root()).unwrap(), 1);
    let meta = s3.head("bkt", "copied.dump").await.unwrap();
    assert_eq!(
        meta.sha256_hex,
        Some(hex::encode(Sha256::digest(b"copied")))
    );
    assert!(s3.verify("bkt", "copied.dump").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_download_50_mib() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(50 * MIB as usize, 42);
    server.put_object("bkt", "big", body.clone()).await.unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: 8 * MIB,
        max_in_flight: 4,
        ..config(&server.endpoint, &server)
    })
    .unwrap();
    let meta = s3.head("bkt", "big").await.unwrap();

    let started = std::time::Instant::now();
    let got = read_all(&s3, &meta).await.unwrap();
    eprintln!("streamed 50 MiB in {:?}", started.elapsed());
    assert!(got == body, "streamed bytes differ");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.out");
    assert_eq!(
        s3.download_to("bkt", "big", &path).await.unwrap(),
        body.len() as u64
    );
    assert!(
        std::fs::read(&path).unwrap() == body,
        "downloaded bytes differ"
    );
    assert!(!dir.path().join("big.out.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume_where_they_stopped() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(50 * MIB as usize, 43);
    server.put_object("bkt", "big", body.clone()).await.unwrap();
    let proxy = FlakyProxy::start(
        server.addr,
        Fault::DropAfterBytes {
            bytes: 3 * MIB,
            times: 3,
        },
    )
    .await
    .unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: 8 * MIB,
        max_in_flight: 4,
        ..config(&proxy.endpoint, &server)
    })
    .unwrap();
    let meta = s3.head("bkt", "big").await.unwrap();
    let got = read_all(&s3, &meta).await.unwrap();
    assert!(got == body, "bytes differ after resumed ranges");
    assert_eq!(proxy.faults_injected(), 3, "three connections were cut");
    assert!(
        proxy.connections() > 1,
        "reconnected: {}",
        proxy.connections()
    );
    // Resuming re-sends nothing: restarting each cut range would have cost
    // at least 3 x 3 MiB more. Headers of ~10 requests are far below 1 MiB.
    let overhead = proxy.response_bytes() - body.len() as u64;
    assert!(overhead < MIB, "{overhead} bytes over the object's size");

    // download_to goes through the same path (cut budget is spent; reset).
    let proxy = FlakyProxy::start(
        server.addr,
        Fault::DropAfterBytes {
            bytes: MIB,
            times: 2,
        },
    )
    .await
    .unwrap();
    let s3 = store(&proxy.endpoint, &server);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    s3.download_to("bkt", "big", &path).await.unwrap();
    assert!(std::fs::read(&path).unwrap() == body);
    assert_eq!(proxy.faults_injected(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_is_retried_then_reported() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(5 * MIB as usize, 44);
    server.put_object("bkt", "k", body.clone()).await.unwrap();

    let proxy = FlakyProxy::start(server.addr, Fault::SlowDown { times: 3 })
        .await
        .unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: MIB,
        ..config(&proxy.endpoint, &server)
    })
    .unwrap();
    // HEAD: three 503s, then the answer.
    let meta = s3.head("bkt", "k").await.unwrap();
    assert_eq!(proxy.faults_injected(), 3);
    assert!(proxy.requests() >= 4, "{}", proxy.requests());
    assert!(read_all(&s3, &meta).await.unwrap() == body);

    // The same for the ranged GETs of a stream and for a listing.
    let proxy = FlakyProxy::start(server.addr, Fault::SlowDown { times: 4 })
        .await
        .unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: MIB,
        ..config(&proxy.endpoint, &server)
    })
    .unwrap();
    assert!(read_all(&s3, &meta).await.unwrap() == body);
    assert_eq!(proxy.faults_injected(), 4);
    assert_eq!(s3.list("bkt", "").await.unwrap().len(), 1);

    // More 503s than retries: Unavailable, naming the object and the code.
    let proxy = FlakyProxy::start(server.addr, Fault::SlowDown { times: 100 })
        .await
        .unwrap();
    let s3 = S3Store::new(S3Config {
        max_retries: 2,
        ..config(&proxy.endpoint, &server)
    })
    .unwrap();
    let err = s3.list("bkt", "").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, S3Error::Unavailable(_)), "{msg}");
    assert!(
        msg.contains("SlowDown") && msg.contains("s3://bkt/"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 2 retries"), "{msg}");
    assert_eq!(proxy.faults_injected(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_denied_and_missing_is_not_found() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    server.put_object("bkt", "k", "v").await.unwrap();
    let bad = S3Store::new(S3Config {
        secret_access_key: Some("not-the-secret".into()),
        ..config(&server.endpoint, &server)
    })
    .unwrap();
    let err = bad.list("bkt", "").await.unwrap_err();
    assert!(matches!(err, S3Error::Denied(_)), "{err}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    let err = bad.head("bkt", "k").await.unwrap_err();
    assert!(matches!(err, S3Error::Denied(_)), "{err}");
    assert!(err.to_string().contains("s3://bkt/k"), "{err}");

    let s3 = store(&server.endpoint, &server);
    let err = s3.head("bkt", "nope").await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound(_)), "{err}");
    assert!(err.to_string().contains("s3://bkt/nope"), "{err}");
    let err = s3.list("no-such-bucket", "").await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound(_)), "{err}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    let err = s3.verify("bkt", "nope").await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound(_)), "{err}");

    // Nobody listening: Unavailable after retries, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let s3 = S3Store::new(S3Config {
        max_retries: 1,
        ..config(&endpoint, &server)
    })
    .unwrap();
    let err = s3.head("bkt", "k").await.unwrap_err();
    assert!(matches!(err, S3Error::Unavailable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_on_spawn_blocking() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(20 * MIB as usize + 5, 45);
    server.put_object("bkt", "k", body.clone()).await.unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: 2 * MIB,
        max_in_flight: 3,
        ..config(&server.endpoint, &server)
    })
    .unwrap();
    let meta = s3.head("bkt", "k").await.unwrap();
    let stream = s3.open_stream(&meta);
    let progress = stream.progress();
    let handle = tokio::runtime::Handle::current();
    let got = tokio::task::spawn_blocking(move || {
        let mut reader = stream.into_blocking_reader(handle);
        let mut out = Vec::new();
        // Odd-sized reads cross range boundaries.
        let mut buf = vec![0u8; 100_003];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    })
    .await
    .unwrap();
    assert!(got == body);
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::Relaxed),
        body.len() as u64
    );

    // Errors come out as io::Error carrying the S3Error's message.
    let gone = ObjectMeta {
        key: "gone".into(),
        ..meta.clone()
    };
    let stream = s3.open_stream(&gone);
    let handle = tokio::runtime::Handle::current();
    let err = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        stream
            .into_blocking_reader(handle)
            .read_to_end(&mut out)
            .unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().starts_with("not found: GET s3://bkt/gone"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_and_drop_cancels() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    let body = random_bytes(16 * MIB as usize, 46);
    server.put_object("bkt", "k", body.clone()).await.unwrap();
    let proxy = FlakyProxy::start(server.addr, Fault::None).await.unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: MIB,
        max_in_flight: 3,
        ..config(&proxy.endpoint, &server)
    })
    .unwrap();
    let meta = s3.head("bkt", "k").await.unwrap();
    let headers = 4096; // generous per-response header allowance
    let base = proxy.response_bytes();
    let fetched = || proxy.response_bytes() - base;

    let mut stream = s3.open_stream(&meta);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fetched() >= 3 * MIB,
        "three ranges in flight: {}",
        fetched()
    );
    assert!(
        fetched() <= 3 * (MIB + headers),
        "nothing past max_in_flight: {}",
        fetched()
    );

    let first = stream.next_chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], &body[..MIB as usize]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fetched() <= 4 * (MIB + headers),
        "one more range per chunk: {}",
        fetched()
    );

    // Dropping the stream stops it: no new request afterwards.
    drop(stream);
    let requests = proxy.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.requests(), requests);
    assert!(fetched() <= 4 * (MIB + headers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_mid_read_fails_clearly() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    server
        .put_object("bkt", "k", random_bytes(8 * MIB as usize, 47))
        .await
        .unwrap();
    let s3 = S3Store::new(S3Config {
        range_size: MIB,
        max_in_flight: 2,
        ..config(&server.endpoint, &server)
    })
    .unwrap();
    let meta = s3.head("bkt", "k").await.unwrap();
    let mut stream = s3.open_stream(&meta);
    stream.next_chunk().await.unwrap().unwrap();
    server
        .put_object("bkt", "k", random_bytes(9 * MIB as usize, 48))
        .await
        .unwrap();
    let mut result = Ok(());
    while let Some(chunk) = stream.next_chunk().await {
        if let Err(e) = chunk {
            result = Err(e);
        }
    }
    let err = result.unwrap_err();
    assert!(matches!(err, S3Error::Failed(_)), "{err}");
    assert!(err.to_string().contains("replaced mid-read"), "{err}");
}

#[test]
fn blocking_server_for_sync_callers() {
    let server = S3Server::start_blocking().unwrap();
    server.create_bucket_blocking("bkt").unwrap();
    let sum = server.put_object_blocking("bkt", "k", "sync").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = store(&server.endpoint, &server);
    let meta = rt.block_on(s3.head("bkt", "k")).unwrap();
    assert_eq!(meta.sha256_hex, Some(sum));
    assert_eq!(
        server.env()[0],
        ("AWS_ENDPOINT_URL", server.endpoint.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_binary_serves_a_directory() {
    use std::io::BufRead as _;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bench/db")).unwrap();
    std::fs::write(root.path().join("bench/db/1.dump"), b"bench data").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_s3-server"))
        .args(["--root", root.path().to_str().unwrap(), "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_owned()
    };
    let s3 = S3Store::new(S3Config {
        endpoint: Some(field("endpoint")),
        region: Some(field("region")),
        path_style: true,
        access_key_id: Some(field("access_key")),
        secret_access_key: Some(field("secret_key")),
        ..Default::default()
    })
    .unwrap();
    let newest = s3.newest("bench", "db/").await.unwrap().unwrap();
    assert_eq!(
        newest.sha256_hex,
        Some(hex::encode(Sha256::digest(b"bench data")))
    );
    assert!(s3.verify("bench", "db/1.dump").await.unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A fake STS: `AssumeRoleWithWebIdentity` with the expected role and token
/// answers the S3 server's keys (as temporary credentials); anything else
/// gets STS's `AccessDenied` error document. Counts the calls.
async fn fake_sts(
    server: &S3Server,
    role: &'static str,
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let (ak, sk) = (server.access_key.clone(), server.secret_key.clone());
    let app = axum::Router::new().route(
        "/",
        post(move |body: String| {
            let counted = counted.clone();
            let (ak, sk) = (ak.clone(), sk.clone());
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ok = body.contains("Action=AssumeRoleWithWebIdentity")
                    && body.contains(&format!("RoleArn={}", role.replace(':', "%3A").replace('/', "%2F")))
                    && body.contains(&format!("WebIdentityToken={token}"));
                if ok {
                    (
                        axum::http::StatusCode::OK,
                        format!(
                            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                             <AccessKeyId>{ak}</AccessKeyId><SecretAccessKey>{sk}</SecretAccessKey>\
                             <SessionToken>session-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
                             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                        ),
                    )
                } else {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                         <Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>"
                            .to_owned(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_come_from_sts_and_are_cached() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bkt").await.unwrap();
    server
        .put_object("bkt", "a", b"hello".to_vec())
        .await
        .unwrap();
    let role = "arn:aws:iam::123456789012:role/drhost";
    let (sts, calls) = fake_sts(&server, role, "the-oidc-token").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "the-oidc-token\n").unwrap();
    let env = |token_file: String, sts: String| {
        move |k: &str| match k {
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some(token_file.clone()),
            "AWS_ROLE_ARN" => Some(role.to_owned()),
            "AWS_ENDPOINT_URL_STS" => Some(sts.clone()),
            _ => None,
        }
    };
    let base = S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        path_style: true,
        ..Default::default()
    };
    let cfg = base
        .clone()
        .resolve_from_for_tests(env(token_file.display().to_string(), sts.clone()))
        .unwrap();
    assert!(cfg.access_key_id.is_none());
    assert!(
        cfg.credentials_from
            .as_deref()
            .unwrap()
            .contains("web identity"),
        "{cfg:?}"
    );
    let s3 = S3Store::new(cfg).unwrap();
    assert_eq!(s3.list("bkt", "").await.unwrap().len(), 1);
    assert_eq!(s3.head("bkt", "a").await.unwrap().size, 5);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the keys are cached until they expire"
    );

    // A token STS refuses: the S3 call fails naming STS's answer, and the
    // token is not in the message.
    std::fs::write(&token_file, "a-stolen-token").unwrap();
    let (sts2, _) = fake_sts(&server, role, "the-oidc-token").await;
    let cfg = base
        .resolve_from_for_tests(env(token_file.display().to_string(), sts2))
        .unwrap();
    let err = S3Store::new(cfg)
        .unwrap()
        .list("bkt", "")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("AccessDenied"), "{msg}");
    assert!(!msg.contains("a-stolen-token"), "{msg}");
}

mod audit_mirror {
    //! `[run] audit_mirror`: the audit log copied to a bucket after every
    //! step and at run end, byte for byte; a bucket that refuses the copy
    //! never fails the recovery, and the report says the log is not off
    //! the machine.

    use std::sync::Arc;

    use drhost::audit_mirror::{AuditMirror, S3AuditSink};
    use drhost::capability::operator::AutoApprove;
    use drhost::engine::DrEngine;
    use drhost::fixture::Fixture;
    use drhost::runbook::{AuditMirrorTarget, Runbook};
    use drhost::runner::{self, NullObserver, RunOptions, RunOutcome};
    use drhost_tests::support::{load, misbehave_fixture, misbehave_runbook};

    use super::*;

    async fn run_mirrored(
        server: &S3Server,
        secret_key: &str,
        each_step: bool,
    ) -> (runner::RunReport, tempfile::TempDir) {
        drhost::capability::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = DrEngine::new(Some(dir.path().join("cache"))).expect("engine");
        let rb = Runbook::load(&misbehave_runbook(dir.path(), "ok", "5s", true)).expect("runbook");
        let plugin = load(&engine, &rb, &drhost_tests::plugin("misbehave"))
            .await
            .expect("plugin");
        let fixture = Fixture::load(&misbehave_fixture(dir.path(), "")).expect("fixture");
        let cfg = S3Config {
            secret_access_key: Some(secret_key.to_owned()),
            ..config(&server.endpoint, server)
        };
        let sink = S3AuditSink::new(
            cfg,
            AuditMirrorTarget {
                bucket: "audit-trail".into(),
                prefix: "audit/prod/".into(),
                each_step,
            },
        )
        .expect("sink");
        let options = RunOptions {
            audit_dir: dir.path().join("audit"),
            dry_run: false,
            run_id: None,
            clock: drhost::sim::RunClock::Real,
            simulation: None,
            audit_mirror: Some(AuditMirror {
                sink: Arc::new(sink),
                each_step,
            }),
            leases: Vec::new(),
            break_lease: false,
            lease_renew_every: std::time::Duration::from_secs(60),
            resume: false,
        };
        let caps = fixture.env.capabilities(Arc::new(AutoApprove));
        let report = runner::run(&engine, &plugin, &rb, caps, options, Arc::new(NullObserver))
            .await
            .expect("run");
        (report, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_whole_log_lands_in_the_bucket() {
        let server = S3Server::start().await.expect("server");
        server.create_bucket("audit-trail").await.expect("bucket");
        for each_step in [false, true] {
            let (report, _dir) = run_mirrored(&server, &server.secret_key, each_step).await;
            assert_eq!(report.outcome, RunOutcome::Completed);
            let name = report.audit_path.file_name().expect("name");
            let key = format!("audit/prod/{}", name.to_string_lossy());
            let copied = std::fs::read(server.object_path("audit-trail", &key)).expect("the copy");
            let local = std::fs::read(&report.audit_path).expect("the log");
            assert_eq!(
                copied, local,
                "each_step={each_step}: the copy is the whole log"
            );
            assert!(
                String::from_utf8_lossy(&copied).contains("\"run-end\""),
                "the copy holds the run's end"
            );
            match &report.audit_mirror {
                Some(Ok(to)) => assert!(to.starts_with(&format!("s3://audit-trail/{key}")), "{to}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_copy_does_not_stop_the_recovery() {
        // (A missing bucket is no test here: s3s-fs creates it on PUT.)
        let server = S3Server::start().await.expect("server");
        server.create_bucket("audit-trail").await.expect("bucket");
        // The wrong secret: every copy is refused (403).
        let (report, _dir) = run_mirrored(&server, "not-the-secret", true).await;
        assert_eq!(
            report.outcome,
            RunOutcome::Completed,
            "{:?}",
            report.outcome
        );
        match &report.audit_mirror {
            Some(Err(e)) => assert!(e.contains("audit-trail"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Each failed per-step copy is recorded in the log itself.
        let log = std::fs::read_to_string(&report.audit_path).expect("log");
        assert_eq!(
            log.matches("could not be copied to s3://audit-trail/audit/prod/")
                .count(),
            report.steps.len()
        );
        assert!(
            drhost::audit::verify(&report.audit_path)
                .expect("verify")
                .is_ok()
        );
        assert!(drhost::report::render(&report).contains("NOT copied off this machine"));
    }
}
