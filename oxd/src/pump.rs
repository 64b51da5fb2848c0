//! The event pump: reads decisions from the kernel's ring buffer, writes them to the audit log
//! as records naming the policy that decided, counts them in the metrics, and reports the
//! decisions the kernel could not record. `oxd run` and `oxd daemon` both use it.
//!
//! # Why a thread of its own
//!
//! The agent decides how many events there are, so the pump must never stand between the
//! agent's flood and oxd's control plane: the daemon's requests and signals, `oxd run`'s
//! signal forwarding and the wait for its command. The pump therefore runs on a dedicated OS
//! thread with its own single-threaded tokio runtime, where it waits for the ring buffer's fd
//! with [`AsyncFd`] (one registration, here) and for a stop request. Its owner's runtime shares
//! nothing with it but a mutex held for one lookup per event ([`Book`]) and atomic counters
//! ([`PumpStats`]), so a busy pump costs the control plane CPU time, scheduled by the kernel
//! between two threads, and never a place in a queue. A task on a shared multi-thread runtime
//! would also work, but only as long as every batch remembered to yield, and a busy pump would
//! still occupy one of the runtime's workers; a thread makes the separation structural.
//!
//! Within its thread the pump still drains in batches of at most [`BATCH`] decisions and yields
//! to its runtime after each, so that a ring that never empties cannot keep it from its loss
//! report (at least every [`LOSS_REPORT_INTERVAL`]) or from a stop request.
//!
//! # Wake-ups
//!
//! The kernel programs wake the pump only once enough records wait in the ring (a quarter of
//! it, at most 32 KiB): a wake-up per record was most of what recording a decision cost. The
//! pump drains on its own every [`FLUSH_INTERVAL`], so a record waits at most that long when
//! few come.
//!
//! # Losses
//!
//! The kernel counts, in the `COUNTERS` map (since the map was created; the daemon's is
//! pinned, so the counts survive daemon restarts), the decisions it put into the ring buffer
//! (`submitted`: outputs that succeeded) and those it could not (`lost`: the ring was full).
//! The pump writes a `lost` record with the count since its last report whenever the lost
//! total grew: after each drain that empties the ring, every [`LOSS_REPORT_INTERVAL`] while it
//! does not, and at the end; it carries both totals (`lost_total`, `submitted`). The lost total
//! already reported is in [`PumpStats`], for the daemon to keep in its state file, and to hand
//! to the next daemon. At its end the pump writes a `counts` record with both totals, read
//! after its last drain.
//!
//! What the totals prove: every submitted decision is a record in the log, so for `oxd run`
//! (counters created for the run, read after the agent is gone and the ring drained) the
//! decision records of the run equal the final `submitted`, and the `lost` records' counts add
//! up to the final `lost_total`. A record the pump cannot decode is logged as an error and
//! counted ([`PumpStats::malformed`]); it makes the records fall short of `submitted`.
//!
//! # Stopping
//!
//! [`Pump::finish`] stops the pump and drains what is in the ring at that point: at most
//! [`ring_capacity`] decisions, which is everything a full ring holds (every record is at least
//! a header: the bound counts records without a path), so a flood that goes on meanwhile cannot
//! keep it draining. Losses are then reported a last time, and the totals written.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::{HashMap, VecDeque},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use oxd_common::{counter, tally, Event, TallyKey, EVENT_HEADER_LEN, RING_BUF_BYTES};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot, Notify},
    time::MissedTickBehavior,
};

use crate::{
    audit::{decode_event, tally_event, AuditLog, Clock, DecodeError, Note, Record, RingTotals},
    metrics::Metrics,
    policy::Policy,
};

/// The most decisions drained before the pump looks at its stop request and loss timer.
pub const BATCH: usize = 256;

/// The longest time between two checks of the lost-decision counter.
pub const LOSS_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// How often the pump drains the ring buffer without being woken: the kernel programs wake it
/// only once enough records wait (`oxd-ebpf/src/event.rs`), so this bounds how long a record
/// can wait when few come.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Retired generations the [`Book`] keeps, for decisions made under them that are still in the
/// ring buffer.
pub const RETIRED_GENERATIONS: usize = 256;

/// The kernel's ring buffer record header (`BPF_RINGBUF_HDR_SZ`).
const RINGBUF_HEADER: usize = 8;

/// The most decisions a ring buffer of `ring_bytes` holds at once: each record is the kernel's
/// record header and at least an event header ([`EVENT_HEADER_LEN`]; a path adds to it),
/// rounded up to 8 bytes. An upper bound: records with paths take more room.
pub const fn ring_capacity(ring_bytes: u32) -> usize {
    ring_bytes as usize / (RINGBUF_HEADER + EVENT_HEADER_LEN).next_multiple_of(8)
}

/// [`ring_capacity`] of the default ring buffer.
pub const RING_CAPACITY: usize = ring_capacity(RING_BUF_BYTES);

/// The policy of each generation a decision can name: the generations in force, and the
/// [`RETIRED_GENERATIONS`] most recently retired ones.
#[derive(Debug, Default)]
pub struct Book {
    policies: HashMap<u64, Arc<Policy>>,
    retired: VecDeque<u64>,
}

