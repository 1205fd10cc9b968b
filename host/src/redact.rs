//! Redaction: secrets never reach what people and machines read later.
//!
//! Applied where text leaves the host for good: every audit record (its
//! arguments, outcome and message, before the record is hashed, so every
//! report built from the log is clean too) and every console line. What
//! is redacted:
//!
//! - the value of any JSON field whose name says it holds a secret
//!   (`password`, `passwd`, `secret`, `token`, `api_key`, `authorization`,
//!   `credential`, `private_key`, `cookie`, `signature`, ... in any case,
//!   with `-`, `_` or nothing between words);
//! - in any text: the password of a URL (`postgres://app:PW@db/x`), query
//!   parameters with such names (`?token=...`, `X-Amz-Signature=...`),
//!   `name=value` and `name: value` pairs with such names (libpq
//!   `password=...`, `PGPASSWORD=...`, `AWS_SECRET_ACCESS_KEY=...`), HTTP
//!   `Bearer`/`Basic` credentials, and AWS access key ids (`AKIA...`).
//!
//! The replacement is [`REDACTED`]; structure and other values are kept,
//! so a redacted record still says what was done and to what. Secret
//! sources are referred to by name and their bytes never enter a record in
//! the first place; this layer is the net under that rule.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;
use serde_json::value::RawValue;

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// Word stems that make a field name sensitive (compared without `-`/`_`,
/// lowercase).
const SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "accesskey",
    "sessionkey",
    "cookie",
    "signature",
];

/// Whether a field or parameter named `name` holds a secret.
pub fn is_sensitive_name(name: &str) -> bool {
    // Lowercase without `-`/`_`, on the stack (field names are short; a
    // longer one is cut, which can only make it match less).
    let mut buf = [0u8; 64];
    let mut n = 0;
    for b in name.bytes().filter(|b| *b != b'-' && *b != b'_') {
        if n == buf.len() {
            break;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    let folded = &buf[..n];
    // `secret-source`, `secret_sources`: where a secret lives is a name,
    // not the secret (the host resolves it; its bytes never get here).
    if folded.ends_with(b"source") || folded.ends_with(b"sources") {
        return false;
    }
    SENSITIVE
        .iter()
        .any(|s| folded.windows(s.len()).any(|w| w == s.as_bytes()))
}

struct Patterns {
    url_password: Regex,
    pair: Regex,
    auth_scheme: Regex,
    aws_key_id: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let name = r"[A-Za-z0-9_\-.]*(?i:password|passwd|passphrase|secret|token|api[-_]?key|authorization|credential|private[-_]?key|access[-_]?key|session[-_]?key|cookie|signature)[A-Za-z0-9_\-.]*";
        Patterns {
            // scheme://user:password@host
            url_password: Regex::new(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)([^@\s/]+)@")
                .expect("valid regex"),
            // name=value, name: value, "name": "value" (query strings, conninfo, env)
            pair: Regex::new(&format!(
                r#"(?P<k>\b{name}\b"?\s*(?:=|:)\s*"?)(?P<v>\[redacted\]|[^\s&;,"'}}\]]+)"#
            ))
            .expect("valid regex"),
            auth_scheme: Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]+=*")
                .expect("valid regex"),
            aws_key_id: Regex::new(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b").expect("valid regex"),
        }
    })
}

/// `text` with every secret it visibly holds replaced by [`REDACTED`];
/// borrowed when there was nothing to redact.
pub fn text(text: &str) -> Cow<'_, str> {
    // Fast path: none of the patterns can match.
    let lower_hit = {
        let t = text.as_bytes();
        t.windows(3).any(|w| {
            let w = [
                w[0].to_ascii_lowercase(),
                w[1].to_ascii_lowercase(),
                w[2].to_ascii_lowercase(),
            ];
            matches!(
                &w,
                b"://"
                    | b"pas"
                    | b"sec"
                    | b"tok"
                    | b"key"
                    | b"aut"
                    | b"cre"
                    | b"coo"
                    | b"sig"
                    | b"bea"
                    | b"bas"
                    | b"aki"
                    | b"asi"
            )
        })
    };
    if !lower_hit {
        return Cow::Borrowed(text);
    }
    let p = patterns();
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    let replaced = p
        .url_password
        .replace_all(&out, format!("${{1}}{REDACTED}@"));
    if let Cow::Owned(s) = replaced {
        out = Cow::Owned(s);
    }
    // Before `pair`: `Authorization: Bearer X` must lose X, not only "Bearer".
    let replaced = p
        .auth_scheme
        .replace_all(&out, format!("${{1}} {REDACTED}"));
    if let Cow::Owned(s) = replaced {
        out = Cow::Owned(s);
    }
    let replaced = p.pair.replace_all(&out, format!("${{k}}{REDACTED}"));
    if let Cow::Owned(s) = replaced {
        out = Cow::Owned(s);
    }
    let replaced = p.aws_key_id.replace_all(&out, REDACTED);
    if let Cow::Owned(s) = replaced {
        out = Cow::Owned(s);
    }
    // Already-redacted text matches again: report it as unchanged.
    if out == text {
        return Cow::Borrowed(text);
    }
    out
}

