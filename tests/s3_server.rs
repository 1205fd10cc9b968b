//! A real S3 server in process, plus a proxy that breaks connections, for
//! tests of drhost's S3 client (and for a benchmark binary, `s3-server`).
//!
//! [`S3Server`] is `s3s` + `s3s-fs` 0.14 on `127.0.0.1:<free port>`. It enforces
//! SigV4 with one fixed key pair ([`ACCESS_KEY`], [`SECRET_KEY`]) and keeps
//! its data in a temporary directory. Objects are stored as plain files
//! (`<root>/<bucket>/<key>`), so a test can tamper with one on disk. s3s-fs
//! keeps the ETag and checksums in a sidecar file, so the stored sha256 stays
//! as it was, and `verify` must notice the change.
//!
//! [`FlakyProxy`] sits between a client and the server at the TCP level,
//! reads just enough HTTP/1.1 to find each request, and injects one
//! [`Fault`] a set number of times: it cuts a GET response mid-body, or
//! answers `503 SlowDown` itself. Its counters let a test check that a retry
//! or a resume really happened.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use drhost_tests::s3_server::{Fault, FlakyProxy, S3Server};
//! let server = S3Server::start().await?;
//! server.create_bucket("backups").await?;
//! let sha256_hex = server.put_object("backups", "db/1.dump", vec![7u8; 1024]).await?;
//! let proxy = FlakyProxy::start(server.addr, Fault::SlowDown { times: 2 }).await?;
//! // Point the client at `proxy.endpoint` with path-style addressing and
//! // `server.access_key` / `server.secret_key`.
//! # let _ = (sha256_hex, proxy);
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use base64::Engine as _;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The access key every [`S3Server`] accepts.
pub const ACCESS_KEY: &str = "drhost-test-access-key";
/// The secret key every [`S3Server`] accepts.
pub const SECRET_KEY: &str = "drhost-test-secret-key";
/// The region clients should sign for (s3s accepts any).
pub const REGION: &str = "us-east-1";

/// How [`S3Server::put_with`] records the object's sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredSha256 {
    /// As the S3 checksum `ChecksumSHA256` (checked by the server on upload).
    Checksum,
    /// As user metadata `x-amz-meta-sha256` (hex), with no S3 checksum.
    Metadata,
    /// Not at all: the object cannot be verified.
    None,
}