/// A [`Book`] shared between its keeper and the pump.
pub type SharedBook = Arc<Mutex<Book>>;

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    /// A book shared with a pump.
    pub fn shared(self) -> SharedBook {
        Arc::new(Mutex::new(self))
    }

    /// Locks a shared book (a panic elsewhere does not make it unusable: every change to it
    /// is a single insertion or removal).
    pub fn lock(book: &SharedBook) -> MutexGuard<'_, Self> {
        book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `generation`; to be done before anything can point at its slot.
    pub fn insert(&mut self, generation: u64, policy: Arc<Policy>) {
        self.policies.insert(generation, policy);
    }

    /// Forgets a generation that was never reachable.
    pub fn remove(&mut self, generation: u64) {
        self.policies.remove(&generation);
    }

    /// Marks `generation` retired: it is kept until [`RETIRED_GENERATIONS`] newer ones are.
    pub fn retire(&mut self, generation: u64) {
        self.retired.push_back(generation);
        while self.retired.len() > RETIRED_GENERATIONS {
            if let Some(old) = self.retired.pop_front() {
                self.policies.remove(&old);
            }
        }
    }

    /// The policy of `generation`, if known.
    pub fn get(&self, generation: u64) -> Option<Arc<Policy>> {
        self.policies.get(&generation).cloned()
    }
}

/// What a pump has done, readable by its owner while it runs.
#[derive(Debug, Default)]
pub struct PumpStats {
    records: AtomicU64,
    malformed: AtomicU64,
    reported_lost: AtomicU64,
    lost_reported: Notify,
    /// The total of each tally already written (see [`Recorder::report_tallies`]).
    tallies_written: Mutex<Vec<(TallyKey, u64)>>,
}

impl PumpStats {
    /// Stats of a pump that starts with `reported_lost` lost decisions already reported (by
    /// an earlier daemon).
    pub fn new(reported_lost: u64) -> Arc<Self> {
        Arc::new(Self {
            reported_lost: AtomicU64::new(reported_lost),
            ..Self::default()
        })
    }

    /// Decisions written (offered to the audit log, whatever its filter keeps).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Ring buffer records that were not decisions as the kernel writes them (logged, skipped).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// The kernel's lost-decision total as of the last `lost` record.
    pub fn reported_lost(&self) -> u64 {
        self.reported_lost.load(Ordering::Relaxed)
    }

    /// The total of each of the kernel's tallies already written, for the daemon's state.
    pub fn tallies_written(&self) -> Vec<(TallyKey, u64)> {
        self.tallies_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts from the tallies an earlier daemon wrote (of the pinned map), before the pump
    /// starts.
    pub fn set_tallies_written(&self, written: Vec<(TallyKey, u64)>) {
        *self
            .tallies_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = written;
    }

    /// Resolves after the pump wrote a `lost` record (at once if it did since the last call).
    pub async fn lost_reported(&self) {
        self.lost_reported.notified().await;
    }
}

/// Where decisions come from: the kernel's ring buffer, or a stand-in in tests.
pub trait Ring {
    /// The next record in the ring, if there is one: a decision, or why it is not one.
    fn next_event(&mut self) -> Option<Result<Event, DecodeError>>;
}

impl<T: Borrow<MapData>> Ring for RingBuf<T> {
    fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        let item = self.next()?;
        Some(decode_event(&item))
    }
}

/// The kernel's counts of decisions it could not put in the ring buffer, and of those it did.
pub trait LossCounter {
    fn lost(&self) -> Result<u64>;
    fn submitted(&self) -> Result<u64>;
    /// Decisions counted in the kernel's tallies instead of recorded: allowed ones under
    /// `--record counted`, and those over the record rate.
    fn tallied(&self) -> Result<(u64, u64)> {
        Ok((0, 0))
    }
}

impl<T: Borrow<MapData>> LossCounter for PerCpuArray<T, u64> {
    fn lost(&self) -> Result<u64> {
        let values = self
            .get(&counter::RINGBUF_LOST, 0)
            .context("cannot read the lost-decision counter")?;
        Ok(values.iter().sum())
    }

    fn submitted(&self) -> Result<u64> {
        let values = self
            .get(&counter::SUBMITTED, 0)
            .context("cannot read the submitted-decision counter")?;
        Ok(values.iter().sum())
    }

    fn tallied(&self) -> Result<(u64, u64)> {
        let sum = |index| -> Result<u64> {
            let values = self
                .get(&index, 0)
                .context("cannot read the tally counters")?;
            Ok(values.iter().sum())
        };
        Ok((sum(counter::TALLIED)?, sum(counter::SUPPRESSED)?))
    }
}

/// The kernel's tallies (`TALLIES`): decisions counted instead of recorded, by [`TallyKey`].
pub trait TallySource: Send {
    /// Every key with its total (the sum over the CPUs, since the key was made).
    fn read(&mut self) -> Result<Vec<(TallyKey, u64)>>;
    /// Removes a key whose generation is gone for good.
    fn forget(&mut self, key: &TallyKey) -> Result<()>;
}

impl<T: BorrowMut<MapData> + Borrow<MapData> + Send> TallySource
    for PerCpuHashMap<T, TallyKey, u64>
{
    fn read(&mut self) -> Result<Vec<(TallyKey, u64)>> {
        let mut all = Vec::new();
        for entry in self.iter() {
            match entry {
                Ok((key, values)) => all.push((key, values.iter().sum())),
                // Removed while listed: its counts were reported before it was.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("cannot read the tallies"),
            }
        }
        Ok(all)
    }

    fn forget(&mut self, key: &TallyKey) -> Result<()> {
        match self.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("cannot remove a tally"),
        }
    }
}

