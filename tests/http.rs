//! End-to-end tests of `LiveHealth` and `WebhookNotifier` against a local
//! axum server on 127.0.0.1 with scripted answers (status sequences per path,
//! a slow endpoint, redirects, a fixed body, a recording webhook).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use drhost::bindings::CapError;
use drhost::capability::health::HealthBackend;
use drhost::capability::health::live::{HealthTarget, LiveHealth};
use drhost::capability::operator::NotifyBackend;
use drhost::capability::operator::webhook::{PayloadShape, WebhookChannel, WebhookNotifier};
use reqwest::Url;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Scripted server state.
#[derive(Default)]
struct Srv {
    /// Status sequence per path; the last one repeats. Unscripted: 200.
    scripts: Mutex<HashMap<String, VecDeque<u16>>>,
    seen: Mutex<Vec<Seen>>,
    port: AtomicU16,
}

impl Srv {
    fn script(&self, path: &str, statuses: &[u16]) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), statuses.iter().copied().collect());
    }
    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }
    fn total(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn next_status(&self, path: &str) -> u16 {
        let mut scripts = self.scripts.lock().unwrap();
        match scripts.get_mut(path) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap(),
            Some(q) => *q.front().unwrap_or(&200),
            None => 200,
        }
    }
}

async fn handle(
    State(srv): State<Arc<Srv>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    srv.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
        body,
    });
    let port = srv.port.load(Ordering::SeqCst);
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "ok".into_response()
        }
        "/redir-same" => {
            (StatusCode::FOUND, [(header::LOCATION, "/ok".to_string())]).into_response()
        }
        "/redir-loop" => (
            StatusCode::FOUND,
            [(header::LOCATION, "/redir-loop".to_string())],
        )
            .into_response(),
        "/redir-other" => (
            StatusCode::FOUND,
            [(header::LOCATION, format!("http://localhost:{port}/landing"))],
        )
            .into_response(),
        "/body" => "status: degraded".into_response(),
        "/bad-request" => (
            StatusCode::BAD_REQUEST,
            "invalid payload: field `blocks` is required",
        )
            .into_response(),
        "/limited" => {
            let s = srv.next_status(&path);
            if s == 429 {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    "slow down",
                )
                    .into_response()
            } else {
                StatusCode::from_u16(s).unwrap().into_response()
            }
        }
        _ => {
            let s = StatusCode::from_u16(srv.next_status(&path)).unwrap();
            (s, "ok").into_response()
        }
    }
}

async fn server() -> (Arc<Srv>, SocketAddr) {
    let srv = Arc::new(Srv::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    srv.port.store(addr.port(), Ordering::SeqCst);
    let app = Router::new().fallback(handle).with_state(srv.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (srv, addr)
}

fn url(addr: SocketAddr, path: &str) -> Url {
    Url::parse(&format!("http://{addr}{path}")).unwrap()
}

/// A local target (allow_private set, since the server is on loopback).
fn local(addr: SocketAddr, path: &str) -> HealthTarget {
    HealthTarget {
        allow_private: true,
        ..HealthTarget::new(url(addr, path))
    }
}

fn health(targets: Vec<(&str, HealthTarget)>) -> LiveHealth {
    LiveHealth::new(
        targets
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap()
}

#[tokio::test]
async fn healthy_200() {
    let (srv, addr) = server().await;
    let h = health(vec![("web", local(addr, "/ok"))]);
    let r = h.check("web").await.unwrap();
    assert!(r.healthy, "{r:?}");
    assert_eq!(
        (r.target.as_str(), r.status, r.detail.as_str()),
        ("web", 200, "ok")
    );
    assert_eq!(srv.count("/ok"), 1);
}

#[tokio::test]
async fn unhealthy_503_with_detail() {
    let (srv, addr) = server().await;
    srv.script("/down", &[503]);
    let h = health(vec![("web", local(addr, "/down"))]);
    let r = h.check("web").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.status, 503);
    assert_eq!(r.detail, "status 503, expected 200");
}

#[tokio::test]
async fn expected_status_list() {
    let (srv, addr) = server().await;
    srv.script("/nc", &[204]);
    let mut t = local(addr, "/nc");
    t.expect_status = (200..=299).collect();
    let h = health(vec![("web", t)]);
    assert!(h.check("web").await.unwrap().healthy);
    srv.script("/nc", &[404]);
    let r = h.check("web").await.unwrap();
    assert_eq!(r.detail, "status 404, expected 200-299");
}

#[tokio::test]
async fn body_substring() {
    let (_srv, addr) = server().await;
    let mut bad = local(addr, "/body");
    bad.body_contains = Some("ok".into());
    let mut good = local(addr, "/body");
    good.body_contains = Some("degraded".into());
    let h = health(vec![("bad", bad), ("good", good)]);
    let r = h.check("bad").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.status, 200);
    assert_eq!(r.detail, "body does not contain \"ok\"");
    assert!(h.check("good").await.unwrap().healthy);
}

#[tokio::test]
async fn per_request_timeout() {
    let (_srv, addr) = server().await;
    let mut t = local(addr, "/slow");
    t.timeout = Duration::from_millis(300);
    let h = health(vec![("slow", t)]);
    let r = h.check("slow").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.status, 0);
    // The detail says the 300 ms timeout fired (the endpoint answers after
    // 3 s); how long that took is a benchmark's business, not a test's.
    assert_eq!(r.detail, "timed out after 300ms");
}

