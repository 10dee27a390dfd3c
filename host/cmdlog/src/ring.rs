//! The spool of a long log (Linux): its newest blocks in a small file shared with the
//! kernel, written to the log in large aligned pieces that bypass the page cache.
//!
//! Why: a block written with `write` costs the kernel a page-cache page per 4 KiB
//! (allocated, charged, dirtied, written back, reclaimed), and blocks of 32 KiB plus a
//! frame land unaligned, so ext4 cannot use large folios for them. For a bulk transfer
//! that was about 0.5 s of the proxy's CPU per GiB logged, more than the seal itself
//! (docs/benchmarks.md, session 16). Direct writes of whole aligned halves cost a
//! fraction of that and leave no dirty pages behind.
//!
//! What does not change: a block is in the kernel before [`super::Writer::packet`]
//! returns, so before the data it records is forwarded. It is sealed in (or copied
//! into) a `MAP_SHARED` mapping of `NAME.partial.ring`, whose pages belong to the
//! kernel's page cache: a proxy killed at any point loses none of it, and [`apply`]
//! (run by recovery) copies what the ring holds and the log does not yet into the log.
//!
//! `NAME.partial.ring`: one 4 KiB header page, then two halves of [`HALF`] bytes. The
//! header: `PCRING01`, then little-endian u64s: the half size, `base` (the log's offset
//! of the ring's stream position 0, 4 KiB-aligned), `flushed` (stream bytes the log
//! file holds) and `written` (stream bytes in the ring, whole blocks only). Stream
//! position `s` is at `4096 + s % (2 * HALF)` in the ring file. A half is written to the
//! log (at `base + k * HALF`) once it is full; the other half fills meanwhile, and a
//! half is reused only after its write has completed.
//!
//! A full disk loses nothing either: the log's space for everything the ring may hold
//! is reserved (`fallocate`, keeping the size) before the ring takes it, so the disk
//! fills at a reservation, which ends the channel, while what the ring holds still fits
//! in the log. Finishing truncates the log to its length, which frees what is left.
//!
//! The project's only `unsafe` code is here: the session writes blocks into the mapping
//! while the write thread reads the other half from it, which Rust's references cannot
//! express, and `fallocate` has no safe binding in std. Each block says what keeps it
//! sound; the invariant is that a half is never written while its write is in flight.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use memmap2::MmapRaw;

/// The size of each of the ring's two halves, and of each direct write.
pub(super) const HALF: u64 = 512 * 1024;
/// The header page; also the alignment of direct writes (offsets, lengths, memory).
const PAGE: u64 = 4096;
const MAGIC: &[u8; 8] = b"PCRING01";
const AT_HALF: usize = 8;
const AT_BASE: usize = 16;
const AT_FLUSHED: usize = 24;
const AT_WRITTEN: usize = 32;

/// `NAME.partial.ring` beside the log being written as `NAME.partial`.
pub(super) fn ring_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ring", path.display()))
}

/// A half to write: which one, and where in the log.
struct Job {
    half: u64,
    offset: u64,
}

/// The ring of a log being written.
pub(super) struct Ring {
    path: PathBuf,
    map: Arc<MmapRaw>,
    base: u64,
    /// The log's length when the ring started (its bytes from `base` are in both).
    started: u64,
    /// The log, for reserving its space.
    log: File,
    /// Where the log's reserved space ends (`u64::MAX`: the file system cannot reserve).
    reserved: u64,
    written: u64,
    flushed: u64,
    in_flight: bool,
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("path", &self.path)
            .field("base", &self.base)
            .field("written", &self.written)
            .field("flushed", &self.flushed)
            .finish()
    }
}

impl Ring {
    /// Starts the ring of the log `partial` (`blocks`, open for reading and writing),
    /// whose first `len` bytes are written. The ring begins at the last 4 KiB boundary
    /// at or before `len`, with the bytes after it read back from the log. On error
    /// nothing is left behind and the log goes on as it was.
    pub(super) fn start(partial: &Path, blocks: &File, len: u64) -> io::Result<Ring> {
        let path = ring_path(partial);
        let ring = Self::open(&path, partial, blocks, len);
        if ring.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        ring
    }