/// Turns decisions into audit records and metrics, and losses into `lost` records.
pub struct Recorder<C> {
    audit: AuditLog,
    book: SharedBook,
    clock: Clock,
    metrics: Metrics,
    counter: C,
    /// The policy a `lost` record names (`oxd run`: the only one that could have decided).
    lost_policy: Option<Arc<Policy>>,
    /// Whether the final totals account for every decision (`oxd run`).
    complete: bool,
    reported_lost: u64,
    stats: Arc<PumpStats>,
    /// The kernel's tallies, and the total of each key already written.
    tallies: Option<Box<dyn TallySource>>,
    tallies_written: HashMap<TallyKey, u64>,
    /// Where every decision record also goes, for subscribers (the daemon's).
    tap: Option<tokio::sync::broadcast::Sender<Arc<Record>>>,
}

impl<C: LossCounter> Recorder<C> {
    /// Records into `audit` and `metrics`, naming policies from `book`; `counter` counts the
    /// losses, of which `stats` says how many were already reported.
    pub fn new(
        audit: AuditLog,
        book: SharedBook,
        metrics: Metrics,
        counter: C,
        stats: Arc<PumpStats>,
    ) -> Self {
        Self {
            audit,
            book,
            clock: Clock::new(),
            metrics,
            counter,
            lost_policy: None,
            complete: false,
            reported_lost: stats.reported_lost(),
            tallies: None,
            tallies_written: stats.tallies_written().into_iter().collect(),
            stats,
            tap: None,
        }
    }