#[tokio::test]
async fn connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let h = health(vec![("gone", local(addr, "/"))]);
    let r = h.check("gone").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.status, 0);
    assert_eq!(r.detail, "connection refused");
}

#[tokio::test]
async fn wait_healthy_after_two_503() {
    let (srv, addr) = server().await;
    srv.script("/flaky", &[503, 503, 200]);
    let h = health(vec![("web", local(addr, "/flaky"))]);
    let r = h
        .wait_healthy("web", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(r.healthy);
    assert_eq!(r.status, 200);
    assert_eq!(srv.count("/flaky"), 3);
}

#[tokio::test]
async fn wait_healthy_times_out() {
    let (srv, addr) = server().await;
    srv.script("/down", &[503]);
    let h = health(vec![("web", local(addr, "/down"))]);
    let e = h
        .wait_healthy("web", Duration::from_millis(1200))
        .await
        .unwrap_err();
    match &e {
        CapError::TimedOut(m) => {
            assert!(
                m.starts_with("target web not healthy after 1.2s: last: "),
                "{m}"
            );
            assert!(m.contains("status 503, expected 200"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(srv.count("/down") >= 2);
}

#[tokio::test]
async fn redirect_same_host_followed() {
    let (srv, addr) = server().await;
    let h = health(vec![("web", local(addr, "/redir-same"))]);
    let r = h.check("web").await.unwrap();
    assert!(r.healthy, "{r:?}");
    assert_eq!(srv.count("/redir-same"), 1);
    assert_eq!(srv.count("/ok"), 1);
}

#[tokio::test]
async fn redirect_loop_stops() {
    let (srv, addr) = server().await;
    let h = health(vec![("web", local(addr, "/redir-loop"))]);
    let r = h.check("web").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.detail, "more than 5 redirects");
    assert_eq!(srv.count("/redir-loop"), 6);
}

#[tokio::test]
async fn redirect_other_host_not_followed() {
    let (srv, addr) = server().await;
    let h = health(vec![("web", local(addr, "/redir-other"))]);
    let r = h.check("web").await.unwrap();
    assert!(!r.healthy);
    assert_eq!(r.status, 0);
    assert_eq!(
        r.detail,
        format!(
            "redirect to other host http://localhost:{} not followed",
            addr.port()
        )
    );
    assert_eq!(srv.count("/redir-other"), 1);
    assert_eq!(srv.count("/landing"), 0);
}

#[tokio::test]
async fn loopback_refused_by_default() {
    let (srv, addr) = server().await;
    let by_ip = HealthTarget::new(url(addr, "/ok"));
    let by_name =
        HealthTarget::new(Url::parse(&format!("http://localhost:{}/ok", addr.port())).unwrap());
    assert!(!by_ip.allow_private);
    let h = health(vec![("ip", by_ip), ("name", by_name)]);
    for name in ["ip", "name"] {
        match h.check(name).await {
            Err(CapError::Denied(m)) => assert!(m.contains("allow_private"), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // wait_healthy gives up at once on a policy refusal.
    let e = h
        .wait_healthy("ip", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, CapError::Denied(_)), "{e:?}");
    assert_eq!(srv.total(), 0);
}

#[tokio::test]
async fn metadata_refused_even_with_allow_private() {
    let mut targets = Vec::new();
    for (n, u) in [
        ("v4", "http://169.254.169.254/latest/meta-data/"),
        ("ll", "http://169.254.10.1:8080/"),
        ("v6", "http://[fd00:ec2::254]/latest/"),
        ("mapped", "http://[::ffff:169.254.169.254]/"),
        ("zero", "http://0.0.0.0:80/"),
    ] {
        let mut t = HealthTarget::new(Url::parse(u).unwrap());
        t.allow_private = true;
        targets.push((n, t));
    }
    let h = health(targets);
    for n in ["v4", "ll", "v6", "mapped", "zero"] {
        let e = h.check(n).await.unwrap_err();
        assert!(matches!(e, CapError::Denied(_)), "{n}: {e:?}");
    }
}

#[tokio::test]
async fn unknown_target_invalid() {
    let (_srv, addr) = server().await;
    let h = health(vec![("api", local(addr, "/")), ("web", local(addr, "/"))]);
    match h.check("nope").await {
        Err(CapError::Invalid(m)) => assert!(m.contains("api, web"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.wait_healthy("nope", Duration::from_secs(1)).await,
        Err(CapError::Invalid(_))
    ));
}

// ---- notify ----

const SECRET_HEADER: &str = "Bearer hdr-s3cret-value";
const SECRET_QUERY: &str = "qtok-123456";

fn channel(addr: SocketAddr, path: &str, template: PayloadShape) -> WebhookChannel {
    WebhookChannel {
        url: url(addr, &format!("{path}?token={SECRET_QUERY}")),
        headers: vec![("Authorization".into(), SECRET_HEADER.into())],
        timeout: Duration::from_secs(5),
        template,
        allow_private: true,
    }
}

fn notifier(channels: Vec<(&str, WebhookChannel)>) -> WebhookNotifier {
    WebhookNotifier::new(
        channels
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        Default::default(),
    )
}

fn assert_no_secrets(text: &str) {
    assert!(!text.contains("s3cret"), "header value leaked: {text}");
    assert!(!text.contains(SECRET_QUERY), "query token leaked: {text}");
    assert!(!text.contains("token="), "query leaked: {text}");
}

#[tokio::test]
async fn notify_delivers_json_and_headers() {
    let (srv, addr) = server().await;
    let n = notifier(vec![
        ("ops", channel(addr, "/hook", PayloadShape::Json)),
        ("slack", channel(addr, "/slack", PayloadShape::Slack)),
    ]);
    n.notify("ops", "failover started").await.unwrap();
    n.notify("slack", "hello \"team\"").await.unwrap();
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let hook = &seen[0];
    assert_eq!(hook.path, "/hook");
    assert_eq!(hook.headers["authorization"], SECRET_HEADER);
    assert_eq!(hook.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"text": "failover started", "channel": "ops", "source": "drhost"})
    );
    let body: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(body, serde_json::json!({"text": "hello \"team\""}));
}

#[tokio::test]
async fn notify_retries_5xx() {
    let (srv, addr) = server().await;
    srv.script("/hook", &[500, 500, 200]);
    let n = notifier(vec![("ops", channel(addr, "/hook", PayloadShape::Json))]);
    n.notify("ops", "m").await.unwrap();
    assert_eq!(srv.count("/hook"), 3);
}

#[tokio::test]
async fn notify_honours_retry_after() {
    let (srv, addr) = server().await;
    srv.script("/limited", &[429, 200]);
    let n = notifier(vec![("ops", channel(addr, "/limited", PayloadShape::Json))]);
    let start = Instant::now();
    n.notify("ops", "m").await.unwrap();
    assert_eq!(srv.count("/limited"), 2);
    // Retry-After: 1 was waited out (sleeps never end early).
    assert!(
        start.elapsed() >= Duration::from_millis(990),
        "{:?}",
        start.elapsed()
    );
}

/// Captured tracing output, to check that no secret is logged.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn notify_errors_redacted() {
    let logs = LogBuf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (srv, addr) = server().await;
    srv.script("/always500", &[500]);
    let n = notifier(vec![
        ("bad", channel(addr, "/bad-request", PayloadShape::Json)),
        ("down", channel(addr, "/always500", PayloadShape::Slack)),
    ]);

    let e = n.notify("bad", "m").await.unwrap_err();
    let CapError::Failed(m) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        m,
        "webhook bad answered 400: invalid payload: field `blocks` is required"
    );
    assert_eq!(srv.count("/bad-request"), 1, "4xx is not retried");

    let e = n.notify("down", "m").await.unwrap_err();
    let CapError::Unavailable(m) = &e else {
        panic!("{e:?}")
    };
    assert!(
        m.contains("3 attempt(s)") && m.contains("answered 500"),
        "{m}"
    );
    assert!(m.contains(&format!("http://{addr}")), "{m}");
    assert_eq!(srv.count("/always500"), 3);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("notification attempt failed"), "{logs}");
    for text in [format!("{:?}", n), logs] {
        assert_no_secrets(&text);
    }
    for e in [
        n.notify("bad", "m").await.unwrap_err(),
        n.notify("down", "m").await.unwrap_err(),
    ] {
        assert_no_secrets(&format!("{e:?}"));
    }
}

#[tokio::test]
async fn notify_connection_refused_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let n = notifier(vec![("ops", channel(addr, "/hook", PayloadShape::Json))]);
    match n.notify("ops", "m").await {
        Err(CapError::Unavailable(m)) => {
            assert!(m.ends_with("last: connection refused"), "{m}");
            assert_no_secrets(&m);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn notify_policy_and_unknown() {
    let (srv, addr) = server().await;
    let mut private = channel(addr, "/hook", PayloadShape::Json);
    private.allow_private = false;
    let mut metadata = channel(addr, "/hook", PayloadShape::Json);
    metadata.url = Url::parse("http://169.254.169.254/hook").unwrap();
    let n = notifier(vec![("private", private), ("md", metadata)]);
    for ch in ["private", "md"] {
        let e = n.notify(ch, "m").await.unwrap_err();
        assert!(matches!(e, CapError::Denied(_)), "{ch}: {e:?}");
    }
    match n.notify("nope", "m").await {
        Err(CapError::Invalid(m)) => assert!(m.contains("md, private"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(srv.total(), 0);
}
