//! Shipping command logs to the store, with nothing lost on the way.
//!
//! A recorded channel's log is written to its local spool file first, exactly as with
//! the local store (every block before the data it holds is forwarded). Each full part
//! of the spool (`part_size`, at least S3's 5 MiB) is uploaded while the session runs,
//! as part 2, 3, ... of a multipart upload, so that a replica lost with its disk loses
//! at most what was not yet a full part. Part 1 holds the log's header, which is only
//! written when the log is finished: it is uploaded then, with the last part, and the
//! upload completed. The object is then checked (its size, and the SHA-256 of its bytes
//! read back against the local file's) before the local file is removed.
//!
//! The upload's state (object name, upload id, the parts' ETags) is kept beside the log
//! in `NAME.upload` (spool.rs), written after every part: uploads that were pending when the
//! proxy stopped, or died, resume at the next start, from the part they had reached.
//! Every failure is retried with a doubling, jittered wait up to `retry_max_delay`,
//! forever; the session never waits for the store (the writer only stores a length).
//! A recording is removed from the disk only after the store has it, checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::PutPayload;
use object_store::multipart::PartId;
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::counters::Counters;
use super::spool::{Job, Sidecar, day_of, name_of, read_range, sha256_of, sidecar_path};
use super::{Store, StoreError};
use crate::config::S3Config;
use crate::recording::cmdlog::{self, HEADER_RESERVE, SpoolLength};

/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Checks that fail more often than this in one run leave the recording on the disk
/// until the next start (a store that keeps returning other bytes is not retried
/// forever).
const MAX_VERIFY_FAILURES: u32 = 3;

/// Why an attempt at a recording stopped short of the end.
enum Stop {
    /// The store lost the upload (or returned other bytes): start it over.
    Restart(String),
    /// The recording stays on the disk until the next start.
    Keep(String),
}

/// The uploads of one proxy.
#[derive(Debug)]
pub struct Uploads {
    store: Store,
    location: String,
    part_size: u64,
    retry_max: Duration,
    /// Parts in flight (each holds one part in memory).
    slots: Semaphore,
    counters: Counters,
    /// Woken whenever a recording is done with (uploaded or kept).
    settled: Notify,
}

/// A recording being written and uploaded as it grows.
#[derive(Debug)]
pub struct LiveUpload {
    spooled: Arc<SpoolLength>,
    done: oneshot::Sender<Option<PathBuf>>,
    url: String,
}

impl LiveUpload {
    /// What the writer reports its length to.
    pub fn spool_length(&self) -> Arc<SpoolLength> {
        Arc::clone(&self.spooled)
    }

    /// The log was finished at `path` (or could not be: `None`, and the upload waits for
    /// the next start's recovery). Returns the object's `s3://` URL.
    pub fn finished(self, path: Option<PathBuf>) -> String {
        let _ = self.done.send(path);
        self.url
    }
}

impl Uploads {
    /// Opens the store and checks that it takes writes with these credentials: a
    /// refusal (credentials, permission, no such bucket) stops the proxy now; a store
    /// that cannot be reached is only logged, and the uploads wait for it.
    pub async fn start(config: &S3Config) -> Result<Arc<Uploads>, StoreError> {
        let store = Store::open(config)?;
        match tokio::time::timeout(Duration::from_secs(30), store.check()).await {
            Ok(Ok(())) => {
                tracing::info!(store = %config.location(), "command logs go to object storage")
            }
            Ok(Err(e)) if e.is_refusal() => return Err(e),
            Ok(Err(e)) => tracing::error!(
                "object storage is not reachable now; recordings stay on the disk until it is: {e}"
            ),
            Err(_) => tracing::error!(
                store = %config.location(),
                "object storage did not answer within 30 s; recordings stay on the disk until it does"
            ),
        }
        Ok(Arc::new(Uploads {
            store,
            location: config.location(),
            part_size: config.part_size,
            retry_max: config.retry_max_delay,
            slots: Semaphore::new(config.concurrency),
            counters: Counters::default(),
            settled: Notify::new(),
        }))
    }

    /// The store the logs go to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bucket the logs go to.
    pub fn bucket(&self) -> &str {
        &self.store.bucket
    }

