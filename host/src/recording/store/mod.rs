//! Object storage for command logs (`[recording] store = "s3"`): the store itself
//! (object_store's S3 client), the uploads that ship every recording there without
//! ever deleting one the store has not confirmed (upload.rs), and reading a log back
//! from the store for `decrypt` and `replay`.
//!
//! The store only ever sees sealed bytes: what is uploaded is the command log file,
//! byte for byte.

mod counters;
mod credentials;
mod spool;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use crate::config::{S3Config, S3Credentials};

pub use spool::day_of;
pub use upload::{LiveUpload, Uploads};

/// An error of the store, named by the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{location}: {message}")]
    Config { location: String, message: String },
    #[error("{what} {url}: {source}")]
    Request {
        what: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    /// Whether the store answered that the object or upload does not exist (as opposed
    /// to being unreachable or refusing).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Request {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    /// Whether the store refused the credentials or the permission: worth stopping
    /// for at start, where a network error is not.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::Request {
                source: object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// One bucket (and prefix) of an S3-compatible store.
#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    parts: Arc<dyn MultipartStore>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The client for `config` (nothing is sent yet).
    pub fn open(config: &S3Config) -> Result<Store, StoreError> {
        let bad = |message: String| StoreError::Config {
            location: config.location(),
            message,
        };
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(120));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| bad(format!("{}: {e}", ca.display())))?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("{}: {e}", ca.display())))?
            {
                options = options.with_root_certificate(cert);
            }
        }
        // The environment fills in what the configuration leaves out (AWS_ENDPOINT_URL,
        // the keys, a web identity token...); the configuration wins.
        let mut builder = AmazonS3Builder::from_env()
            // First: the client options replace any set before (allow_http among them).
            .with_client_options(options)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_allow_http(config.allow_http)
            // Few quick retries per request; the uploads retry on their own, forever,
            // with back-off (upload.rs).
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(e) = &config.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let S3Credentials::File { path, profile } = &config.credentials {
            let file = credentials::FileCredentials::new(path, profile);
            // A file that does not hold the profile is a configuration error now.
            file.read().map_err(bad)?;
            builder = builder.with_credentials(Arc::new(file));
        }
        let s3 = Arc::new(builder.build().map_err(|e| bad(e.to_string()))?);
        Ok(Store {
            objects: Arc::clone(&s3) as Arc<dyn ObjectStore>,
            parts: s3,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        })
    }

    /// A client for `bucket` from the environment alone (`AWS_ENDPOINT_URL`, the keys),
    /// or from `config` when it names that bucket: for the auditor's `decrypt -i s3://`.
    pub fn for_bucket(bucket: &str, config: Option<&S3Config>) -> Result<Store, StoreError> {
        match config {
            Some(c) if c.bucket == bucket => Store::open(c),
            other => {
                let mut c = crate::config::S3Config {
                    bucket: bucket.to_string(),
                    prefix: String::new(),
                    endpoint: None,
                    region: std::env::var("AWS_REGION")
                        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                        .unwrap_or_else(|_| "us-east-1".into()),
                    path_style: false,
                    allow_http: false,
                    credentials: S3Credentials::Standard,
                    ca_file: None,
                    part_size: crate::config::MIN_PART_SIZE,
                    retry_max_delay: Duration::from_secs(1),
                    concurrency: 1,
                };
                if let Some(o) = other {
                    // Another bucket of the same service.
                    c.endpoint = o.endpoint.clone();
                    c.region = o.region.clone();
                    c.path_style = o.path_style;
                    c.allow_http = o.allow_http;
                    c.credentials = o.credentials.clone();
                    c.ca_file = o.ca_file.clone();
                } else if let Ok(e) =
                    std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
                {
                    c.path_style = true;
                    c.allow_http = e.starts_with("http://");
                    c.endpoint = Some(e);
                }
                Store::open(&c)
            }
        }
    }

    /// `PREFIX/YYYY/MM/DD/NAME`: where a recording of a session started on `day`
    /// (`YYYY/MM/DD`) goes.
    pub fn key_for(&self, day: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{day}/{name}")
        } else {
            format!("{}/{day}/{name}", self.prefix)
        }
    }

    /// `s3://bucket/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn request(
        &self,
        what: &'static str,
        key: &str,
    ) -> impl Fn(object_store::Error) -> StoreError + use<> {
        let url = self.url(key);
        move |source| StoreError::Request {
            what,
            url: url.clone(),
            source,
        }
    }

    /// Writes and deletes a small object under the prefix: proves at start that the
    /// credentials are accepted and may write, rather than at the first session.
    pub async fn check(&self) -> Result<(), StoreError> {
        let key = match self.prefix.as_str() {
            "" => ".portcullis-write-check".to_string(),
            p => format!("{p}/.portcullis-write-check"),
        };
        let path = ObjectPath::from(key.as_str());
        self.objects
            .put(
                &path,
                PutPayload::from_static(b"portcullis checks it may write here\n"),
            )
            .await
            .map_err(self.request("cannot write the check object", &key))?;
        // A bucket with object lock may refuse the delete; writing was the point.
        if let Err(e) = self.objects.delete(&path).await {
            tracing::debug!("cannot delete {}: {e}", self.url(&key));
        }
        Ok(())
    }

    /// The object's size.
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        let meta = self
            .objects
            .head(&ObjectPath::from(key))
            .await
            .map_err(self.request("cannot look up", key))?;
        Ok(meta.size)
    }

    /// The object's bytes as they arrive.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<
        futures_util::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
        StoreError,
    > {
        let got = self
            .objects
            .get(&ObjectPath::from(key))
            .await
            .map_err(self.request("cannot read", key))?;
        let about = self.request("cannot read", key);
        Ok(got.into_stream().map(move |r| r.map_err(&about)).boxed())
    }
}

/// `s3://bucket/key` split, if `s` is one.
pub fn parse_url(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// A blocking reader of an object, for the log reader (which reads `std::io::Read`):
/// the bytes are streamed, one chunk at a time, never the whole object.
pub struct ObjectReader {
    runtime: Arc<tokio::runtime::Runtime>,
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
    chunk: bytes::Bytes,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").finish_non_exhaustive()
    }
}

impl ObjectReader {
    pub fn open(
        runtime: Arc<tokio::runtime::Runtime>,
        store: &Store,
        key: &str,
    ) -> Result<ObjectReader, StoreError> {
        let stream = runtime.block_on(store.stream(key))?;
        Ok(ObjectReader {
            runtime,
            stream,
            chunk: bytes::Bytes::new(),
        })
    }
}

impl std::io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = buf.len().min(self.chunk.len());
        let head = self.chunk.split_to(n);
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(&head);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_key() {
        assert_eq!(
            parse_url("s3://audit/logs/2026/12/01/abc-0.sshlog"),
            Some(("audit", "logs/2026/12/01/abc-0.sshlog"))
        );
        assert_eq!(parse_url("s3://audit/"), None);
        assert_eq!(parse_url("s3://audit"), None);
        assert_eq!(parse_url("/var/log/x.sshlog"), None);
    }
}
