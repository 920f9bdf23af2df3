//! The bounded password pool for argon2id: `accounts.password_hash_concurrency` dedicated threads,
//! run at the lowest CPU priority (the `SCHED_IDLE` policy, and nice 19), behind a bounded queue.
//! At most that many hashes (each ~19 MiB and tens of ms of one core) run at once; the kernel gives
//! every other thread (the API's workers) the CPU first, so a login flood slows logins, not the
//! other routes; and with [`QUEUE_PER_THREAD`] logins per thread already waiting, the next waits at
//! most a second for room and is then answered 429 (`Retry-After: 1`) rather than left to time out
//! (a flood that retries at once is so paced by the hashing threads, instead of spinning the API's
//! workers on cheap 429s). Each thread keeps its own argon2 working memory and reuses it (zeroed
//! after every hash; see `skygate_core::password`): a hash touches no new page, so a flood costs no
//! page faults and no memory beyond one working set per thread. The hasher (and its dummy hash for
//! unknown accounts) is built on first use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use skygate_core::password::{HashError, PasswordHasher};
use skygate_core::SecretString;

use super::ConsoleError;

/// Hashes that may wait per thread (at ~30 ms each, a full queue drains in about a second).
pub const QUEUE_PER_THREAD: usize = 32;

/// How long a login waits for room in a full queue before it is answered 429.
const FULL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The nice value of the hashing threads (the lowest priority).
const NICE: i32 = 19;

type Hasher = Result<PasswordHasher, HashError>;
type Task = Box<dyn FnOnce(&Hasher) + Send>;

#[derive(Clone)]
pub struct PasswordPool {
    tasks: SyncSender<Task>,
    /// Tasks sent and not yet taken by a thread.
    waiting: Arc<AtomicUsize>,
    /// Signalled each time a thread takes a task (room in the queue).
    room: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PasswordPool({} waiting)",
            self.waiting.load(Ordering::Relaxed)
        )
    }
}

impl PasswordPool {
    /// Starts `size` hashing threads; they end when the last clone of the pool is dropped.
    pub fn new(size: u32) -> Self {
        let size = usize::try_from(size.max(1)).unwrap_or(1);
        let (tasks, rx) = sync_channel::<Task>(size * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(tokio::sync::Notify::new());
        let hasher = Arc::new(OnceLock::new());
        for i in 0..size {
            let (rx, waiting, hasher) = (rx.clone(), waiting.clone(), hasher.clone());
            let room = room.clone();
            let started = std::thread::Builder::new()
                .name(format!("skygate-password-{i}"))
                .spawn(move || worker(&rx, &waiting, &room, &hasher));
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordPool { tasks, waiting, room }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PasswordHasher) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, ConsoleError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move |h: &Hasher| {
            if tx.is_closed() {
                return; // the request is gone: skip the work
            }
            let _ = tx.send(match h {
                Ok(h) => f(h),
                Err(e) => Err(e.clone()),
            });
        });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // A full queue holds the request for up to FULL_WAIT, taking the first room that frees up:
        // a flood that retries at once is paced by the hashing threads instead of spinning on 429s.
        let until = tokio::time::Instant::now() + FULL_WAIT;
        let mut task = task;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.tasks.try_send(task) {
                Ok(()) => break,
                Err(TrySendError::Full(t)) => {
                    task = t;
                    if tokio::time::timeout_at(until, room).await.is_err() {
                        self.waiting.fetch_sub(1, Ordering::Relaxed);
                        return Err(ConsoleError::TooMany {
                            message: "Too many logins are waiting right now: try again in a second.".into(),
                            retry_after: 1,
                        });
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ConsoleError::internal(&HashError::Unavailable));
                }
            }
        }
        let done = rx
            .await
            .map_err(|_| ConsoleError::internal(&HashError::Unavailable))?;
        done.map_err(|e| ConsoleError::internal(&e))
    }

    /// Whether `password` matches `stored`; with `None`, the same work against the dummy hash, false.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool, ConsoleError> {
        self.run(move |h| Ok(h.verify_or_dummy(&password, stored.as_deref())))
            .await
    }

    /// The PHC string of a new password (already checked against the policy).
    pub async fn hash(&self, password: SecretString) -> Result<String, ConsoleError> {
        self.run(move |h| h.hash(&password)).await
    }
}

/// One hashing thread: lowers its own priority, then runs tasks until the pool is dropped. A panic in
/// a task ends that task (its request gets an internal error), not the thread.
fn worker(
    rx: &Mutex<Receiver<Task>>,
    waiting: &AtomicUsize,
    room: &tokio::sync::Notify,
    hasher: &OnceLock<Hasher>,
) {
    // SCHED_IDLE: the kernel runs this thread only when no normal thread wants the core, and a waking
    // API worker preempts it at once (nice 19 alone still leaves it a share of each core and makes the
    // worker wait for its slice). Both are per thread on Linux: this one only.
    use thread_priority::unix::{set_thread_priority_and_policy, thread_native_id};
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(error = ?e, "cannot give the password hashing thread the idle scheduling policy");
    }
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!(error = %e, "cannot lower the password hashing thread's priority");
    }
    loop {
        let task = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(task) = task else { return };
        waiting.fetch_sub(1, Ordering::Relaxed);
        room.notify_one();
        let h = hasher.get_or_init(PasswordHasher::new);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(h)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_answered_429_after_a_second_and_drains() {
        let pool = PasswordPool::new(1);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let spawn = || {
            let (p, gate, started_tx) = (pool.clone(), gate.clone(), started_tx.clone());
            tokio::spawn(async move {
                p.run(move |_| {
                    let _ = started_tx.send(());
                    let _ = gate.lock().unwrap().recv();
                    Ok(())
                })
                .await
            })
        };
        // One task runs (held at the gate), then the queue's worth waits behind it.
        let mut held = vec![spawn()];
        started.recv().await.unwrap();
        held.extend((0..QUEUE_PER_THREAD).map(|_| spawn()));
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while pool.waiting.load(Ordering::Relaxed) < QUEUE_PER_THREAD {
            assert!(tokio::time::Instant::now() < until, "the queue never filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = std::time::Instant::now();
        match pool.run(|_| Ok(())).await {
            Err(ConsoleError::TooMany { retry_after: 1, .. }) => {}
            other => panic!("a full queue answered {other:?}"),
        }
        assert!(asked.elapsed() >= FULL_WAIT, "answered before the wait was over");
        // Room that frees up during the wait is taken: one more task is admitted behind the gate
        // once a queued one starts.
        let late = {
            let p = pool.clone();
            tokio::spawn(async move { p.run(|_| Ok(())).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(release);
        late.await.unwrap().unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert_eq!(pool.waiting.load(Ordering::Relaxed), 0);
        pool.run(|_| Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn the_hashing_threads_run_at_the_lowest_priority() {
        let pool = PasswordPool::new(1);
        let nice = pool
            .run(|_| Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)))
            .await
            .unwrap();
        assert_eq!(nice, NICE);
        let policy = pool
            .run(|_| Ok(thread_priority::unix::thread_schedule_policy().ok()))
            .await
            .unwrap();
        assert_eq!(
            policy,
            Some(thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Idle
            ))
        );
        // A task that panics ends with an internal error; the thread lives on.
        assert!(matches!(
            pool.run(|_| -> Result<(), HashError> { panic!("boom") }).await,
            Err(ConsoleError::Internal(_))
        ));
        pool.run(|_| Ok(())).await.unwrap();
    }
}
