//! Where S3 credentials and the region come from when the runbook does not
//! say: the parts of the AWS default chain an operator's laptop or a CI job
//! uses, in the AWS SDKs' order, without `aws-config` (whose build costs
//! minutes and pulls the STS, SSO and IMDS clients):
//!
//! 1. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`;
//! 2. the profile named by the runbook (`profile = "..."`), else
//!    `AWS_PROFILE`, else `default`, read from the shared credentials file
//!    (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) and the
//!    config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, sections
//!    `[profile NAME]` and `[default]`): static keys, or a
//!    `credential_process` whose JSON output gives them (this is how SSO and
//!    assumed roles reach drhost: `credential_process = aws configure
//!    export-credentials --profile NAME --format process`).
//!
//! 3. web identity federation, the way EKS's IAM roles for service accounts
//!    (IRSA) hand a pod its role: `AWS_WEB_IDENTITY_TOKEN_FILE` and
//!    `AWS_ROLE_ARN` (and `AWS_ROLE_SESSION_NAME`) in the environment;
//!    [`WebIdentity`] exchanges the token for temporary keys with STS
//!    `AssumeRoleWithWebIdentity` (endpoint `AWS_ENDPOINT_URL_STS`, else the
//!    region's), and the SDK's identity cache asks again before they expire,
//!    so a restore longer than the keys' lifetime keeps working.
//!
//! Not resolved: ECS container credentials and EC2 instance metadata. A
//! profile that asks for what drhost does not do itself (`role_arn`,
//! `sso_session`, `web_identity_token_file`) is refused with the
//! `credential_process` line to use instead, rather than silently ignored.
//! The region follows the same order: `AWS_REGION`, `AWS_DEFAULT_REGION`,
//! the profile's `region`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys found for one profile, merged from both files (the credentials file
/// wins, as in the AWS CLI).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// `key = value` pairs, keys lower-cased.
    pub values: BTreeMap<String, String>,
    /// The files it was read from, for messages.
    pub files: Vec<PathBuf>,
}

/// Credentials a profile yields.
#[derive(Clone, PartialEq, Eq)]
pub enum ProfileCredentials {
    /// Static keys in the file.
    Static {
        /// `aws_access_key_id`.
        access_key_id: String,
        /// `aws_secret_access_key`.
        secret_access_key: String,
        /// `aws_session_token`.
        session_token: Option<String>,
    },
    /// A command printing the keys as JSON (run when the store is built).
    Process(String),
}

impl std::fmt::Debug for ProfileCredentials {
    /// Secrets are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static { access_key_id, .. } => {
                write!(f, "Static {{ access_key_id: {access_key_id:?}, .. }}")
            }
            Self::Process(cmd) => write!(f, "Process({cmd:?})"),
        }
    }
}