    fn open(path: &Path, partial: &Path, blocks: &File, len: u64) -> io::Result<Ring> {
        // Opened first: a file system without direct I/O refuses it here.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(partial)?;
        let buffered = blocks.try_clone()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        // Written out now, so that the disk space is reserved and storing into the
        // mapping never needs a block the disk no longer has (that would be a SIGBUS,
        // not an error); a full disk fails here instead.
        let size = PAGE + 2 * HALF;
        file.write_all_at(&vec![0; size as usize], 0)?;
        let map = Arc::new(MmapRaw::map_raw(&file)?);
        if map.len() as u64 != size {
            return Err(io::Error::other(
                "the ring file changed size while being mapped",
            ));
        }
        let base = len / PAGE * PAGE;
        let mut head = vec![0; (len - base) as usize];
        blocks.read_exact_at(&mut head, base)?;
        let (jobs, job_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::sync_channel(1);
        let mut ring = Ring {
            path: path.to_path_buf(),
            map: Arc::clone(&map),
            base,
            started: len,
            log: blocks.try_clone()?,
            reserved: len,
            written: 0,
            flushed: 0,
            in_flight: false,
            jobs: Some(jobs),
            done,
            thread: None,
        };
        ring.reserve(base + 2 * HALF)?;
        ring.copy_in(&head);
        ring.written = head.len() as u64;
        ring.put(AT_HALF, HALF);
        ring.put(AT_BASE, base);
        ring.put(AT_FLUSHED, 0);
        ring.put(AT_WRITTEN, ring.written);
        // The magic last: a ring killed before this is ignored, and the log has it all.
        // SAFETY: the header page is inside the mapping and only this thread writes it.
        unsafe { std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), map.as_mut_ptr(), MAGIC.len()) };
        ring.thread = Some(
            std::thread::Builder::new()
                .name("cmdlog-ring".into())
                .spawn(move || write_halves(&map, Some(&direct), &buffered, &job_rx, &done_tx))?,
        );
        Ok(ring)
    }

    /// Where the log file's bytes written so far end: a reader of the file finds them.
    pub(super) fn durable(&self) -> u64 {
        (self.base + self.flushed).max(self.started)
    }

    /// Appends a whole block. `Ok(false)` when it is larger than a half: the caller
    /// drains the ring and writes it another way.
    pub(super) fn append(&mut self, block: &[u8]) -> io::Result<bool> {
        let len = block.len() as u64;
        if len > HALF {
            return Ok(false);
        }
        self.make_room(len)?;
        self.copy_in(block);
        self.commit(len)?;
        Ok(true)
    }

    /// The room for a block of `len` bytes, to be built in place and then
    /// [`Ring::commit`]ted; `None` when it would wrap at the ring's end or is larger
    /// than a half (the caller builds it elsewhere and [`Ring::append`]s it).
    pub(super) fn slot(&mut self, len: usize) -> io::Result<Option<&mut [u8]>> {
        let at = self.written % (2 * HALF);
        if len as u64 > HALF || at + len as u64 > 2 * HALF {
            return Ok(None);
        }
        self.make_room(len as u64)?;
        // SAFETY: inside the data area (checked above); `make_room` waited until no
        // write in flight covers it, and the returned borrow of `self` keeps the session
        // from starting one until the block is committed.
        Ok(Some(unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add((PAGE + at) as usize), len)
        }))
    }

    /// Counts the `len` bytes after `written` as a block in the ring (built by
    /// [`Ring::slot`] or copied by [`Ring::append`]), and starts a half's write if one
    /// is full.
    pub(super) fn commit(&mut self, len: u64) -> io::Result<()> {
        self.written += len;
        self.put(AT_WRITTEN, self.written);
        self.pump()
    }

    /// Makes room for `len` bytes (at most a half): at most one half is unwritten
    /// besides the one being filled, so waiting for the write in flight (and starting
    /// the next) always makes room.
    fn make_room(&mut self, len: u64) -> io::Result<()> {
        while self.written + len - self.flushed > 2 * HALF {
            self.pump()?;
            if self.written + len - self.flushed > 2 * HALF {
                self.wait()?;
            }
        }
        Ok(())
    }

    /// Collects a finished write, if any, and starts the next full half's.
    fn pump(&mut self) -> io::Result<()> {
        if self.in_flight {
            match self.done.try_recv() {
                Ok(r) => self.completed(r)?,
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
            }
        }
        if self.written - self.flushed >= HALF {
            let job = Job {
                half: (self.flushed / HALF) % 2,
                offset: self.base + self.flushed,
            };
            self.jobs
                .as_ref()
                .ok_or_else(gone)?
                .send(job)
                .map_err(|_| gone())?;
            self.in_flight = true;
        }
        Ok(())
    }

    /// Waits for the write in flight, if any.
    fn wait(&mut self) -> io::Result<()> {
        if self.in_flight {
            let r = self.done.recv().map_err(|_| gone())?;
            self.completed(r)?;
        }
        Ok(())
    }

    fn completed(&mut self, r: io::Result<()>) -> io::Result<()> {
        self.in_flight = false;
        r?;
        self.flushed += HALF;
        self.put(AT_FLUSHED, self.flushed);
        // Room for the half that will fill next. On a full disk this fails, ending the
        // channel, while everything written so far still has its place.
        self.reserve(self.base + self.flushed + 2 * HALF)
    }

    /// Reserves the log's space up to `end`, keeping its size.
    fn reserve(&mut self, end: u64) -> io::Result<()> {
        if end <= self.reserved {
            return Ok(());
        }
        let (Ok(from), Ok(len)) = (
            libc::off_t::try_from(self.reserved),
            libc::off_t::try_from(end - self.reserved),
        ) else {
            return Err(io::Error::other("the command log is too long to reserve"));
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.log);
        // SAFETY: a system call on a descriptor the ring owns; no memory is passed.
        if unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, from, len) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                // No reservations on this file system: a full disk then leaves the
                // ring's last blocks in the ring file, for recovery to apply.
                self.reserved = u64::MAX;
                return Ok(());
            }
            return Err(e);
        }
        self.reserved = end;
        Ok(())
    }

    /// Writes what the ring holds and the log not yet into the log through `blocks`
    /// (the page cache), so that the log is whole; returns where it ends. The ring file
    /// stays until the caller has made the log durable and removes it ([`Ring::remove`]).
    pub(super) fn drain(&mut self, blocks: &File) -> io::Result<u64> {
        self.wait()?;
        write_pieces(
            blocks,
            self.slices(self.flushed, self.written),
            self.base + self.flushed,
        )?;
        self.flushed = self.written;
        self.put(AT_FLUSHED, self.flushed);
        Ok(self.base + self.written)
    }

    /// Waits for the write in flight and asks the kernel to write the ring file out.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.wait()?;
        self.map.flush()
    }

    /// Stops the ring and removes its file: after [`Ring::drain`] and a sync of the log.
    pub(super) fn remove(mut self) -> io::Result<()> {
        self.stop();
        std::fs::remove_file(&self.path)
    }

    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Copies `bytes` in at stream position `written` (wrapping at the ring's end).
    fn copy_in(&mut self, bytes: &[u8]) {
        let ring = 2 * HALF;
        let at = self.written % ring;
        let first = bytes.len().min((ring - at) as usize);
        let (a, b) = bytes.split_at(first);
        // SAFETY: both ranges are inside the data area of the mapping, and the write
        // thread is not reading them: `append` made room, so they lie outside any half
        // whose write is in flight.
        unsafe {
            let data = self.map.as_mut_ptr().add(PAGE as usize);
            std::ptr::copy_nonoverlapping(a.as_ptr(), data.add(at as usize), a.len());
            std::ptr::copy_nonoverlapping(b.as_ptr(), data, b.len());
        }
    }

    /// The ring's bytes of stream positions `from..to` (at most the ring's size), in
    /// one or two pieces.
    fn slices(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        // SAFETY: the data area lies inside the mapping; no write is in flight (callers
        // waited), and the session does not write while it holds `&self`.
        let data = unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(PAGE as usize), (2 * HALF) as usize)
        };
        wrapped(data, from, to).unwrap_or_default()
    }

    fn put(&self, at: usize, v: u64) {
        // SAFETY: inside the header page, which only this thread writes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.to_le_bytes().as_ptr(),
                self.map.as_mut_ptr().add(at),
                8,
            )
        }
    }
}

