//! `[recording] store` and `[recording.s3]`: where finished command logs go. The local
//! directory is the default; with `store = "s3"` every log is spooled there and
//! uploaded to S3-compatible object storage (docs/recording-store.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// S3's smallest part but the last; a smaller `part_size` would be refused by the store
/// at the end of the upload, hours after the session started.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum StoreKind {
    #[default]
    Local,
    S3,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    bucket: String,
    /// Prepended to every object name (`PREFIX/YYYY/MM/DD/<session>-<channel>.sshlog`).
    #[serde(default)]
    prefix: String,
    /// The service's URL, for anything but AWS itself (MinIO, Ceph, R2, ...).
    endpoint: Option<String>,
    region: Option<String>,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`; the
    /// default when an endpoint is given, as most S3-compatible servers want.
    path_style: Option<bool>,
    /// `http://` to an endpoint that is not on this machine (the logs are sealed, but
    /// the requests' metadata are not).
    #[serde(default)]
    allow_http: bool,
    /// An AWS shared credentials file (default: `AWS_SHARED_CREDENTIALS_FILE`, else
    /// `~/.aws/credentials` when it exists), read again when it changes.
    credentials_file: Option<PathBuf>,
    /// The profile in the credentials file (default: `AWS_PROFILE`, else `default`).
    profile: Option<String>,
    /// CA certificates (PEM) to trust for the endpoint, besides the system's.
    ca_file: Option<PathBuf>,
    /// The size of an uploaded part, in MiB (5 to 5120).
    part_size_mib: Option<u64>,
    /// The longest wait between two attempts of a failing upload.
    #[serde(default, with = "humantime_serde")]
    retry_max_delay: Option<Duration>,
    /// Parts uploaded at once, over every recording (each holds one part in memory).
    concurrency: Option<usize>,
}

/// Where the store's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// An AWS shared credentials file and a profile in it.
    File { path: PathBuf, profile: String },
    /// The environment (`AWS_ACCESS_KEY_ID`, ...), then web identity, the container's
    /// or the instance's metadata service.
    Standard,
}

/// The checked `[recording.s3]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub allow_http: bool,
    pub credentials: S3Credentials,
    pub ca_file: Option<PathBuf>,
    pub part_size: u64,
    pub retry_max_delay: Duration,
    pub concurrency: usize,
}

impl S3Config {
    /// `s3://bucket/prefix`, for messages.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The shared credentials file named by the environment, or the usual one when it
/// exists.
fn default_credentials_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".aws/credentials");
    p.exists().then_some(p)
}

/// Validates the store settings; `None` for the local store.
pub(super) fn validate(
    kind: StoreKind,
    raw: Option<RawS3>,
    abs: impl Fn(&Path) -> PathBuf,
) -> Result<Option<S3Config>, (&'static str, String)> {
    let raw = match (kind, raw) {
        (StoreKind::Local, None) => return Ok(None),
        (StoreKind::Local, Some(_)) => {
            return Err((
                "recording.s3",
                "is set but recording.store is \"local\"; set store = \"s3\" to use it".into(),
            ));
        }
        (StoreKind::S3, None) => {
            return Err((
                "recording.store",
                "is \"s3\" but there is no [recording.s3] section with the bucket".into(),
            ));
        }
        (StoreKind::S3, Some(raw)) => raw,
    };
    // S3's rules for bucket names, which every compatible server accepts.
    let b = &raw.bucket;
    if b.len() < 3
        || b.len() > 63
        || !b
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        || b.starts_with(['-', '.'])
        || b.ends_with(['-', '.'])
    {
        return Err((
            "recording.s3.bucket",
            format!("{b:?}: 3 to 63 lower-case letters, digits, '-' or '.'"),
        ));
    }
    let prefix = raw.prefix.trim_matches('/').to_string();
    if prefix
        .split('/')
        .any(|s| (s.is_empty() && !prefix.is_empty()) || s == "." || s == "..")
        || prefix.chars().any(|c| c.is_control())
    {
        return Err((
            "recording.s3.prefix",
            format!(
                "{:?}: no empty, '.' or '..' segments, no control characters",
                raw.prefix
            ),
        ));
    }
    if let Some(e) = &raw.endpoint {
        let url =
            url::Url::parse(e).map_err(|err| ("recording.s3.endpoint", format!("{e:?}: {err}")))?;
        match url.scheme() {
            "https" => {}
            "http" if raw.allow_http || super::oidc::is_loopback(&url) => {}
            "http" => {
                return Err((
                    "recording.s3.endpoint",
                    format!(
                        "{e:?}: http:// is accepted only on a loopback address, or with allow_http = true"
                    ),
                ));
            }
            other => {
                return Err((
                    "recording.s3.endpoint",
                    format!("{e:?}: the scheme must be https or http, not {other}"),
                ));
            }
        }
    }
    let allow_http = raw.allow_http
        || raw
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
    let part_size = raw.part_size_mib.unwrap_or(16) << 20;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        return Err((
            "recording.s3.part_size_mib",
            "must be between 5 (S3's smallest part) and 5120".into(),
        ));
    }
    let retry_max_delay = raw.retry_max_delay.unwrap_or(Duration::from_secs(300));
    if retry_max_delay < Duration::from_secs(1) || retry_max_delay > Duration::from_secs(3600) {
        return Err((
            "recording.s3.retry_max_delay",
            "must be between 1s and 1h".into(),
        ));
    }
    let concurrency = raw.concurrency.unwrap_or(4);
    if !(1..=64).contains(&concurrency) {
        return Err((
            "recording.s3.concurrency",
            "must be between 1 and 64".into(),
        ));
    }
    let credentials = match raw.credentials_file.as_deref().map(&abs) {
        Some(path) => {
            if !path.is_file() {
                return Err((
                    "recording.s3.credentials_file",
                    format!("{}: no such file", path.display()),
                ));
            }
            Some(path)
        }
        // The environment's keys come first, as in the AWS tools.
        None if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() => None,
        None => default_credentials_file(),
    };
    let credentials = match credentials {
        Some(path) => S3Credentials::File {
            path,
            profile: raw
                .profile
                .or_else(|| std::env::var("AWS_PROFILE").ok())
                .unwrap_or_else(|| "default".into()),
        },
        None => S3Credentials::Standard,
    };
    Ok(Some(S3Config {
        path_style: raw.path_style.unwrap_or(raw.endpoint.is_some()),
        bucket: raw.bucket,
        prefix,
        endpoint: raw.endpoint,
        region: raw
            .region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into()),
        allow_http,
        credentials,
        ca_file: raw.ca_file.as_deref().map(abs),
        part_size,
        retry_max_delay,
        concurrency,
    }))
}