/// The two shared files, from the environment's overrides or `~/.aws`.
pub fn shared_files(lookup: &dyn Fn(&str) -> Option<String>) -> (Option<PathBuf>, Option<PathBuf>) {
    let home = lookup("HOME").map(PathBuf::from);
    let credentials = lookup("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let config = lookup("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    (credentials, config)
}

/// Reads profile `name` from the shared files. Missing files are skipped;
/// `Ok(None)` when neither has the profile.
///
/// # Errors
/// A file that exists but cannot be read or parsed (the message names it
/// and the line).
pub fn load_profile(
    name: &str,
    credentials_file: Option<&Path>,
    config_file: Option<&Path>,
) -> Result<Option<Profile>, String> {
    let mut profile = Profile {
        name: name.to_owned(),
        ..Profile::default()
    };
    // Config first, then credentials over it.
    let sources = [(config_file, true), (credentials_file, false)];
    for (path, is_config) in sources {
        let Some(path) = path else { continue };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let sections = parse_ini(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let wanted = |section: &str| {
            if is_config {
                section == format!("profile {name}") || (name == "default" && section == "default")
            } else {
                section == name
            }
        };
        let mut found = false;
        for (section, values) in sections {
            if wanted(&section) {
                found = true;
                profile.values.extend(values);
            }
        }
        if found {
            profile.files.push(path.to_owned());
        }
    }
    Ok((!profile.files.is_empty()).then_some(profile))
}

impl Profile {
    /// The credentials this profile gives.
    ///
    /// # Errors
    /// Keys missing, or a mechanism drhost does not implement (the message
    /// says what to write instead).
    pub fn credentials(&self) -> Result<ProfileCredentials, String> {
        let get = |k: &str| self.values.get(k).filter(|v| !v.is_empty()).cloned();
        let files = self
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        if let (Some(access_key_id), Some(secret_access_key)) =
            (get("aws_access_key_id"), get("aws_secret_access_key"))
        {
            return Ok(ProfileCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token: get("aws_session_token"),
            });
        }
        if let Some(cmd) = get("credential_process") {
            return Ok(ProfileCredentials::Process(cmd));
        }
        let unsupported = [
            "role_arn",
            "sso_session",
            "sso_start_url",
            "web_identity_token_file",
        ]
        .into_iter()
        .find(|k| get(k).is_some());
        Err(match unsupported {
            Some(key) => format!(
                "AWS profile {:?} ({files}) uses `{key}`, which drhost does not resolve itself; \
                 add `credential_process = aws configure export-credentials --profile {} \
                 --format process` to a profile and use that one",
                self.name, self.name
            ),
            None => format!(
                "AWS profile {:?} ({files}) has neither aws_access_key_id + \
                 aws_secret_access_key nor credential_process",
                self.name
            ),
        })
    }

    /// The profile's `region`, if any.
    pub fn region(&self) -> Option<String> {
        self.values.get("region").filter(|v| !v.is_empty()).cloned()
    }
}

/// Keys a `credential_process` prints (AWS's documented format, version 1).
#[derive(Clone, PartialEq, Eq)]
pub struct ProcessCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`.
    pub session_token: Option<String>,
    /// `Expiration` (RFC 3339), as printed.
    pub expiration: Option<String>,
}

impl std::fmt::Debug for ProcessCredentials {
    /// Secrets are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// Runs a `credential_process` command (through `sh -c`, as the AWS SDKs do
/// on Unix) and parses what it prints.
///
/// # Errors
/// The command cannot start, exits non-zero (its stderr is quoted, its
/// stdout never is: it may hold keys), or prints something else than the
/// documented JSON.
pub fn run_credential_process(command: &str) -> Result<ProcessCredentials, String> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("credential_process {command:?} could not start: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr: String = stderr.trim().chars().take(300).collect();
        return Err(format!(
            "credential_process {command:?} failed ({}): {stderr}",
            output.status
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!("credential_process {command:?} did not print JSON (its output is not shown: it may hold secrets)")
    })?;
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(v) = json.get("Version").and_then(serde_json::Value::as_u64)
        && v != 1
    {
        return Err(format!(
            "credential_process {command:?} printed Version {v}; only version 1 is defined"
        ));
    }
    match (field("AccessKeyId"), field("SecretAccessKey")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(ProcessCredentials {
            access_key_id,
            secret_access_key,
            session_token: field("SessionToken"),
            expiration: field("Expiration"),
        }),
        _ => Err(format!(
            "credential_process {command:?} printed JSON without AccessKeyId and SecretAccessKey"
        )),
    }
}

/// One `[name]` of an INI file and its keys.
type Section = (String, BTreeMap<String, String>);

/// Web identity federation settings (EKS IRSA and other OIDC providers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentity {
    /// The role to assume.
    pub role_arn: String,
    /// The file holding the OIDC token (re-read at every exchange: the
    /// kubelet rotates it).
    pub token_file: PathBuf,
    /// `RoleSessionName`, shown in CloudTrail.
    pub session_name: String,
    /// The STS endpoint URL.
    pub sts_endpoint: String,
}

/// Temporary keys from STS.
#[derive(Clone)]
pub struct StsCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`.
    pub session_token: String,
    /// When they stop working.
    pub expiration: std::time::SystemTime,
}

impl WebIdentity {
    /// The settings, when `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`
    /// are both set.
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>, region: &str) -> Option<Self> {
        let token_file = lookup("AWS_WEB_IDENTITY_TOKEN_FILE")?;
        let role_arn = lookup("AWS_ROLE_ARN")?;
        Some(WebIdentity {
            role_arn,
            token_file: PathBuf::from(token_file),
            session_name: lookup("AWS_ROLE_SESSION_NAME")
                .unwrap_or_else(|| format!("drhost-{}", std::process::id())),
            sts_endpoint: lookup("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com")),
        })
    }

    /// One `AssumeRoleWithWebIdentity` call (unsigned: the token is the
    /// proof).
    ///
    /// # Errors
    /// The token file cannot be read, STS cannot be reached, or it refuses
    /// (its code and message are quoted; the token never is).
    pub async fn assume(&self) -> Result<StsCredentials, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("web identity token file {}: {e}", self.token_file.display()))?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("WebIdentityToken", token.trim())
            .finish();
        let what = format!(
            "STS AssumeRoleWithWebIdentity for {} at {}",
            self.role_arn, self.sts_endpoint
        );
        let response = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| format!("{what}: {e}"))?
            .post(&self.sts_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("{what}: {e}"))?;
        let tag = |name: &str| {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let start = text.find(&open)? + open.len();
            let len = text[start..].find(&close)?;
            Some(text[start..start + len].trim().to_owned())
        };
        if !status.is_success() {
            return Err(format!(
                "{what}: {status}: {} {}",
                tag("Code").unwrap_or_default(),
                tag("Message").unwrap_or_default()
            ));
        }
        match (
            tag("AccessKeyId"),
            tag("SecretAccessKey"),
            tag("SessionToken"),
            tag("Expiration"),
        ) {
            (Some(access_key_id), Some(secret_access_key), Some(session_token), Some(exp)) => {
                let expiration = humantime::parse_rfc3339_weak(exp.trim_end_matches('Z'))
                    .map_err(|e| format!("{what}: bad Expiration {exp:?}: {e}"))?;
                Ok(StsCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token,
                    expiration,
                })
            }
            _ => Err(format!("{what}: the answer holds no credentials")),
        }
    }
}