impl Drop for Ring {
    /// The file stays: a ring dropped without [`Ring::drain`] is what a killed proxy
    /// leaves, and recovery applies it.
    fn drop(&mut self) {
        self.stop();
    }
}

fn gone() -> io::Error {
    io::Error::other("the command log's writer thread has stopped")
}

/// The write thread: each half, directly; through the page cache once the file system
/// has turned a direct write down.
fn write_halves(
    map: &MmapRaw,
    mut direct: Option<&File>,
    buffered: &File,
    jobs: &mpsc::Receiver<Job>,
    done: &mpsc::SyncSender<io::Result<()>>,
) {
    for job in jobs {
        // SAFETY: the half lies inside the mapping; the session does not write it until
        // this write's result has been received.
        let half = unsafe {
            std::slice::from_raw_parts(
                map.as_ptr().add((PAGE + job.half * HALF) as usize),
                HALF as usize,
            )
        };
        let mut r = match direct {
            Some(f) => f.write_all_at(half, job.offset),
            None => buffered.write_all_at(half, job.offset),
        };
        if direct.is_some()
            && r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            tracing::warn!(
                "direct writes refused here; the command log goes through the page cache"
            );
            direct = None;
            r = buffered.write_all_at(half, job.offset);
        }
        if done.send(r).is_err() {
            return;
        }
    }
}