/// Redacts a JSON value in place; returns whether anything changed.
pub fn value(v: &mut Value) -> bool {
    match v {
        Value::Object(map) => {
            let mut changed = false;
            for (k, v) in map.iter_mut() {
                if is_sensitive_name(k) && !is_redacted(v) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                    changed = true;
                } else {
                    changed |= value(v);
                }
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |c, v| value(v) | c),
        Value::String(s) => match text(s) {
            Cow::Owned(r) => {
                *s = r;
                true
            }
            Cow::Borrowed(_) => false,
        },
        _ => false,
    }
}

fn is_redacted(v: &Value) -> bool {
    v.as_str() == Some(REDACTED)
}

/// A redacted copy of serialized JSON, or `None` when nothing needed
/// redacting (the common case: no copy).
pub fn raw(json: &RawValue) -> Option<Box<RawValue>> {
    let s = json.get();
    // Nothing sensitive can hide in JSON without one of these substrings.
    if matches!(text(s), Cow::Borrowed(_)) && !has_sensitive_key(s) {
        return None;
    }
    let mut v: Value = serde_json::from_str(s).ok()?;
    if !value(&mut v) {
        return None;
    }
    serde_json::value::to_raw_value(&v).ok()
}

fn has_sensitive_key(json: &str) -> bool {
    // Keys appear as "name": ; check quoted words followed by a colon.
    let mut parts = json.split('"');
    let mut prev = parts.next();
    for cur in parts {
        if cur.trim_start().starts_with(':') && prev.is_some_and(is_sensitive_name) {
            return true;
        }
        prev = Some(cur);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_names() {
        for n in [
            "password",
            "PGPASSWORD",
            "db-password",
            "api_key",
            "ApiKey",
            "x-api-key",
            "Authorization",
            "aws_secret_access_key",
            "secret",
            "client_secret",
            "refresh_token",
            "X-Amz-Signature",
            "private_key",
            "session-cookie",
        ] {
            assert!(is_sensitive_name(n), "{n}");
        }
        for n in [
            "key",
            "bucket",
            "name",
            "source",
            "namespace",
            "question",
            "by",
            "kind",
            "secret-source",
            "secret_sources",
        ] {
            assert!(!is_sensitive_name(n), "{n}");
        }
    }

    #[test]
    fn text_patterns() {
        let cases = [
            (
                "postgres://app:hunter2@db.internal:5432/rs",
                "postgres://app:[redacted]@db.internal:5432/rs",
            ),
            (
                "host=db user=app password=hunter2 dbname=rs",
                "host=db user=app password=[redacted] dbname=rs",
            ),
            (
                "GET https://hooks.example/x?channel=ops&token=abc123&v=2",
                "GET https://hooks.example/x?channel=ops&token=[redacted]&v=2",
            ),
            (
                "https://s3/b/k?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=deadbeef",
                "https://s3/b/k?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]",
            ),
            ("PGPASSWORD=s3cr3t psql", "PGPASSWORD=[redacted] psql"),
            (
                "Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sig-_x",
                "Authorization: [redacted] [redacted]",
            ),
            (
                "curl -H 'x: Basic dXNlcjpwYXNz'",
                "curl -H 'x: Basic [redacted]'",
            ),
            ("key AKIAIOSFODNN7EXAMPLE leaked", "key [redacted] leaked"),
            ("secret: hunter2", "secret: [redacted]"),
        ];
        for (input, want) in cases {
            assert_eq!(text(input), want, "{input}");
        }
        // Nothing to redact: borrowed, unchanged.
        for clean in [
            "scaled resume-screening/backend from 3 to 0 replicas",
            "restored resume_screening from resume-screening-backups/postgres/backup_latest.dump.gz",
            "replaced secret resume-screening/resume-screening-secrets from source vault-rotated",
            "https://api.example.com/health",
            "key=postgres/backup_latest.dump.gz",
        ] {
            assert!(
                matches!(text(clean), Cow::Borrowed(_)),
                "{clean} -> {}",
                text(clean)
            );
        }
    }

    #[test]
    fn json_fields_and_nested_strings() {
        let mut v = serde_json::json!({
            "params": {"db_password": "hunter2", "namespace": "rs", "api-token": 42},
            "url": "https://u:pw@example.com/",
            "list": [{"Authorization": "Bearer x"}, "password=abc"],
            "key": "postgres/backup.dump",
            "secret": null,
        });
        assert!(value(&mut v));
        assert_eq!(v["params"]["db_password"], REDACTED);
        assert_eq!(v["params"]["api-token"], REDACTED);
        assert_eq!(v["params"]["namespace"], "rs");
        assert_eq!(v["url"], "https://u:[redacted]@example.com/");
        assert_eq!(v["list"][0]["Authorization"], REDACTED);
        assert_eq!(v["list"][1], "password=[redacted]");
        assert_eq!(v["key"], "postgres/backup.dump");
        assert!(v["secret"].is_null());
        // Idempotent.
        assert!(!value(&mut v));
    }

    #[test]
    fn raw_json_is_copied_only_when_needed() {
        let clean =
            serde_json::value::to_raw_value(&serde_json::json!({"name": "backend", "replicas": 3}))
                .unwrap();
        assert!(raw(&clean).is_none());
        let dirty =
            serde_json::value::to_raw_value(&serde_json::json!({"password": "hunter2"})).unwrap();
        assert_eq!(raw(&dirty).unwrap().get(), r#"{"password":"[redacted]"}"#);
    }
}
