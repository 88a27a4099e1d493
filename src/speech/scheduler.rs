//! The inference scheduler: the one place where model work (speech to text, the language model,
//! the voice) runs. A fixed set of worker threads, sized to the cores, takes jobs from three
//! bounded queues in strict order: reply speech (the next chunk of what a caller is hearing, which
//! must keep up with the line), then other live work (a caller's turn being transcribed, a turn
//! being scored), then background work (summaries, prewarming a script's lines), first in first
//! out within each. A full queue or a stopped scheduler is
//! refused at once with a [`ScheduleError`]; a job whose [`CancelToken`] is raised before a
//! worker reaches it (barge-in, dropped speculation) is never run.
//!
//! The models themselves are loaded once and shared (`Arc`) by every call; jobs only borrow
//! them. Candle sizes its own thread pools once per process: [`apply_candle_threads`] sets how
//! many threads one job's matrix products use (1 by default: several jobs already keep the
//! cores busy, and candle's quantized kernels spin on a barrier, see docs/inference.md).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which queue a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A caller is hearing it: the next chunk of a reply being spoken. Taken before anything
    /// else, so the box's voice does not fall behind the line while other calls transcribe.
    Reply,
    /// A call is waiting for it: transcription, turn scoring.
    Live,
    /// Nobody is on the line for it: call summaries, prewarming a script's fixed lines.
    Background,
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Priority::Reply => "reply",
            Priority::Live => "live",
            Priority::Background => "background",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "the {priority} inference queue is full ({capacity} jobs waiting); the job was not queued"
    )]
    QueueFull { priority: Priority, capacity: usize },
    #[error("the inference scheduler is shut down")]
    ShutDown,
    #[error("the inference job was cancelled before it ran")]
    Cancelled,
    #[error("the inference job panicked")]
    Panicked,
    #[error("no result from the inference job within {0} ms")]
    TimedOut(u64),
}

/// A flag another thread raises when a job's result is no longer wanted (the caller started
/// speaking, a speculative transcript was dropped). Cheap to clone; all clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the scheduler is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Worker threads: at most this many jobs run at once.
    pub threads: usize,
    /// Live jobs that may wait; more are refused. Reply jobs have a queue of the same size.
    pub live_queue: usize,
    /// Background jobs that may wait; more are refused.
    pub background_queue: usize,
}

impl Default for SchedulerOptions {
    fn default() -> SchedulerOptions {
        SchedulerOptions {
            threads: available_cores(),
            live_queue: 64,
            background_queue: 256,
        }
    }
}

impl SchedulerOptions {
    /// `threads` workers (at least 1) with the default queue sizes.
    pub fn with_threads(threads: usize) -> SchedulerOptions {
        SchedulerOptions {
            threads: threads.max(1),
            ..SchedulerOptions::default()
        }
    }
}

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets how many threads candle uses inside one job (`CANDLE_NUM_THREADS` and
/// `RAYON_NUM_THREADS`), unless the environment already sets them. Candle reads them once, at its
/// first matrix product, and the environment is process-wide: call this at start-up, before any
/// other thread exists and before any model runs. Returns the count in force.
pub fn apply_candle_threads(threads: usize) -> usize {
    let threads = threads.max(1).to_string();
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, &threads);
        }
    }
    candle_core::utils::get_num_threads()
}

/// What happens to a job when a worker (or the shutdown) takes it from its queue.
enum Fate {
    Run,
    Cancelled,
    ShutDown,
}

struct Job {
    priority: Priority,
    queued_at: std::time::Instant,
    cancel: CancelToken,
    run: Box<dyn FnOnce(Fate) + Send>,
}

#[derive(Default)]
struct Queues {
    reply: VecDeque<Job>,
    live: VecDeque<Job>,
    background: VecDeque<Job>,
    shut_down: bool,
}

impl Queues {
    fn next(&mut self) -> Option<Job> {
        self.reply
            .pop_front()
            .or_else(|| self.live.pop_front())
            .or_else(|| self.background.pop_front())
    }
}

/// Jobs waiting in each queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    pub reply: usize,
    pub live: usize,
    pub background: usize,
}

/// Counts since the scheduler started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub ran: u64,
    pub cancelled: u64,
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    ran: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
}