/// An S3 server (s3s-fs) running in this process. Dropping it stops it and
/// deletes its temporary directory.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`; use path-style addressing.
    pub endpoint: String,
    /// The listening address (for [`FlakyProxy::start`]).
    pub addr: SocketAddr,
    /// Access key to sign with ([`ACCESS_KEY`]).
    pub access_key: String,
    /// Secret key to sign with ([`SECRET_KEY`]).
    pub secret_key: String,
    /// Region to sign for ([`REGION`]).
    pub region: String,
    root: PathBuf,
    client: aws_sdk_s3::Client,
    accept: JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts a server on the current Tokio runtime, on a free port, with an
    /// empty temporary directory as its root.
    ///
    /// # Errors
    ///
    /// When the directory or the socket cannot be made.
    pub async fn start() -> anyhow::Result<Self> {
        let tempdir = tempfile::Builder::new().prefix("drhost-s3-").tempdir()?;
        let mut server = Self::start_at(tempdir.path(), 0).await?;
        server._tempdir = Some(tempdir);
        Ok(server)
    }

    /// Starts a server on the current Tokio runtime that serves the existing
    /// directory `root` (each subdirectory is a bucket) on `127.0.0.1:port`
    /// (0 for a free port). Call [`adopt_files`] first for files that were
    /// copied in rather than uploaded.
    ///
    /// # Errors
    ///
    /// When `root` is not a directory or the port cannot be bound.
    pub async fn start_at(root: &Path, port: u16) -> anyhow::Result<Self> {
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("s3s-fs cannot serve {}: {e:?}", root.display()))?;
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            let mut conns = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                conns.spawn(async move {
                    let _ = conn.await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        let endpoint = format!("http://{addr}");
        let client = sdk_client(&endpoint, ACCESS_KEY, SECRET_KEY);
        Ok(Self {
            endpoint,
            addr,
            access_key: ACCESS_KEY.to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            region: REGION.to_owned(),
            root: root.canonicalize()?,
            client,
            accept,
            runtime: None,
            _tempdir: None,
        })
    }

    /// [`S3Server::start`] on a runtime of its own (two worker threads), for
    /// tests and programs without one. Use the `*_blocking` methods with it;
    /// it may be dropped anywhere, even inside another runtime.
    ///
    /// # Errors
    ///
    /// As [`S3Server::start`].
    pub fn start_blocking() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-server")
            .enable_all()
            .build()?;
        let mut server = runtime.block_on(Self::start())?;
        server.runtime = Some(runtime);
        Ok(server)
    }

    /// The directory the server stores buckets in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `bucket/key` (to tamper with it).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Environment variables that point an S3 client (drhost's, or the AWS
    /// CLI) at this server: `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`. Path-style addressing
    /// must still be turned on by the client's own config.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// Creates a bucket through the S3 API.
    ///
    /// # Errors
    ///
    /// When the server refuses (an invalid name, an existing bucket).
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("create bucket {name}: {}", sdk_msg(&e)))?;
        Ok(())
    }

    /// Uploads `body` to `bucket/key` with its `ChecksumSHA256`, and returns
    /// the sha256 as lowercase hex.
    ///
    /// # Errors
    ///
    /// When the server refuses the upload.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<String> {
        self.put_with(bucket, key, body, StoredSha256::Checksum)
            .await
    }

    /// Uploads `body` to `bucket/key`, recording its sha256 as `stored` says,
    /// and returns the sha256 as lowercase hex.
    ///
    /// # Errors
    ///
    /// When the server refuses the upload.
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Bytes>,
        stored: StoredSha256,
    ) -> anyhow::Result<String> {
        let body: Bytes = body.into();
        let digest = Sha256::digest(&body);
        let hex_digest = hex::encode(digest);
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body));
        match stored {
            StoredSha256::Checksum => {
                req = req
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest));
            }
            StoredSha256::Metadata => req = req.metadata("sha256", &hex_digest),
            StoredSha256::None => {}
        }
        req.send()
            .await
            .map_err(|e| anyhow::anyhow!("put s3://{bucket}/{key}: {}", sdk_msg(&e)))?;
        Ok(hex_digest)
    }

    /// [`S3Server::put_object`] of a file's content (read into memory).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or the server refuses the upload.
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> anyhow::Result<String> {
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.put_object(bucket, key, body).await
    }

    fn own_runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        match &self.runtime {
            Some(rt) => Ok(rt),
            None => bail!("the *_blocking methods need a server made by S3Server::start_blocking"),
        }
    }

    /// [`S3Server::create_bucket`] for a server made by
    /// [`S3Server::start_blocking`]; call it outside any async task.
    ///
    /// # Errors
    ///
    /// As [`S3Server::create_bucket`], or when the server has no runtime of
    /// its own.
    pub fn create_bucket_blocking(&self, name: &str) -> anyhow::Result<()> {
        self.own_runtime()?.block_on(self.create_bucket(name))
    }

    /// [`S3Server::put_object`] for a server made by
    /// [`S3Server::start_blocking`]; call it outside any async task.
    ///
    /// # Errors
    ///
    /// As [`S3Server::put_object`], or when the server has no runtime of its
    /// own.
    pub fn put_object_blocking(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<String> {
        self.own_runtime()?
            .block_on(self.put_object(bucket, key, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An SDK client for uploads, signing with the given keys.
fn sdk_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "s3-server",
        ))
        // Send the sha256 we give as a header; no aws-chunked CRC trailer.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn sdk_msg<E: std::error::Error + 'static>(err: &E) -> String {
    aws_sdk_s3::error::DisplayErrorContext(err).to_string()
}

/// Makes files copied straight into `root/<bucket>/...` look uploaded: for
/// each one without s3s-fs's sidecar, writes one holding its sha256 (as
/// `ChecksumSHA256`) and an ETag (the first 32 hex digits of the sha256).
/// Without it, s3s-fs would report no checksum and would re-hash the whole
/// file with MD5 on every GET. Files that already have a sidecar are left
/// alone, so a tampered file keeps its old checksum. Returns how many files
/// it adopted.
///
/// The sidecar (`<root>/.bucket-<b64url>.object-<b64url>.internal.json`) is
/// s3s-fs 0.14's own format; check it when moving to another version.
///
/// # Errors
///
/// When `root` cannot be read or a sidecar cannot be written.
pub fn adopt_files(root: &Path) -> anyhow::Result<usize> {
    let mut adopted = 0;
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        walk(&entry.path(), &mut files)?;
        for file in files {
            let key = file
                .strip_prefix(entry.path())?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            let sidecar = root.join(format!(
                ".bucket-{}.object-{}.internal.json",
                b64(&name),
                b64(&key)
            ));
            if sidecar.exists() {
                continue;
            }
            let mut hasher = Sha256::new();
            let mut f = std::fs::File::open(&file)?;
            std::io::copy(&mut f, &mut hasher)?;
            let digest = hasher.finalize();
            let json = format!(
                "{{\"e_tag\":\"{}\",\"checksum_sha256\":\"{}\"}}",
                &hex::encode(digest)[..32],
                base64::engine::general_purpose::STANDARD.encode(digest)
            );
            std::fs::write(&sidecar, json)
                .with_context(|| format!("writing {}", sidecar.display()))?;
            adopted += 1;
        }
    }
    Ok(adopted)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// What a [`FlakyProxy`] does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a plain TCP proxy (its counters still work).
    None,
    /// On the first `times` connections that carry a GET, close the
    /// connection once `bytes` response bytes (status line and headers
    /// included) have been forwarded after that GET was sent on.
    DropAfterBytes {
        /// Response bytes forwarded before the cut.
        bytes: u64,
        /// Connections to cut.
        times: u32,
    },
    /// Answer the first `times` requests with `503 SlowDown` (an S3 XML
    /// error, `Connection: close`) without forwarding them.
    SlowDown {
        /// Requests to refuse.
        times: u32,
    },
}