/// Recovery: copies into the log `partial` what its ring holds and the log may not.
/// Nothing to do when there is no ring, or one killed before it was set up (the log
/// holds everything then); an error when the ring is damaged (it is left in place).
pub(super) fn apply(partial: &Path) -> io::Result<()> {
    let path = ring_path(partial);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Ok(());
    }
    let field = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let damaged = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let (Some(half), Some(base), Some(flushed), Some(written)) = (
        field(AT_HALF),
        field(AT_BASE),
        field(AT_FLUSHED),
        field(AT_WRITTEN),
    ) else {
        return Err(damaged("the header is cut short"));
    };
    let ring = half
        .checked_mul(2)
        .ok_or_else(|| damaged("impossible half size"))?;
    if half == 0 || half % PAGE != 0 || base % PAGE != 0 {
        return Err(damaged("impossible half size or base"));
    }
    if flushed > written || written - flushed > ring || flushed % half != 0 {
        return Err(damaged("impossible flushed or written counts"));
    }
    let data = bytes
        .get(PAGE as usize..(PAGE + ring) as usize)
        .ok_or_else(|| damaged("shorter than its header says"))?;
    let pieces = wrapped(data, flushed, written)
        .ok_or_else(|| damaged("impossible flushed or written counts"))?;
    let log = OpenOptions::new().write(true).open(partial)?;
    write_pieces(&log, pieces, base + flushed)?;
    log.sync_data()
}

/// The bytes of stream positions `from..to` in a ring's data area `data`, in one or
/// two pieces (wrapping at its end); `None` if they are more than it holds.
fn wrapped(data: &[u8], from: u64, to: u64) -> Option<(&[u8], &[u8])> {
    let at = usize::try_from(from % data.len() as u64).ok()?;
    let len = usize::try_from(to.checked_sub(from)?).ok()?;
    let first = len.min(data.len() - at);
    Some((data.get(at..at + first)?, data.get(..len - first)?))
}

/// Writes `pieces`, one after the other, at `offset` of `file`.
fn write_pieces(file: &File, (a, b): (&[u8], &[u8]), offset: u64) -> io::Result<()> {
    file.write_all_at(a, offset)?;
    file.write_all_at(b, offset + a.len() as u64)
}