    /// Sends every decision record to `tap` too (when anyone listens).
    #[must_use]
    pub fn with_tap(mut self, tap: tokio::sync::broadcast::Sender<Arc<Record>>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Writes the kernel's `tallies` as `tally` records (the counts since the last), with each
    /// loss report and at the end.
    #[must_use]
    pub fn with_tallies(mut self, tallies: impl TallySource + 'static) -> Self {
        self.tallies = Some(Box::new(tallies));
        self
    }

    /// Names `policy` in `lost` records.
    #[must_use]
    pub fn naming_losses(mut self, policy: Arc<Policy>) -> Self {
        self.lost_policy = Some(policy);
        self
    }

    /// Marks the final `counts` record complete: the counters are this pump's alone (created
    /// for it) and [`Self::finish`] runs when no decision can come any more (`oxd run`, after
    /// its agent is gone). `oxd audit verify` then checks the records against the totals.
    #[must_use]
    pub fn complete_at_finish(mut self) -> Self {
        self.complete = true;
        self
    }

    /// Writes up to `max` decisions from `ring`; returns how many (fewer than `max`: the ring
    /// is empty).
    pub fn drain_batch(&mut self, ring: &mut impl Ring, max: usize) -> Result<usize> {
        let mut written = 0;
        while written < max {
            let Some(event) = ring.next_event() else {
                break;
            };
            written += 1;
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!("{e}: skipped");
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let policy = Book::lock(&self.book).get(event.generation);
            let record = Record::from_event(&event, policy.as_deref(), &self.clock);
            self.metrics.record(&record);
            self.audit
                .write(&record)
                .context("cannot write the audit log")?;
            self.stats.records.fetch_add(1, Ordering::Relaxed);
            if let Some(tap) = self.tap.as_ref().filter(|t| t.receiver_count() > 0) {
                // Sent after the write: a subscriber never sees what the log lacks.
                let _ = tap.send(Arc::new(record));
            }
        }
        Ok(written)
    }

    /// The kernel's totals now (submitted read first: a decision submitted meanwhile is in the
    /// ring, not lost).
    fn totals(&self) -> Result<RingTotals> {
        let submitted = self.counter.submitted()?;
        let lost = self.counter.lost()?;
        let (tallied, suppressed) = self.counter.tallied()?;
        self.metrics.set_submitted(submitted);
        self.metrics.set_lost(lost);
        Ok(RingTotals {
            submitted,
            lost,
            tallied,
            suppressed,
        })
    }

    /// Writes a `tally` record for each key of the kernel's tallies that grew since the last
    /// one. A key whose generation the [`Book`] no longer knows is removed from the kernel's map
    /// once written (no decision can be made under it any more).
    pub fn report_tallies(&mut self) -> Result<()> {
        let Some(source) = self.tallies.as_mut() else {
            return Ok(());
        };
        let (mut gone, mut wrote) = (Vec::new(), false);
        for (key, total) in source.read()? {
            let written = self.tallies_written.entry(key).or_insert(0);
            let policy = Book::lock(&self.book).get(key.generation);
            if total > *written {
                let count = total - *written;
                *written = total;
                wrote = true;
                let like = Record::from_event(
                    &tally_event(&key, policy.as_deref()),
                    policy.as_deref(),
                    &self.clock,
                );
                self.metrics.record_many(&like, count);
                self.audit
                    .write_tally(&like, key.kind == tally::SUPPRESSED, count)
                    .context("cannot write the audit log")?;
            }
            if policy.is_none() {
                gone.push(key);
            }
        }
        let changed = !gone.is_empty() || wrote;
        for key in gone {
            source.forget(&key)?;
            self.tallies_written.remove(&key);
        }
        if changed {
            (self.stats)
                .set_tallies_written(self.tallies_written.iter().map(|(k, v)| (*k, *v)).collect());
        }
        Ok(())
    }

    /// Writes a `lost` record for the decisions lost since the last one, if any. Cheap (two
    /// counter reads), so it runs after every drain that empties the ring.
    pub fn report_losses(&mut self) -> Result<()> {
        let totals = self.totals()?;
        let lost = totals.lost;
        if lost > self.reported_lost {
            let count = lost - self.reported_lost;
            tracing::warn!(
                "{count} decisions were made but not recorded: the ring buffer was full"
            );
            self.audit
                .write_lost_with_totals(self.lost_policy.as_deref(), count, totals)
                .context("cannot write the audit log")?;
            self.audit.flush().context("cannot write the audit log")?;
            self.reported_lost = lost;
            self.stats.reported_lost.store(lost, Ordering::Relaxed);
            self.stats.lost_reported.notify_one();
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.audit.flush().context("cannot write the audit log")
    }

    /// Writes the owner's record, flushed.
    fn note(&mut self, note: &Note) -> Result<()> {
        self.audit
            .write_note(note)
            .and_then(|()| self.audit.flush())
            .context("cannot write the audit log")
    }

    /// The last drain: at most `max` decisions (what the ring held when it started), and for
    /// at most `time` if given (in batches of [`BATCH`]; what is left stays in the ring), then
    /// the losses, then a `counts` record with the kernel's totals.
    pub fn finish(
        &mut self,
        ring: &mut impl Ring,
        max: usize,
        time: Option<Duration>,
    ) -> Result<()> {
        let deadline = time.map(|t| Instant::now() + t);
        let mut left = max;
        while left > 0 {
            let batch = left.min(BATCH);
            let written = self.drain_batch(ring, batch)?;
            left -= written;
            if written < batch || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        self.report_tallies()?;
        self.report_losses()?;
        let totals = self.totals()?;
        self.audit
            .write_counts(self.lost_policy.as_deref(), totals, self.complete)
            .context("cannot write the audit log")?;
        self.flush()
    }
}

/// How a pump paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Decisions per batch.
    pub batch: usize,
    /// Decisions the final drain reads at most.
    pub final_drain: usize,
    /// The longest time between two loss checks, and the time between two writes of the
    /// kernel's tallies.
    pub report_every: Duration,
    /// How often the ring is drained without a wake-up.
    pub flush_every: Duration,
    /// How long the final drain may take, if bounded: set where the ring outlives the pump
    /// (a daemon that keeps its pins: the next daemon writes what is left), so that a flood
    /// cannot hold up the exit.
    pub final_drain_time: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::for_ring(RING_BUF_BYTES)
    }
}

impl Limits {
    /// The default limits for a ring buffer of `ring_bytes` (its [`ring_capacity`] drained at
    /// most at the end).
    pub fn for_ring(ring_bytes: u32) -> Self {
        Self {
            batch: BATCH,
            final_drain: ring_capacity(ring_bytes),
            report_every: LOSS_REPORT_INTERVAL,
            flush_every: FLUSH_INTERVAL,
            final_drain_time: None,
        }
    }
}

/// A running pump (see the module documentation). Dropping it stops it as [`Pump::finish`]
/// does, ignoring errors.
pub struct Pump {
    thread: Option<JoinHandle<Result<()>>>,
    stop: Option<oneshot::Sender<()>>,
    exited: Option<oneshot::Receiver<()>>,
    notes: Notes,
}

/// A record for the pump to write, and where to say it was written.
type NoteCall = (Note, std::sync::mpsc::SyncSender<Result<(), String>>);

/// The owner's way to have the pump write its own records ([`Pump::notes`]) into the audit
/// log, in line with the decisions: the pump is the log's only writer.
#[derive(Clone, Debug)]
pub struct Notes(mpsc::UnboundedSender<NoteCall>);

/// How long [`Notes::write`] waits for the pump.
const NOTE_WAIT: Duration = Duration::from_secs(5);

impl Notes {
    /// Has the pump write `record` and flush the log; returns once it has (blocking, for at
    /// most a few seconds: the pump takes notes before decisions).
    pub fn write(&self, record: Note) -> Result<()> {
        let (done, written) = std::sync::mpsc::sync_channel(1);
        self.0
            .send((record, done))
            .map_err(|_| anyhow!("the event pump has stopped"))?;
        match written.recv_timeout(NOTE_WAIT) {
            Ok(result) => result.map_err(|e| anyhow!(e)),
            Err(_) => bail!("the event pump did not write the record within {NOTE_WAIT:?}"),
        }
    }
}

impl Pump {
    /// Starts pumping `ring` through `recorder` on a thread of its own.
    pub fn start<R, C>(ring: R, recorder: Recorder<C>) -> Result<Self>
    where
        R: Ring + AsRawFd + Send + 'static,
        C: LossCounter + Send + 'static,
    {
        Self::start_with(ring, recorder, Limits::default())
    }

    /// [`Pump::start`] with other limits.
    pub fn start_with<R, C>(ring: R, mut recorder: Recorder<C>, limits: Limits) -> Result<Self>
    where
        R: Ring + AsRawFd + Send + 'static,
        C: LossCounter + Send + 'static,
    {
        if limits.batch == 0 {
            bail!("a batch must hold at least one decision");
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel::<()>();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("oxd-pump".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _exited = exited_tx;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .context("cannot start the event pump's runtime")?;
                runtime.block_on(pump(ring, &mut recorder, stop_rx, notes_rx, limits))
            })
            .context("cannot start the event pump's thread")?;
        Ok(Self {
            thread: Some(thread),
            stop: Some(stop_tx),
            exited: Some(exited_rx),
            notes: Notes(notes_tx),
        })
    }

