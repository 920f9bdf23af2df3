//! Admission of real-model runs on one node: at most `runs` at once, and at most the account's own
//! cap of them for one account (its tier's concurrent runs). A request that cannot start waits in its
//! account's queue, and the queues are served round-robin across accounts, so one account's flood
//! cannot starve another (each account's own requests keep their order); an account at its cap is
//! passed over until one of its runs ends. At most `max_waiting` requests wait in all; past that a
//! request is refused at once ([`Busy`]).

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
    /// Accounts with a run going or a request waiting.
    accounts: HashMap<String, Account>,
    /// Accounts with someone waiting, in the order they are served next.
    turn: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Account {
    running: usize,
    /// The most runs this account may have at once (its latest request's cap).
    cap: usize,
    waiters: VecDeque<oneshot::Sender<()>>,
}

/// One admitted run; dropping it admits the next waiter (or frees the slot).
#[derive(Debug)]
pub(crate) struct Permit {
    sched: Arc<Scheduler>,
    account: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sched.release(&self.account);
    }
}

/// A wait that may be given up (its future dropped): a grant that arrived meanwhile is handed back.
struct Waiting<'a> {
    rx: Option<oneshot::Receiver<()>>,
    sched: &'a Scheduler,
    account: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.sched.release(self.account);
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

    /// Waits for a run slot for `account`, which may hold at most `cap` at once.
    pub(crate) async fn admit(self: &Arc<Self>, account: &str, cap: usize) -> Result<Permit, Busy> {
        let rx = {
            let mut st = self.lock();
            let runs = self.runs;
            let State {
                running,
                waiting,
                accounts,
                turn,
            } = &mut *st;
            let acct = accounts.entry(account.to_owned()).or_default();
            acct.cap = cap.max(1);
            if *running < runs && turn.is_empty() && acct.running < acct.cap {
                *running += 1;
                acct.running += 1;
                return Ok(Permit {
                    sched: self.clone(),
                    account: account.to_owned(),
                });
            }
            if *waiting >= self.max_waiting {
                if acct.running == 0 && acct.waiters.is_empty() {
                    accounts.remove(account);
                }
                return Err(Busy);
            }
            let (tx, rx) = oneshot::channel();
            *waiting += 1;
            acct.waiters.push_back(tx);
            if acct.waiters.len() == 1 {
                turn.push_back(account.to_owned());
            }
            // Slots may be free while every waiter ahead is at its cap.
            self.dispatch(&mut st);
            rx
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            sched: self,
            account,
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender is only dropped after a grant was sent or once the waiter gave up; the slot
            // is ours when this returns.
            let _ = rx.await;
        }
        waiting.rx = None;
        Ok(Permit {
            sched: self.clone(),
            account: account.to_owned(),
        })
    }

    /// Ends one of `account`'s runs and hands out the slots that are free now.
    fn release(&self, account: &str) {
        let mut st = self.lock();
        st.running = st.running.saturating_sub(1);
        if let Some(acct) = st.accounts.get_mut(account) {
            acct.running = acct.running.saturating_sub(1);
            if acct.running == 0 && acct.waiters.is_empty() {
                st.accounts.remove(account);
            }
        }
        self.dispatch(&mut st);
    }

    /// Grants free slots to waiters in round-robin order, passing over accounts at their cap.
    fn dispatch(&self, st: &mut State) {
        let mut passed = 0;
        while st.running < self.runs && passed < st.turn.len() {
            let Some(name) = st.turn.pop_front() else { break };
            let Some(acct) = st.accounts.get_mut(&name) else {
                continue;
            };
            if acct.running >= acct.cap {
                st.turn.push_back(name);
                passed += 1;
                continue;
            }
            let Some(tx) = acct.waiters.pop_front() else {
                continue;
            };
            st.waiting -= 1;
            let more = !acct.waiters.is_empty();
            if tx.send(()).is_ok() {
                acct.running += 1;
                st.running += 1;
                passed = 0;
            } else if acct.running == 0 && !more {
                st.accounts.remove(&name);
            }
            if more {
                st.turn.push_back(name);
            }
        }
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
        let first = s.admit("a", usize::MAX).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Account a queues four requests before b queues two.
        for (i, acct) in ["a", "a", "a", "a", "b", "b"].into_iter().enumerate() {
            let (s, tx) = (s.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let p = s.admit(acct, usize::MAX).await.unwrap();
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
        let p = s.admit("a", usize::MAX).await.unwrap();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.admit("b", usize::MAX).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(s.admit("c", usize::MAX).await.unwrap_err(), Busy);
        waiter.abort();
        let _ = waiter.await;
        drop(p);
        assert_eq!(s.load(), (0, 0));
        let again = s.admit("c", usize::MAX).await.unwrap();
        assert_eq!(s.load(), (1, 0));
        drop(again);
    }

    #[tokio::test]
    async fn an_account_at_its_cap_waits_while_others_use_the_free_slots() {
        let s = Scheduler::new(3, 100);
        let a1 = s.admit("a", 2).await.unwrap();
        let a2 = s.admit("a", 2).await.unwrap();
        // A third run of a waits although a slot is free; b takes that slot.
        let third = tokio::spawn({
            let s = s.clone();
            async move { s.admit("a", 2).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(s.load(), (2, 1));
        let b = s.admit("b", 2).await.unwrap();
        assert_eq!(s.load(), (3, 1));
        drop(b);
        tokio::task::yield_now().await;
        assert_eq!(s.load(), (2, 1), "a is still at its cap");
        drop(a1);
        third.await.unwrap().unwrap();
        drop(a2);
        assert_eq!(s.load(), (0, 0));
        assert!(s.lock().accounts.is_empty(), "nothing left behind");
    }
}