/// [`WebIdentity`] as the S3 client's credentials provider: called when the
/// SDK's identity cache is empty or about to expire.
#[derive(Debug)]
pub struct WebIdentityProvider(pub WebIdentity);

impl aws_credential_types::provider::ProvideCredentials for WebIdentityProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let c =
                self.0.assume().await.map_err(
                    aws_credential_types::provider::error::CredentialsError::provider_error,
                )?;
            Ok(aws_credential_types::Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                Some(c.session_token),
                Some(c.expiration),
                "drhost-web-identity",
            ))
        })
    }
}

/// Sections of an INI file as the AWS CLI writes them: `[section]`,
/// `key = value`, `#` and `;` comments. Nested (indented) sub-keys, used
/// for service-specific settings, are skipped.
fn parse_ini(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    let mut nested = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(format!("line {}: section header without `]`", i + 1));
            };
            sections.push((name.trim().to_owned(), BTreeMap::new()));
            nested = false;
            continue;
        }
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        if indented && nested {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value`", i + 1));
        };
        let Some((_, values)) = sections.last_mut() else {
            return Err(format!(
                "line {}: `{}` before any [section]",
                i + 1,
                key.trim()
            ));
        };
        let value = value.trim();
        nested = value.is_empty();
        if !nested {
            values.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn credentials_file_wins_over_config_and_config_uses_profile_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let creds = write(
            dir.path(),
            "credentials",
            "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n\
             [ops]\naws_access_key_id = AKOPS\naws_secret_access_key = s2\naws_session_token = t\n",
        );
        let config = write(
            dir.path(),
            "config",
            "# comment\n[profile ops]\nregion = eu-west-3\naws_access_key_id = AKFROMCONFIG\n\
             s3 =\n  max_concurrent_requests = 20\n[default]\nregion = us-west-2\n",
        );
        let ops = load_profile("ops", Some(&creds), Some(&config))
            .unwrap()
            .unwrap();
        assert_eq!(ops.region().as_deref(), Some("eu-west-3"));
        assert_eq!(
            ops.credentials().unwrap(),
            ProfileCredentials::Static {
                access_key_id: "AKOPS".into(),
                secret_access_key: "s2".into(),
                session_token: Some("t".into()),
            }
        );
        assert!(!ops.values.contains_key("max_concurrent_requests"));
        let default = load_profile("default", Some(&creds), Some(&config))
            .unwrap()
            .unwrap();
        assert_eq!(default.region().as_deref(), Some("us-west-2"));
        assert!(
            load_profile("nope", Some(&creds), Some(&config))
                .unwrap()
                .is_none()
        );
        // `[ops]` in the config file is not `[profile ops]`.
        let only_config = write(dir.path(), "c2", "[ops]\nregion = x\n");
        assert!(
            load_profile("ops", None, Some(&only_config))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unsupported_mechanisms_say_what_to_write_instead() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "config",
            "[profile sso]\nsso_session = corp\nregion = eu-west-1\n[profile empty]\nregion = x\n",
        );
        let sso = load_profile("sso", None, Some(&config)).unwrap().unwrap();
        let err = sso.credentials().unwrap_err();
        assert!(
            err.contains("sso_session") && err.contains("credential_process"),
            "{err}"
        );
        let empty = load_profile("empty", None, Some(&config)).unwrap().unwrap();
        assert!(empty.credentials().unwrap_err().contains("neither"));
        let bad = write(dir.path(), "bad", "[default\nx = 1\n");
        let err = load_profile("default", Some(&bad), None).unwrap_err();
        assert!(err.contains("bad") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn credential_process_output_is_parsed_and_failures_hide_stdout() {
        let ok = run_credential_process(
            r#"printf '{"Version":1,"AccessKeyId":"AKP","SecretAccessKey":"sp","SessionToken":"tp"}'"#,
        )
        .unwrap();
        assert_eq!(ok.access_key_id, "AKP");
        assert_eq!(ok.session_token.as_deref(), Some("tp"));
        let err = run_credential_process("printf 'SECRET%s' STUFF; exit 3").unwrap_err();
        assert!(
            err.contains("failed") && !err.contains("SECRETSTUFF"),
            "{err}"
        );
        let err = run_credential_process("printf 'SECRET%s' STUFF").unwrap_err();
        assert!(
            err.contains("JSON") && !err.contains("SECRETSTUFF"),
            "{err}"
        );
        let err = run_credential_process(r#"printf '{"Version":1}'"#).unwrap_err();
        assert!(err.contains("AccessKeyId"), "{err}");
    }
}