#[derive(Debug)]
struct ProxyState {
    upstream: SocketAddr,
    fault: Fault,
    budget: AtomicU32,
    connections: AtomicU64,
    requests: AtomicU64,
    faults: AtomicU64,
    response_bytes: AtomicU64,
}

impl ProxyState {
    /// Takes one fault from the budget, if any is left.
    fn take_fault(&self) -> bool {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A TCP proxy on `127.0.0.1:<free port>` that injects a [`Fault`] between an
/// HTTP/1.1 client and a server. It reads each request's head to know where
/// one request ends (`Content-Length` bodies; a chunked body ends the
/// parsing for that connection). Dropping it stops it and all its
/// connections.
#[derive(Debug)]
pub struct FlakyProxy {
    /// The listening address.
    pub addr: SocketAddr,
    /// `http://<addr>`, the endpoint to give the client.
    pub endpoint: String,
    state: Arc<ProxyState>,
    accept: JoinHandle<()>,
}

impl FlakyProxy {
    /// Starts a proxy to `upstream` that injects `fault`.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start(upstream: SocketAddr, fault: Fault) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let budget = match fault {
            Fault::None => 0,
            Fault::DropAfterBytes { times, .. } | Fault::SlowDown { times } => times,
        };
        let state = Arc::new(ProxyState {
            upstream,
            fault,
            budget: AtomicU32::new(budget),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = accept_state.clone();
                conns.spawn(async move {
                    let _ = proxy_connection(client, state).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            endpoint: format!("http://{addr}"),
            state,
            accept,
        })
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests seen so far (forwarded or answered with a fault).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Faults injected so far: connections cut, or `503 SlowDown` answers.
    pub fn faults_injected(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }

    /// Response bytes forwarded to clients so far (headers included). A
    /// download that resumes instead of restarting keeps this close to the
    /// object's size.
    pub fn response_bytes(&self) -> u64 {
        self.state.response_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How a proxied connection ended on the client-to-server side.
enum Ended {
    /// Either side closed, or the connection was cut.
    Closed,
    /// Answer this request with `503 SlowDown` and close.
    SlowDown {
        /// The request was a HEAD: no body in the answer.
        head: bool,
    },
}

/// Where the client-to-server parser is.
enum ReqState {
    /// Reading a request head (collected until `\r\n\r\n`).
    Head(Vec<u8>),
    /// Forwarding this many more body bytes.
    Body(u64),
    /// A body of unknown length: forward the rest blindly.
    Opaque,
}

const NOT_ARMED: u64 = u64::MAX;

async fn proxy_connection(client: TcpStream, state: Arc<ProxyState>) -> std::io::Result<()> {
    let server = TcpStream::connect(state.upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    // Response bytes left before the cut; NOT_ARMED when no cut is planned.
    let cut_after = AtomicU64::new(NOT_ARMED);

    let upstream = async {
        let mut parse = ReqState::Head(Vec::new());
        let mut armed = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Ended::Closed);
            }
            let mut data = &buf[..n];
            while !data.is_empty() {
                match &mut parse {
                    ReqState::Head(head) => {
                        let before = head.len();
                        head.extend_from_slice(data);
                        let Some(end) = find(head, b"\r\n\r\n") else {
                            data = &[];
                            continue;
                        };
                        let used = end + 4 - before;
                        data = &data[used..];
                        head.truncate(end + 4);
                        let (method, body) = parse_head(head);
                        state.requests.fetch_add(1, Ordering::SeqCst);
                        match state.fault {
                            Fault::SlowDown { .. } if state.take_fault() => {
                                state.faults.fetch_add(1, Ordering::SeqCst);
                                return Ok(Ended::SlowDown {
                                    head: method == "HEAD",
                                });
                            }
                            Fault::DropAfterBytes { bytes, .. }
                                if method == "GET" && !armed && state.take_fault() =>
                            {
                                armed = true;
                                cut_after.store(bytes, Ordering::SeqCst);
                            }
                            _ => {}
                        }
                        server_wr.write_all(head).await?;
                        parse = match body {
                            Some(0) => ReqState::Head(Vec::new()),
                            Some(len) => ReqState::Body(len),
                            None => ReqState::Opaque,
                        };
                    }
                    ReqState::Body(left) => {
                        let k = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        server_wr.write_all(&data[..k]).await?;
                        data = &data[k..];
                        *left -= k as u64;
                        if *left == 0 {
                            parse = ReqState::Head(Vec::new());
                        }
                    }
                    ReqState::Opaque => {
                        server_wr.write_all(data).await?;
                        data = &[];
                    }
                }
            }
        }
    };

    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Ended::Closed);
            }
            let left = cut_after.load(Ordering::SeqCst);
            if left != NOT_ARMED && n as u64 >= left {
                let k = usize::try_from(left).unwrap_or(n);
                client_wr.write_all(&buf[..k]).await?;
                state.response_bytes.fetch_add(k as u64, Ordering::SeqCst);
                state.faults.fetch_add(1, Ordering::SeqCst);
                return Ok(Ended::Closed); // the cut: both sockets close
            }
            if left != NOT_ARMED {
                cut_after.store(left - n as u64, Ordering::SeqCst);
            }
            client_wr.write_all(&buf[..n]).await?;
            state.response_bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
    };

    let ended = tokio::select! {
        r = upstream => r?,
        r = downstream => r?,
    };
    if let Ended::SlowDown { head } = ended {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate.</Message>\
                    <RequestId>flaky-proxy</RequestId></Error>";
        let mut response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if !head {
            response.push_str(body);
        }
        client_wr.write_all(response.as_bytes()).await?;
        client_wr.shutdown().await?;
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The method of a request head, and its body length (`None` if chunked).
fn parse_head(head: &[u8]) -> (String, Option<u64>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let method = lines
        .next()
        .and_then(|l| l.split(' ').next())
        .unwrap_or("")
        .to_owned();
    let mut length = Some(0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "content-length" {
            length = value.trim().parse().ok();
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            return (method, None);
        }
    }
    (method, length)
}
