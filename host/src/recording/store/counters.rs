//! The uploads' counters, served as Prometheus metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What the uploads have done, since the start.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) uploaded: AtomicU64,
    pub(super) kept: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) verify_failures: AtomicU64,
    pub(super) parts: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) pending: AtomicI64,
}

impl Counters {
    /// The counters in the Prometheus text format, labelled with the store.
    pub(super) fn render(&self, store: &str, out: &mut String) {
        use std::fmt::Write as _;
        let c = self;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP portcullis_recording_uploads_total Command logs shipped to object storage, by outcome \
             (uploaded: checked and removed from the disk; kept: left on the disk until the next start).\n\
             # TYPE portcullis_recording_uploads_total counter\n\
             portcullis_recording_uploads_total{{store=\"{store}\",outcome=\"uploaded\"}} {}\n\
             portcullis_recording_uploads_total{{store=\"{store}\",outcome=\"kept\"}} {}\n\
             # HELP portcullis_recording_uploads_pending Command logs on the disk waiting for object storage.\n\
             # TYPE portcullis_recording_uploads_pending gauge\n\
             portcullis_recording_uploads_pending{{store=\"{store}\"}} {}\n\
             # HELP portcullis_recording_upload_errors_total Failed requests to object storage (each retried).\n\
             # TYPE portcullis_recording_upload_errors_total counter\n\
             portcullis_recording_upload_errors_total{{store=\"{store}\"}} {}\n\
             # HELP portcullis_recording_upload_check_failures_total Uploaded objects whose size or SHA-256 did not match the log.\n\
             # TYPE portcullis_recording_upload_check_failures_total counter\n\
             portcullis_recording_upload_check_failures_total{{store=\"{store}\"}} {}\n\
             # HELP portcullis_recording_upload_parts_total Parts (and whole small logs) uploaded.\n\
             # TYPE portcullis_recording_upload_parts_total counter\n\
             portcullis_recording_upload_parts_total{{store=\"{store}\"}} {}\n\
             # HELP portcullis_recording_upload_bytes_total Bytes of command logs uploaded.\n\
             # TYPE portcullis_recording_upload_bytes_total counter\n\
             portcullis_recording_upload_bytes_total{{store=\"{store}\"}} {}",
            get(&c.uploaded),
            get(&c.kept),
            c.pending.load(Ordering::Relaxed).max(0),
            get(&c.errors),
            get(&c.verify_failures),
            get(&c.parts),
            get(&c.bytes),
        );
    }
}
