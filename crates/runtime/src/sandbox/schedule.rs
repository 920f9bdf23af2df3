//! Admission of real-model runs on one node: at most `runs` at once; a request that finds them all
//! busy waits in its account's queue, and the queues are served round-robin across accounts, so one
//! account's flood cannot starve another (each account's own requests keep their order). At most
//! `max_waiting` requests wait in all; past that a request is refused at once ([`Busy`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Too many requests are waiting already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

#[derive(Debug)]
pub(crate) struct Scheduler {
    runs: usize,
    max_waiting: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    waiting: usize,
    queues: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Accounts with someone waiting, in the order they are served next.
    turn: VecDeque<String>,
}

/// One admitted run; dropping it admits the next waiter (or frees the slot).
#[derive(Debug)]
pub(crate) struct Permit {
    sched: Arc<Scheduler>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sched.release();
    }
}

/// A wait that may be given up (its future dropped): a grant that arrived meanwhile is passed on.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    sched: Arc<Scheduler>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.sched.release();
            }
        }
    }
}

impl Scheduler {
    pub(crate) fn new(runs: usize, max_waiting: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            runs: runs.max(1),
            max_waiting,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a run slot for `account`.
    pub(crate) async fn admit(self: &Arc<Self>, account: &str) -> Result<Permit, Busy> {
        let rx = {
            let mut st = self.lock();
            if st.running < self.runs && st.turn.is_empty() {
                st.running += 1;
                return Ok(Permit { sched: self.clone() });
            }
            if st.waiting >= self.max_waiting {
                return Err(Busy);
            }
            let (tx, rx) = oneshot::channel();
            st.waiting += 1;
            let queue = st.queues.entry(account.to_owned()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.turn.push_back(account.to_owned());
            }
            rx
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            sched: self.clone(),
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender is only dropped after a grant was sent; an error cannot happen while the
            // scheduler lives, and the slot is ours either way.
            let _ = rx.await;
        }
        waiting.rx = None;
        Ok(Permit { sched: self.clone() })
    }

    /// Hands the slot to the next waiter in round-robin order, or frees it.
    fn release(&self) {
        let mut st = self.lock();
        while let Some(account) = st.turn.pop_front() {
            let Some(queue) = st.queues.get_mut(&account) else {
                continue;
            };
            let next = queue.pop_front();
            let more = !queue.is_empty();
            if more {
                st.turn.push_back(account);
            } else {
                st.queues.remove(&account);
            }
            if let Some(tx) = next {
                st.waiting -= 1;
                if tx.send(()).is_ok() {
                    return; // the slot passes to the waiter as it is
                }
            }
        }
        st.running = st.running.saturating_sub(1);
    }

    /// (running, waiting), for tests and metrics.
    pub(crate) fn load(&self) -> (usize, usize) {
        let st = self.lock();
        (st.running, st.waiting)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_served_round_robin_across_accounts() {
        let s = Scheduler::new(1, 100);
        let first = s.admit("a").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Account a queues four requests before b queues two.
        for (i, acct) in ["a", "a", "a", "a", "b", "b"].into_iter().enumerate() {
            let (s, tx) = (s.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let p = s.admit(acct).await.unwrap();
                tx.send(format!("{acct}{i}")).unwrap();
                tokio::task::yield_now().await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(s.load(), (1, 6));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let mut order = Vec::new();
        while let Ok(x) = rx.try_recv() {
            order.push(x);
        }
        assert_eq!(order, ["a0", "b4", "a1", "b5", "a2", "a3"]);
        assert_eq!(s.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_given_up_wait_passes_its_grant_on() {
        let s = Scheduler::new(1, 1);
        let p = s.admit("a").await.unwrap();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.admit("b").await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(s.admit("c").await.unwrap_err(), Busy);
        waiter.abort();
        let _ = waiter.await;
        drop(p);
        assert_eq!(s.load(), (0, 0));
        let again = s.admit("c").await.unwrap();
        assert_eq!(s.load(), (1, 0));
        drop(again);
    }
}