    /// A handle to have this pump write the owner's records.
    pub fn notes(&self) -> Notes {
        self.notes.clone()
    }

    /// Resolves when the pump has stopped by itself, which it only does when it fails:
    /// [`Pump::finish`] then says why.
    pub async fn stopped(&mut self) {
        match &mut self.exited {
            Some(exited) => {
                let _ = exited.await;
                self.exited = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the pump after its final drain; its error if it failed.
    pub fn finish(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("the event pump panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::error!("event pump: {e:#}");
        }
    }
}

/// Writes an owner's record and tells the owner how that went; the pump stops on an error.
fn answer_note<C: LossCounter>(recorder: &mut Recorder<C>, (note, done): NoteCall) -> Result<()> {
    let written = recorder.note(&note);
    let _ = done.send(written.as_ref().map_err(|e| format!("{e:#}")).copied());
    written
}

/// The pump's loop, on its own thread and runtime.
async fn pump<R, C>(
    ring: R,
    recorder: &mut Recorder<C>,
    mut stop: oneshot::Receiver<()>,
    mut notes: mpsc::UnboundedReceiver<NoteCall>,
    limits: Limits,
) -> Result<()>
where
    R: Ring + AsRawFd,
    C: LossCounter,
{
    // SAFETY: `ring` owns its file descriptor (the ring buffer map's), which stays open and
    // refers to the same map for as long as the `AsyncFd` owns `ring`.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| e.into_parts().1)
        .context("cannot watch the decision ring buffer")?;
    // The first tick is at once: losses while nothing was reading are reported first.
    let mut tick = tokio::time::interval(limits.report_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(limits.flush_every);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            // A stop request, or the owner gone without one.
            _ = &mut stop => break,
            // The owner waits for its record: before any decision.
            Some(call) = notes.recv() => answer_note(recorder, call)?,
            // The tallies (a walk of the kernel's map) only on the tick.
            _ = tick.tick() => {
                recorder.report_tallies()?;
                recorder.report_losses()?;
            }
            // Records the kernel did not wake us for (few of them): a batch, and at once
            // another while batches come full.
            _ = flush.tick() => {
                let written = recorder.drain_batch(ring.get_mut(), limits.batch)?;
                recorder.flush()?;
                if written == limits.batch {
                    flush.reset_immediately();
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("cannot poll the decision ring buffer")?;
                let written = recorder.drain_batch(guard.get_inner_mut(), limits.batch)?;
                if written < limits.batch {
                    // Empty: wait for the kernel's next wake-up (readiness that arrived since
                    // the guard was taken is kept).
                    guard.clear_ready();
                    recorder.report_losses()?;
                    recorder.flush()?;
                } else {
                    recorder.flush()?;
                    // The ring stays ready, so without this the loop would never give the
                    // runtime a turn to advance its timer: the loss report would wait for
                    // the flood to end.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    // Records sent as the stop came.
    while let Ok(call) = notes.try_recv() {
        answer_note(recorder, call)?;
    }
    recorder.finish(ring.get_mut(), limits.final_drain, limits.final_drain_time)
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        os::{fd::RawFd, unix::net::UnixStream},
        path::Path,
        time::Instant,
    };

    use oxd_common::action;

    use super::*;
    use crate::audit::RecordFilter;

    fn event(generation: u64, decision: u32) -> Event {
        crate::audit::connect_event(generation, decision)
    }

    fn policy(name: &str) -> Arc<Policy> {
        let text =
            format!("name = \"{name}\"\n[network]\n[[network.deny]]\ncidr = \"127.0.0.2\"\n");
        Arc::new(Policy::parse(Path::new("p.toml"), &text).unwrap())
    }

    /// An audit log's output, readable by the test.
    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn records(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }

        fn lost_counts(&self) -> Vec<u64> {
            self.records()
                .iter()
                .filter(|r| r["op"] == "lost")
                .map(|r| r["count"].as_u64().unwrap())
                .collect()
        }
    }

    /// A lost-decision counter the test sets, or that grows by one at each read.
    #[derive(Clone, Default)]
    struct Counter {
        total: Arc<AtomicU64>,
        grows: bool,
        submitted: Arc<AtomicU64>,
    }

    impl LossCounter for Counter {
        fn lost(&self) -> Result<u64> {
            if self.grows {
                Ok(self.total.fetch_add(1, Ordering::Relaxed) + 1)
            } else {
                Ok(self.total.load(Ordering::Relaxed))
            }
        }

        fn submitted(&self) -> Result<u64> {
            Ok(self.submitted.load(Ordering::Relaxed))
        }
    }

    /// A ring holding `events`, then (with `endless`) an unending flood of allowed decisions.
    /// Its fd is a socket that is readable when `readable`.
    struct FakeRing {
        events: VecDeque<Event>,
        endless: bool,
        fd: UnixStream,
        _peer: UnixStream,
    }

    impl FakeRing {
        fn new(events: impl IntoIterator<Item = Event>, endless: bool, readable: bool) -> Self {
            let (fd, mut peer) = UnixStream::pair().unwrap();
            fd.set_nonblocking(true).unwrap();
            if readable {
                peer.write_all(b"x").unwrap();
            }
            Self {
                events: events.into_iter().collect(),
                endless,
                fd,
                _peer: peer,
            }
        }
    }

    impl Ring for FakeRing {
        fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
            self.events
                .pop_front()
                .or_else(|| self.endless.then(|| event(1, action::ALLOW)))
                .map(Ok)
        }
    }

    impl AsRawFd for FakeRing {
        fn as_raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    fn recorder(
        filter: RecordFilter,
        book: Book,
        counter: Counter,
        stats: Arc<PumpStats>,
    ) -> (Recorder<Counter>, Output) {
        let out = Output::default();
        let audit = AuditLog::new(Box::new(out.clone()), filter);
        let recorder = Recorder::new(audit, book.shared(), Metrics::new(), counter, stats);
        (recorder, out)
    }

    /// Tallies the test sets; what was forgotten.
    #[derive(Clone, Default)]
    struct Tallies {
        totals: Arc<Mutex<Vec<(TallyKey, u64)>>>,
        forgotten: Arc<Mutex<Vec<TallyKey>>>,
    }

    impl TallySource for Tallies {
        fn read(&mut self) -> Result<Vec<(TallyKey, u64)>> {
            Ok(self.totals.lock().unwrap().clone())
        }

        fn forget(&mut self, key: &TallyKey) -> Result<()> {
            self.forgotten.lock().unwrap().push(*key);
            self.totals.lock().unwrap().retain(|(k, _)| k != key);
            Ok(())
        }
    }

    #[test]
    fn tallies_are_written_as_they_grow_and_forgotten_with_their_generation() {
        let key = |generation, kind| TallyKey {
            generation,
            rule_id: oxd_common::RULE_DEFAULT,
            op: u16::try_from(oxd_common::op::CONNECT4).unwrap(),
            decision: u8::try_from(action::ALLOW).unwrap(),
            kind,
        };
        let (counted, limited, old) = (
            key(1, tally::COUNTED),
            key(1, tally::SUPPRESSED),
            key(9, tally::COUNTED),
        );
        let mut book = Book::new();
        book.insert(1, policy("p"));
        let stats = PumpStats::new(0);
        // An earlier daemon wrote 5 of `counted` already.
        stats.set_tallies_written(vec![(counted, 5)]);
        let (recorder, out) = recorder(RecordFilter::All, book, Counter::default(), stats.clone());
        let tallies = Tallies::default();
        *tallies.totals.lock().unwrap() = vec![(counted, 8), (limited, 2), (old, 4)];
        let mut recorder = recorder.with_tallies(tallies.clone());
        recorder.report_tallies().unwrap();
        // Nothing new: nothing written.
        recorder.report_tallies().unwrap();
        tallies.totals.lock().unwrap()[0].1 = 10;
        recorder.report_tallies().unwrap();
        recorder.flush().unwrap();
        let written: Vec<_> = out
            .records()
            .iter()
            .map(|r| {
                (
                    r["op"].as_str().unwrap().to_owned(),
                    r["of"].as_str().unwrap().to_owned(),
                    r["why"].as_str().unwrap().to_owned(),
                    r["policy"].as_str().unwrap().to_owned(),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect();
        let t = |why: &str, policy: &str, n| {
            (
                "tally".to_owned(),
                "connect".to_owned(),
                why.to_owned(),
                policy.to_owned(),
                n,
            )
        };
        assert_eq!(
            written,
            [
                t("counted", "p", 3),
                t("rate-limited", "p", 2),
                t("counted", "<unknown>", 4),
                t("counted", "p", 2),
            ]
        );
        // A generation the book does not know is gone: written, then forgotten.
        assert_eq!(*tallies.forgotten.lock().unwrap(), [old]);
        let mut kept = stats.tallies_written();
        kept.sort_by_key(|(k, _)| k.kind);
        assert_eq!(kept, [(counted, 10), (limited, 2)]);
    }

    #[test]
    fn the_capacity_bounds_the_records_of_a_ring() {
        // 4 MiB of the smallest records (no path): a kernel header of 8 bytes and an event
        // header, 8-byte aligned.
        assert_eq!(EVENT_HEADER_LEN, 120);
        assert_eq!(RING_CAPACITY, (4 << 20) / 128);
        assert_eq!(ring_capacity(16 << 10), 128);
        // Any record, path or not, takes at least that much room.
        let longest =
            (RINGBUF_HEADER + EVENT_HEADER_LEN + oxd_common::PATH_BUF_LEN).next_multiple_of(8);
        assert!(RING_CAPACITY >= RING_BUF_BYTES as usize / longest);
        assert_eq!(Limits::for_ring(1 << 20).final_drain, (1 << 20) / 128);
    }

    #[test]
    fn a_malformed_record_is_counted_and_skipped() {
        struct Bad(VecDeque<Result<Event, DecodeError>>);
        impl Ring for Bad {
            fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
                self.0.pop_front()
            }
        }
        let stats = PumpStats::new(0);
        let (mut recorder, out) = recorder(
            RecordFilter::All,
            Book::new(),
            Counter::default(),
            Arc::clone(&stats),
        );
        let mut ring = Bad(VecDeque::from([
            Ok(event(1, action::DENY)),
            Err(DecodeError::Short { len: 3 }),
            Ok(event(1, action::DENY)),
        ]));
        assert_eq!(recorder.drain_batch(&mut ring, 10).unwrap(), 3);
        recorder.flush().unwrap();
        assert_eq!(out.records().len(), 2);
        assert_eq!(stats.records(), 2);
        assert_eq!(stats.malformed(), 1);
    }

    #[test]
    fn the_last_drain_writes_the_kernels_totals() {
        let counter = Counter::default();
        counter.total.store(4, Ordering::Relaxed);
        counter.submitted.store(2, Ordering::Relaxed);
        let (mut recorder, out) =
            recorder(RecordFilter::All, Book::new(), counter, PumpStats::new(1));
        let mut ring = FakeRing::new(
            [event(1, action::DENY), event(1, action::ALLOW)],
            false,
            false,
        );
        recorder.finish(&mut ring, 10, None).unwrap();
        let records = out.records();
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(records[2]["op"], "lost");
        assert_eq!(records[2]["count"], 3);
        assert_eq!(records[2]["lost_total"], 4);
        assert_eq!(records[2]["submitted"], 2);
        assert_eq!(records[3]["op"], "counts");
        assert_eq!(records[3]["lost_total"], 4);
        assert_eq!(records[3]["submitted"], 2);
        assert!(records[3].get("count").is_none(), "{}", records[3]);
    }

    #[test]
    fn a_batch_stops_at_its_bound() {
        let stats = PumpStats::new(0);
        let (mut recorder, out) = recorder(
            RecordFilter::All,
            Book::new(),
            Counter::default(),
            Arc::clone(&stats),
        );
        let mut ring = FakeRing::new((0..600).map(|_| event(1, action::DENY)), false, false);
        assert_eq!(recorder.drain_batch(&mut ring, 256).unwrap(), 256);
        assert_eq!(
            ring.events.len(),
            344,
            "the batch left the rest in the ring"
        );
        assert_eq!(recorder.drain_batch(&mut ring, 256).unwrap(), 256);
        assert_eq!(recorder.drain_batch(&mut ring, 256).unwrap(), 88, "empty");
        assert_eq!(recorder.drain_batch(&mut ring, 256).unwrap(), 0);
        assert_eq!(stats.records(), 600);
        assert_eq!(out.records().len(), 600);
    }

    #[test]
    fn losses_are_reported_once_with_the_count_since_the_last_report() {
        let counter = Counter::default();
        // An earlier daemon reported 10 already.
        let stats = PumpStats::new(10);
        let (mut recorder, out) = recorder(
            RecordFilter::All,
            Book::new(),
            counter.clone(),
            Arc::clone(&stats),
        );
        let set = |n| counter.total.store(n, Ordering::Relaxed);
        set(10);
        recorder.report_losses().unwrap();
        assert!(out.lost_counts().is_empty(), "nothing new was lost");
        set(15);
        recorder.report_losses().unwrap();
        recorder.report_losses().unwrap();
        set(22);
        recorder.report_losses().unwrap();
        assert_eq!(out.lost_counts(), vec![5, 7]);
        assert_eq!(stats.reported_lost(), 22);
        // Counters younger than the report (maps created afresh) report nothing.
        set(3);
        recorder.report_losses().unwrap();
        assert_eq!(out.lost_counts(), vec![5, 7]);
        let lost = &out.records()[0];
        assert!(
            lost.get("policy").is_none(),
            "the daemon names no policy: {lost}"
        );
    }

    #[tokio::test]
    async fn a_lost_record_wakes_the_owner() {
        let counter = Counter::default();
        let stats = PumpStats::new(0);
        let (mut recorder, _out) = recorder(
            RecordFilter::All,
            Book::new(),
            counter.clone(),
            Arc::clone(&stats),
        );
        let woken = |stats: Arc<PumpStats>| async move {
            tokio::time::timeout(Duration::from_millis(50), stats.lost_reported())
                .await
                .is_ok()
        };
        recorder.report_losses().unwrap();
        assert!(!woken(Arc::clone(&stats)).await, "nothing was lost");
        counter.total.store(4, Ordering::Relaxed);
        recorder.report_losses().unwrap();
        assert!(woken(Arc::clone(&stats)).await);
    }

    #[test]
    fn lost_records_of_oxd_run_name_its_policy() {
        let counter = Counter::default();
        let (recorder, out) = recorder(
            RecordFilter::All,
            Book::new(),
            counter.clone(),
            PumpStats::new(0),
        );
        let mut recorder = recorder.naming_losses(policy("run"));
        counter.total.store(2, Ordering::Relaxed);
        recorder.report_losses().unwrap();
        let records = out.records();
        assert_eq!(records[0]["op"], "lost");
        assert_eq!(records[0]["policy"], "run");
        assert_eq!(records[0]["count"], 2);
    }

    #[test]
    fn records_name_the_policy_of_their_generation_retired_or_not() {
        let mut book = Book::new();
        book.insert(1, policy("old"));
        book.insert(2, policy("new"));
        book.retire(1);
        let (mut recorder, out) = recorder(
            RecordFilter::All,
            book,
            Counter::default(),
            PumpStats::new(0),
        );
        let mut ring = FakeRing::new(
            [
                event(1, action::DENY),
                event(2, action::DENY),
                event(3, action::DENY),
            ],
            false,
            false,
        );
        recorder.drain_batch(&mut ring, BATCH).unwrap();
        let names: Vec<String> = out
            .records()
            .iter()
            .map(|r| r["policy"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["old", "new", "<unknown>"]);
        let rule = &out.records()[0]["rule"];
        assert_eq!(rule, "network.deny[0]", "the rule is named too");
    }

    #[test]
    fn the_book_keeps_the_most_recently_retired_generations() {
        let mut book = Book::new();
        let p = policy("p");
        for g in 1..=RETIRED_GENERATIONS as u64 + 2 {
            book.insert(g, Arc::clone(&p));
            book.retire(g);
        }
        assert!(book.get(1).is_none());
        assert!(book.get(2).is_none());
        assert!(book.get(3).is_some());
        assert!(book.get(RETIRED_GENERATIONS as u64 + 2).is_some());
        book.insert(1000, Arc::clone(&p));
        book.remove(1000);
        assert!(book.get(1000).is_none());
    }

    #[test]
    fn the_final_drain_writes_what_the_ring_holds_and_no_more_than_its_bound() {
        // The fd never becomes readable: everything is left to the final drain.
        let stats = PumpStats::new(0);
        let counter = Counter::default();
        counter.total.store(3, Ordering::Relaxed);
        let (recorder, out) = recorder(RecordFilter::All, Book::new(), counter, Arc::clone(&stats));
        let ring = FakeRing::new((0..700).map(|_| event(1, action::DENY)), false, false);
        let limits = Limits {
            batch: 16,
            final_drain: 1000,
            report_every: Duration::from_hours(1),
            flush_every: FLUSH_INTERVAL,
            final_drain_time: None,
        };
        let pump = Pump::start_with(ring, recorder, limits).unwrap();
        pump.finish().unwrap();
        assert_eq!(stats.records(), 700);
        // The decisions, a `lost` record and the closing `counts`.
        assert_eq!(out.records().len(), 702);
        assert_eq!(out.lost_counts(), vec![3]);

        let stats = PumpStats::new(0);
        let (recorder, _out) = recorder_pair(Arc::clone(&stats));
        let ring = FakeRing::new([], true, false);
        let pump = Pump::start_with(
            ring,
            recorder,
            Limits {
                final_drain: 500,
                ..limits
            },
        )
        .unwrap();
        pump.finish().unwrap();
        assert_eq!(
            stats.records(),
            500,
            "an endless ring is drained to the bound"
        );

        // Bounded in time as well: a flood cannot hold the final drain (the ring outlives
        // the pump, and what is left in it is the next pump's).
        let stats = PumpStats::new(0);
        let (recorder, out) = recorder_pair(Arc::clone(&stats));
        let ring = FakeRing::new([], true, false);
        let pump = Pump::start_with(
            ring,
            recorder,
            Limits {
                final_drain: 100_000_000,
                final_drain_time: Some(Duration::from_millis(50)),
                ..limits
            },
        )
        .unwrap();
        pump.finish().unwrap();
        assert!(
            stats.records() < 100_000_000,
            "the final drain stopped at its time bound, not its count"
        );
        assert_eq!(
            out.records().last().map(|r| r["op"].clone()),
            Some(serde_json::json!("counts")),
            "the totals are still written"
        );
    }

    fn recorder_pair(stats: Arc<PumpStats>) -> (Recorder<Counter>, Output) {
        recorder(RecordFilter::Denied, Book::new(), Counter::default(), stats)
    }

    #[test]
    fn a_flood_delays_neither_loss_reports_nor_stopping() {
        // A ring that is always readable and never empties, and a counter that grows at each
        // read: the pump must still check the losses on time and stop when told.
        let stats = PumpStats::new(0);
        let counter = Counter {
            grows: true,
            ..Counter::default()
        };
        // Only denials are written: the flood's allowed decisions are counted, not kept.
        let (recorder, out) = recorder(
            RecordFilter::Denied,
            Book::new(),
            counter,
            Arc::clone(&stats),
        );
        let ring = FakeRing::new([], true, true);
        let limits = Limits {
            batch: 64,
            final_drain: 1000,
            report_every: Duration::from_millis(100),
            flush_every: FLUSH_INTERVAL,
            final_drain_time: None,
        };
        let pump = Pump::start_with(ring, recorder, limits).unwrap();
        let started = Instant::now();
        while out.lost_counts().len() < 4 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "loss reports stalled behind the flood: {:?}",
                out.lost_counts()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stats.records() > 0, "the pump drained the flood meanwhile");
        let stopping = Instant::now();
        pump.finish().unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "stopping took {:?}",
            stopping.elapsed()
        );
        assert!(out.lost_counts().iter().all(|&c| c >= 1));
    }

    #[tokio::test]
    async fn a_failing_pump_says_so() {
        struct Broken;
        impl LossCounter for Broken {
            fn lost(&self) -> Result<u64> {
                Err(anyhow!("no counters"))
            }
            fn submitted(&self) -> Result<u64> {
                Err(anyhow!("no counters"))
            }
        }
        let audit = AuditLog::new(Box::new(Output::default()), RecordFilter::All);
        let recorder = Recorder::new(
            audit,
            Book::new().shared(),
            Metrics::new(),
            Broken,
            PumpStats::new(0),
        );
        let mut pump = Pump::start(FakeRing::new([], false, false), recorder).unwrap();
        tokio::time::timeout(Duration::from_secs(10), pump.stopped())
            .await
            .expect("the pump stops by itself when it fails");
        let err = pump.finish().unwrap_err();
        assert!(format!("{err:#}").contains("no counters"), "{err:#}");
    }
}