    /// Starts shipping the log that `writer` writes, for a session started on `day`
    /// (`YYYY/MM/DD`). The spool file is opened here, so that the upload reads the same
    /// file when it is renamed to the log's final name.
    pub fn begin(
        self: &Arc<Self>,
        writer: &mut cmdlog::Writer,
        day: &str,
    ) -> std::io::Result<LiveUpload> {
        let spool = std::fs::File::open(writer.spool_path())?;
        let job = Job {
            path: writer.path().to_path_buf(),
            state: Sidecar {
                key: self.store.key_for(day, &name_of(writer.path())),
                part_size: self.part_size,
                upload_id: None,
                parts: Vec::new(),
            },
        };
        job.save()?;
        let spooled = Arc::new(SpoolLength {
            len: AtomicU64::new(0),
            every: self.part_size,
            grew: Notify::new(),
        });
        writer.watch(Arc::clone(&spooled));
        let (done, finished) = oneshot::channel();
        let url = self.store.url(&job.state.key);
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(Arc::clone(self).live(job, spool, Arc::clone(&spooled), finished));
        Ok(LiveUpload { spooled, done, url })
    }

    /// Ships the finished logs left in `dir` by a previous run (pending uploads, logs a
    /// killed proxy left and the recovery finished, logs of a local store before):
    /// resumed where their upload stood. Returns how many.
    pub fn resume_all(self: &Arc<Self>, dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_none_or(|e| e != "sshlog") || !path.is_file() {
                continue;
            }
            let state = std::fs::read(sidecar_path(&path))
                .ok()
                .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok());
            let state = match state {
                Some(s) => s,
                None => {
                    // No upload begun (or its state unreadable): named by the day the
                    // log's header says it started.
                    let started = std::fs::File::open(&path)
                        .ok()
                        .and_then(|f| cmdlog::read_metadata(std::io::BufReader::new(f)).ok())
                        .map(|(m, _)| m.started_at)
                        .unwrap_or(0);
                    Sidecar {
                        key: self.store.key_for(&day_of(started), &name_of(&path)),
                        part_size: self.part_size,
                        upload_id: None,
                        parts: Vec::new(),
                    }
                }
            };
            tracing::info!(log = %path.display(), object = %self.store.url(&state.key), "resuming the upload of a command log");
            self.counters.pending.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(Arc::clone(self).settle(Job { path, state }));
            n += 1;
        }
        n
    }

    /// Waits up to `within` for the pending uploads; returns how many are left (they
    /// resume at the next start).
    pub async fn drain(&self, within: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let settled = self.settled.notified();
            let left = self.counters.pending.load(Ordering::Relaxed);
            if left <= 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.counters.pending.load(Ordering::Relaxed);
            }
        }
    }

    /// The upload of a log being written: full parts as they come, the rest at the end.
    async fn live(
        self: Arc<Self>,
        mut job: Job,
        spool: std::fs::File,
        spooled: Arc<SpoolLength>,
        mut finished: oneshot::Receiver<Option<PathBuf>>,
    ) {
        let spool = Arc::new(spool);
        // Part 1 (index 0) holds the header: it is uploaded at the end.
        let mut next: u64 = 1;
        let outcome = loop {
            let wake = spooled.grew.notified();
            let len = spooled.len.load(Ordering::Acquire);
            if len >= (next + 1) * self.part_size && next < MAX_PARTS - 1 {
                match self.upload_part(&mut job, &spool, next, len).await {
                    Ok(()) => next += 1,
                    Err(Stop::Restart(why)) => {
                        self.forget_upload(&mut job, &why).await;
                        next = 1;
                    }
                    Err(Stop::Keep(why)) => {
                        tracing::error!(log = %job.path.display(), "the upload stops until the log is finished: {why}");
                        break finished.await.ok().flatten();
                    }
                }
                continue;
            }
            tokio::select! {
                () = wake => {}
                r = &mut finished => break r.ok().flatten(),
            }
        };
        match outcome {
            Some(_) => self.settle(job).await,
            None => {
                tracing::warn!(log = %job.path.display(), "the command log was not finished; its upload resumes when the proxy starts again");
                self.counters.pending.fetch_sub(1, Ordering::Relaxed);
                self.settled.notify_waiters();
            }
        }
    }

    /// Finishes a recording's upload, checks it and removes the local file; or keeps the
    /// file and says why.
    async fn settle(self: Arc<Self>, mut job: Job) {
        let mut verify_failures = 0;
        let result = loop {
            match self.complete(&mut job).await {
                Ok(()) => break Ok(()),
                Err(Stop::Restart(why)) => {
                    if why.starts_with("check:") {
                        verify_failures += 1;
                        self.counters
                            .verify_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if verify_failures >= MAX_VERIFY_FAILURES {
                            break Err(why);
                        }
                    }
                    self.forget_upload(&mut job, &why).await;
                }
                Err(Stop::Keep(why)) => break Err(why),
            }
        };
        match result {
            Ok(()) => {
                self.counters.uploaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(log = %job.path.display(), object = %self.store.url(&job.state.key), "command log uploaded and checked; local copy removed");
            }
            Err(why) => {
                self.counters.kept.fetch_add(1, Ordering::Relaxed);
                tracing::error!(log = %job.path.display(), object = %self.store.url(&job.state.key), "command log NOT uploaded; it stays on the disk and is tried again at the next start: {why}");
            }
        }
        self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        self.settled.notify_waiters();
    }

    /// Starts the upload over: the store no longer has it, or returned other bytes.
    async fn forget_upload(&self, job: &mut Job, why: &str) {
        tracing::warn!(log = %job.path.display(), "starting the upload over: {why}");
        if let Some(id) = job.state.upload_id.take() {
            let path = ObjectPath::from(job.state.key.as_str());
            let _ = self.store.parts.abort_multipart(&path, &id).await;
        }
        job.state.parts.clear();
        job.state.part_size = self.part_size;
        if let Err(e) = job.save() {
            tracing::error!(log = %job.path.display(), "cannot save the upload's state: {e}");
        }
    }

    /// Uploads part `index` of the file (bytes `index * part_size ..`, up to `len`).
    async fn upload_part(
        &self,
        job: &mut Job,
        file: &Arc<std::fs::File>,
        index: u64,
        len: u64,
    ) -> Result<(), Stop> {
        let path = ObjectPath::from(job.state.key.as_str());
        if job.state.upload_id.is_none() {
            let id = self
                .retrying(job, "start the upload of", false, || async {
                    self.store.parts.create_multipart(&path).await.map_err(
                        self.store
                            .request("cannot start the upload of", &job.state.key),
                    )
                })
                .await?;
            job.state.upload_id = Some(id);
            job.save()
                .map_err(|e| Stop::Keep(format!("cannot save the upload's state: {e}")))?;
        }
        let id = job.state.upload_id.clone().unwrap_or_default();
        let start = index * job.state.part_size;
        let size = (len.saturating_sub(start)).min(job.state.part_size);
        let etag = self
            .retrying(job, "upload a part of", true, || async {
                let _slot = self.slots.acquire().await;
                let bytes =
                    read_range(file, start, size)
                        .await
                        .map_err(|e| StoreError::Config {
                            location: "the local log".into(),
                            message: e.to_string(),
                        })?;
                self.store
                    .parts
                    .put_part(&path, &id, index as usize, PutPayload::from(bytes))
                    .await
                    .map_err(
                        self.store
                            .request("cannot upload a part of", &job.state.key),
                    )
            })
            .await?;
        let slot = index as usize;
        if job.state.parts.len() <= slot {
            job.state.parts.resize(slot + 1, None);
        }
        if let Some(p) = job.state.parts.get_mut(slot) {
            *p = Some(etag.content_id);
        }
        job.save()
            .map_err(|e| Stop::Keep(format!("cannot save the upload's state: {e}")))?;
        self.counters.parts.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads what the finished log still needs, completes the upload and checks the
    /// object; then removes the local file and its state.
    async fn complete(&self, job: &mut Job) -> Result<(), Stop> {
        let file = std::fs::File::open(&job.path)
            .map_err(|e| Stop::Keep(format!("{}: {e}", job.path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| Stop::Keep(format!("{}: {e}", job.path.display())))?
            .len();
        let file = Arc::new(file);
        // Parts cut from the spool match the log only if its header was written in
        // place, into the room left for it (see the writer), with the same part size.
        let head = read_range(&file, 0, 4.min(len))
            .await
            .map_err(|e| Stop::Keep(format!("{}: {e}", job.path.display())))?;
        let in_place = head.as_ref() == (HEADER_RESERVE as u32 - 4).to_be_bytes();
        if job.state.upload_id.is_some() && (!in_place || job.state.part_size != self.part_size) {
            return Err(Stop::Restart(
                "the parts uploaded no longer match the finished log".into(),
            ));
        }
        let count = len.div_ceil(self.part_size).max(1);
        if count > MAX_PARTS {
            return Err(Stop::Keep(format!(
                "{len} bytes need more than S3's {MAX_PARTS} parts of {} MiB; raise recording.s3.part_size_mib",
                self.part_size >> 20
            )));
        }
        let path = ObjectPath::from(job.state.key.as_str());
        if count == 1 && job.state.upload_id.is_none() {
            let bytes = read_range(&file, 0, len)
                .await
                .map_err(|e| Stop::Keep(format!("{}: {e}", job.path.display())))?;
            self.retrying(job, "upload", false, || async {
                let _slot = self.slots.acquire().await;
                self.store
                    .objects
                    .put(&path, PutPayload::from(bytes.clone()))
                    .await
                    .map_err(self.store.request("cannot upload", &job.state.key))
            })
            .await?;
            self.counters.parts.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            for index in 0..count {
                let have = job
                    .state
                    .parts
                    .get(index as usize)
                    .is_some_and(Option::is_some);
                // The first part holds the header, written last; the last may have
                // grown since it was cut.
                if index == 0 || index == count - 1 || !have {
                    self.upload_part(job, &file, index, len).await?;
                }
            }
            let id = job.state.upload_id.clone().unwrap_or_default();
            let parts: Vec<PartId> = job
                .state
                .parts
                .iter()
                .take(count as usize)
                .map(|p| PartId {
                    content_id: p.clone().unwrap_or_default(),
                })
                .collect();
            self.retrying(job, "complete the upload of", true, || async {
                self.store
                    .parts
                    .complete_multipart(&path, &id, parts.clone())
                    .await
                    .map_err(
                        self.store
                            .request("cannot complete the upload of", &job.state.key),
                    )
            })
            .await?;
        }
        self.check(job, &file, len).await?;
        for p in [job.path.clone(), sidecar_path(&job.path)] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {}: {e}", p.display());
            }
        }
        Ok(())
    }

    /// The object has the log's size and the SHA-256 of its bytes.
    async fn check(&self, job: &Job, file: &Arc<std::fs::File>, len: u64) -> Result<(), Stop> {
        let key = job.state.key.as_str();
        let size = self
            .retrying(job, "look up", false, || self.store.size(key))
            .await?;
        if size != len {
            return Err(Stop::Restart(format!(
                "check: the stored object has {size} bytes, the log {len}"
            )));
        }
        let local = {
            let file = Arc::clone(file);
            tokio::task::spawn_blocking(move || sha256_of(&file, len))
                .await
                .map_err(|e| Stop::Keep(e.to_string()))?
                .map_err(|e| Stop::Keep(format!("{}: {e}", job.path.display())))?
        };
        let stored = self
            .retrying(job, "read back", false, || async {
                use futures_util::StreamExt;
                let mut stream = self.store.stream(key).await?;
                let mut h = Sha256::new();
                while let Some(chunk) = stream.next().await {
                    h.update(chunk?);
                }
                Ok(h.finalize())
            })
            .await?;
        if stored != local {
            return Err(Stop::Restart(
                "check: the stored object's SHA-256 differs from the log's".into(),
            ));
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, waiting longer after each failure (doubling from
    /// 1 s, with jitter, up to `retry_max_delay`). A store that no longer knows the
    /// upload (`restartable`) starts it over instead.
    async fn retrying<T, F, Fut>(
        &self,
        job: &Job,
        what: &str,
        restartable: bool,
        mut op: F,
    ) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_secs(1).min(self.retry_max);
        let mut failures: u32 = 0;
        loop {
            match op().await {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(log = %job.name(), failures, "could {what} the command log again");
                    }
                    return Ok(v);
                }
                Err(e) if restartable && e.is_not_found() => {
                    return Err(Stop::Restart(e.to_string()));
                }
                Err(e) => {
                    failures += 1;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let wait = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                    // Every failure at first, then fewer: an outage of hours should
                    // not drown the log.
                    if failures <= 3 || failures.is_power_of_two() {
                        tracing::warn!(
                            log = %job.name(),
                            failures,
                            "cannot {what} the command log (kept on the disk; trying again in {:.1} s): {e}",
                            wait.as_secs_f64()
                        );
                    }
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(self.retry_max);
                }
            }
        }
    }

    /// The uploads' metrics, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.counters.render(&self.location, out);
    }
}