struct Shared {
    queues: Mutex<Queues>,
    work: Condvar,
    options: SchedulerOptions,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // A job's panic is caught on the worker, never while the lock is held, so a poisoned
        // lock still holds consistent queues.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The inference workers and their queues. Share it with `Arc`; dropping the last handle (or
/// [`Scheduler::shutdown`]) stops it: running jobs finish, waiting ones are told
/// [`ScheduleError::ShutDown`], and the threads are joined.
pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the worker threads.
    pub fn new(options: SchedulerOptions) -> std::io::Result<Scheduler> {
        let options = SchedulerOptions {
            threads: options.threads.max(1),
            ..options
        };
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            work: Condvar::new(),
            options,
            counters: Counters::default(),
        });
        let mut workers = Vec::with_capacity(options.threads);
        for n in 0..options.threads {
            let for_worker = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("inference-{n}"))
                .spawn(move || work(&for_worker));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    stop(&shared, &mut workers);
                    return Err(e);
                }
            }
        }
        tracing::debug!(threads = options.threads, "inference scheduler started");
        Ok(Scheduler {
            shared,
            workers: Mutex::new(workers),
        })
    }

    pub fn options(&self) -> SchedulerOptions {
        self.shared.options
    }

    pub fn threads(&self) -> usize {
        self.shared.options.threads
    }

    pub fn stats(&self) -> SchedulerStats {
        let c = &self.shared.counters;
        SchedulerStats {
            ran: c.ran.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Jobs waiting in each queue.
    pub fn waiting(&self) -> Waiting {
        let q = self.shared.lock();
        Waiting {
            reply: q.reply.len(),
            live: q.live.len(),
            background: q.background.len(),
        }
    }

    /// Is this thread one of a scheduler's workers? A job must not wait for another job (all
    /// the workers could be waiting): code that may run inside a job runs inline instead.
    pub fn on_worker() -> bool {
        ON_WORKER.with(|w| w.get())
    }

    /// Queues `job`; its result comes back through the [`Ticket`]. Refused at once when the
    /// queue is full or the scheduler is shut down. The job is skipped if `cancel` is raised
    /// before a worker takes it.
    pub fn submit<T, F>(
        &self,
        priority: Priority,
        cancel: &CancelToken,
        job: F,
    ) -> Result<Ticket<T>, ScheduleError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (sender, result) = mpsc::sync_channel(1);
        let shared = Arc::clone(&self.shared);
        let run = Box::new(move |fate: Fate| {
            let outcome = match fate {
                Fate::Run => {
                    shared.counters.ran.fetch_add(1, Ordering::Relaxed);
                    catch_unwind(AssertUnwindSafe(job)).map_err(|_| ScheduleError::Panicked)
                }
                Fate::Cancelled => {
                    shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    Err(ScheduleError::Cancelled)
                }
                Fate::ShutDown => Err(ScheduleError::ShutDown),
            };
            // The submitter may have stopped waiting; the result then has nobody to go to.
            let _ = sender.send(outcome);
        });
        self.enqueue(
            priority,
            Job {
                priority,
                queued_at: std::time::Instant::now(),
                cancel: cancel.clone(),
                run,
            },
        )?;
        Ok(Ticket {
            result,
            cancel: cancel.clone(),
        })
    }

    /// Runs `job` through the queue and waits for its result; inline when called from a
    /// worker (see [`Scheduler::on_worker`]).
    pub fn run<T, F>(&self, priority: Priority, job: F) -> Result<T, ScheduleError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if Scheduler::on_worker() {
            return catch_unwind(AssertUnwindSafe(job)).map_err(|_| ScheduleError::Panicked);
        }
        self.submit(priority, &CancelToken::new(), job)?.wait()
    }

    fn enqueue(&self, priority: Priority, job: Job) -> Result<(), ScheduleError> {
        let mut q = self.shared.lock();
        if q.shut_down {
            return Err(ScheduleError::ShutDown);
        }
        let (queue, capacity) = match priority {
            Priority::Reply => (&mut q.reply, self.shared.options.live_queue),
            Priority::Live => (&mut q.live, self.shared.options.live_queue),
            Priority::Background => (&mut q.background, self.shared.options.background_queue),
        };
        if queue.len() >= capacity {
            self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ScheduleError::QueueFull { priority, capacity });
        }
        queue.push_back(job);
        drop(q);
        self.shared.work.notify_one();
        Ok(())
    }

    /// Stops taking jobs, tells the waiting ones [`ScheduleError::ShutDown`], lets the running
    /// ones finish and joins the workers. Later submissions are refused.
    pub fn shutdown(&self) {
        let mut workers = match self.workers.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        stop(&self.shared, &mut workers);
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Marks the queues shut down, fails what waits and joins the workers (but not the current
/// thread: a job may hold the last handle).
fn stop(shared: &Shared, workers: &mut Vec<JoinHandle<()>>) {
    let waiting: Vec<Job> = {
        let mut q = shared.lock();
        q.shut_down = true;
        let mut waiting: Vec<Job> = q.reply.drain(..).collect();
        waiting.extend(q.live.drain(..));
        waiting.extend(q.background.drain(..));
        waiting
    };
    shared.work.notify_all();
    for job in waiting {
        (job.run)(Fate::ShutDown);
    }
    let me = std::thread::current().id();
    for handle in workers.drain(..) {
        if handle.thread().id() != me {
            let _ = handle.join();
        }
    }
}

/// A worker: the next reply job, else the next live job, else the next background job, until
/// shut down.
fn work(shared: &Shared) {
    ON_WORKER.with(|w| w.set(true));
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if q.shut_down {
                    return;
                }
                if let Some(job) = q.next() {
                    break job;
                }
                q = shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let fate = if job.cancel.is_cancelled() {
            Fate::Cancelled
        } else {
            Fate::Run
        };
        let waited = job.queued_at.elapsed();
        let started = std::time::Instant::now();
        (job.run)(fate);
        tracing::debug!(
            priority = %job.priority,
            waited_ms = waited.as_millis() as u64,
            ran_ms = started.elapsed().as_millis() as u64,
            "inference job done"
        );
    }
}

/// The result of a queued job, to wait for or poll.
#[derive(Debug)]
pub struct Ticket<T> {
    result: mpsc::Receiver<Result<T, ScheduleError>>,
    cancel: CancelToken,
}

impl<T> Ticket<T> {
    /// Waits for the job's result.
    pub fn wait(self) -> Result<T, ScheduleError> {
        self.result.recv().unwrap_or(Err(ScheduleError::ShutDown))
    }

    /// Waits at most `timeout`; [`ScheduleError::TimedOut`] leaves the job queued or running
    /// (cancel it if its result is no longer wanted).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<T, ScheduleError> {
        match self.result.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(ScheduleError::TimedOut(timeout.as_millis() as u64))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ScheduleError::ShutDown),
        }
    }

    /// The result if the job is done.
    pub fn try_take(&self) -> Option<Result<T, ScheduleError>> {
        match self.result.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(ScheduleError::ShutDown)),
        }
    }

    /// The result is no longer wanted: the job is skipped unless it already started (a job
    /// that checks the token itself can stop early).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// A scheduler whose single worker is held by a job until the returned gate is opened, so
    /// that jobs submitted meanwhile all wait in the queues.
    fn held(options: SchedulerOptions) -> (Scheduler, Arc<Barrier>, Ticket<()>) {
        let scheduler = Scheduler::new(SchedulerOptions {
            threads: 1,
            ..options
        })
        .unwrap();
        let started = Arc::new(Barrier::new(2));
        let gate = Arc::new(Barrier::new(2));
        let (s, g) = (Arc::clone(&started), Arc::clone(&gate));
        let blocker = scheduler
            .submit(Priority::Live, &CancelToken::new(), move || {
                s.wait();
                g.wait();
            })
            .unwrap();
        started.wait();
        (scheduler, gate, blocker)
    }

    /// Order in which jobs ran, each recorded by the job itself.
    fn recorder() -> Arc<Mutex<Vec<&'static str>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    fn record(
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> impl FnOnce() -> &'static str + Send + 'static {
        let order = Arc::clone(order);
        move || {
            order.lock().unwrap().push(name);
            name
        }
    }

    #[test]
    fn reply_speech_then_live_work_then_background_work() {
        let (scheduler, gate, blocker) = held(SchedulerOptions::default());
        let order = recorder();
        let none = CancelToken::new();
        let tickets: Vec<_> = [
            (Priority::Background, "summary 1"),
            (Priority::Background, "summary 2"),
            (Priority::Live, "stt 1"),
            (Priority::Reply, "chunk 1"),
            (Priority::Live, "stt 2"),
            (Priority::Reply, "chunk 2"),
        ]
        .into_iter()
        .map(|(priority, name)| {
            scheduler
                .submit(priority, &none, record(&order, name))
                .unwrap()
        })
        .collect();
        assert_eq!(
            scheduler.waiting(),
            Waiting {
                reply: 2,
                live: 2,
                background: 2
            }
        );
        gate.wait();
        blocker.wait().unwrap();
        let results: Vec<_> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
        assert_eq!(
            results,
            [
                "summary 1",
                "summary 2",
                "stt 1",
                "chunk 1",
                "stt 2",
                "chunk 2"
            ]
        );
        assert_eq!(
            *order.lock().unwrap(),
            [
                "chunk 1",
                "chunk 2",
                "stt 1",
                "stt 2",
                "summary 1",
                "summary 2"
            ],
            "reply speech, then other live work, then background; each class in order"
        );
        assert_eq!(scheduler.stats().ran, 7);
    }

    #[test]
    fn a_full_queue_refuses_and_keeps_what_it_queued() {
        let (scheduler, gate, blocker) = held(SchedulerOptions {
            threads: 1,
            live_queue: 2,
            background_queue: 1,
        });
        let order = recorder();
        let none = CancelToken::new();
        let a = scheduler
            .submit(Priority::Live, &none, record(&order, "a"))
            .unwrap();
        let b = scheduler
            .submit(Priority::Live, &none, record(&order, "b"))
            .unwrap();
        let refused = scheduler
            .submit(Priority::Live, &none, record(&order, "c"))
            .unwrap_err();
        assert_eq!(
            refused,
            ScheduleError::QueueFull {
                priority: Priority::Live,
                capacity: 2
            }
        );
        assert!(refused.to_string().contains("live inference queue is full"));
        // The other classes have their own room.
        let r = scheduler
            .submit(Priority::Reply, &none, record(&order, "r"))
            .unwrap();
        let s = scheduler
            .submit(Priority::Background, &none, record(&order, "s"))
            .unwrap();
        assert!(matches!(
            scheduler.submit(Priority::Background, &none, || ()),
            Err(ScheduleError::QueueFull {
                priority: Priority::Background,
                capacity: 1
            })
        ));
        gate.wait();
        blocker.wait().unwrap();
        assert_eq!(
            (a.wait(), b.wait(), r.wait(), s.wait()),
            (Ok("a"), Ok("b"), Ok("r"), Ok("s"))
        );
        assert_eq!(*order.lock().unwrap(), ["r", "a", "b", "s"]);
        assert_eq!(scheduler.stats().refused, 2);
    }

    #[test]
    fn cancelled_jobs_do_not_run() {
        let (scheduler, gate, blocker) = held(SchedulerOptions::default());
        let order = recorder();
        let barge_in = CancelToken::new();
        let dropped = scheduler
            .submit(Priority::Live, &barge_in, record(&order, "old reply"))
            .unwrap();
        let speculation = scheduler
            .submit(Priority::Live, &CancelToken::new(), record(&order, "guess"))
            .unwrap();
        let kept = scheduler
            .submit(Priority::Live, &CancelToken::new(), record(&order, "kept"))
            .unwrap();
        barge_in.cancel();
        speculation.cancel();
        gate.wait();
        blocker.wait().unwrap();
        assert_eq!(dropped.wait(), Err(ScheduleError::Cancelled));
        assert_eq!(speculation.wait(), Err(ScheduleError::Cancelled));
        assert_eq!(kept.wait(), Ok("kept"));
        assert_eq!(*order.lock().unwrap(), ["kept"]);
        assert_eq!(scheduler.stats().cancelled, 2);
    }

    #[test]
    fn shutdown_joins_the_workers_and_fails_what_waits() {
        let (scheduler, gate, blocker) = held(SchedulerOptions::default());
        let order = recorder();
        let waiting = scheduler
            .submit(
                Priority::Background,
                &CancelToken::new(),
                record(&order, "late"),
            )
            .unwrap();
        let scheduler = Arc::new(scheduler);
        let stopping = {
            let scheduler = Arc::clone(&scheduler);
            std::thread::spawn(move || scheduler.shutdown())
        };
        // The waiting job is failed before the running one is allowed to finish.
        assert_eq!(waiting.wait(), Err(ScheduleError::ShutDown));
        gate.wait();
        stopping.join().unwrap();
        assert_eq!(blocker.wait(), Ok(()), "the running job finished");
        assert!(scheduler.workers.lock().unwrap().is_empty(), "joined");
        assert_eq!(
            scheduler
                .submit(Priority::Live, &CancelToken::new(), || ())
                .unwrap_err(),
            ScheduleError::ShutDown
        );
        assert!(order.lock().unwrap().is_empty());
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_worker_carries_on() {
        let scheduler = Scheduler::new(SchedulerOptions::with_threads(1)).unwrap();
        let none = CancelToken::new();
        let failed = scheduler.submit(Priority::Live, &none, || -> u32 { panic!("bad model") });
        assert_eq!(failed.unwrap().wait(), Err(ScheduleError::Panicked));
        assert_eq!(scheduler.run(Priority::Live, || 6 * 7), Ok(42));
    }

    #[test]
    fn jobs_run_on_as_many_threads_as_configured_and_nest_inline() {
        let scheduler = Arc::new(Scheduler::new(SchedulerOptions::with_threads(3)).unwrap());
        assert_eq!(scheduler.threads(), 3);
        // Three jobs that each wait for the other two can only finish on three threads.
        let all = Arc::new(Barrier::new(3));
        let tickets: Vec<_> = (0..3)
            .map(|_| {
                let all = Arc::clone(&all);
                let inner = Arc::clone(&scheduler);
                scheduler
                    .submit(Priority::Live, &CancelToken::new(), move || {
                        all.wait();
                        assert!(Scheduler::on_worker());
                        // A job asking for more work gets it run inline, not queued behind itself.
                        inner.run(Priority::Live, || {
                            std::thread::current().name().map(String::from)
                        })
                    })
                    .unwrap()
            })
            .collect();
        let names: Vec<String> = tickets
            .into_iter()
            .map(|t| t.wait().unwrap().unwrap().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("inference-")),
            "{names:?}"
        );
        assert!(!Scheduler::on_worker());
    }
}
