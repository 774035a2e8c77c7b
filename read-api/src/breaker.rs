//! Circuit breakers in front of the read models, so that a slow or dead Redis or Postgres
//! costs a scan nothing once it has failed a few times in a row.
//!
//! The state machine is `failsafe`'s (futures-aware, runtime-agnostic, pluggable failure
//! policy and instrumentation): it opens after `failures` consecutive failures, rejects
//! calls for `open_for`, then lets calls through half-open; the first success closes it,
//! a failure opens it again. This module adds what failsafe leaves to its user: a
//! per-call deadline that counts as a failure, and metrics and logs of the transitions.

use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{Config, Instrument, StateMachine};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Why a guarded call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable<E> {
    /// The circuit is open: the call was not attempted.
    #[error("circuit open after repeated failures; not attempted")]
    Open,
    #[error("timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error(transparent)]
    Failed(E),
}

impl<E> Unavailable<E> {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Unavailable::Open => "open",
            Unavailable::TimedOut(_) => "timeout",
            Unavailable::Failed(_) => "error",
        }
    }
}

/// The breaker's state as last reported by the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// Publishes transitions as the gauge `read_model_circuit_state{model}` (0 closed,
/// 1 half-open, 2 open), counts rejected calls and logs every transition.
#[derive(Clone)]
struct Observer {
    model: &'static str,
    state: Arc<AtomicU8>,
}

impl Observer {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
        metrics::gauge!("read_model_circuit_state", "model" => self.model).set(f64::from(state));
    }
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {
        metrics::counter!("read_model_calls_rejected_total", "model" => self.model).increment(1);
    }

    fn on_open(&self) {
        self.set(OPEN);
        tracing::warn!(read_model = self.model, "circuit opened: falling back");
    }

    fn on_half_open(&self) {
        self.set(HALF_OPEN);
        tracing::info!(read_model = self.model, "circuit half-open: probing");
    }

    fn on_closed(&self) {
        let was = self.state.swap(CLOSED, Ordering::Relaxed);
        metrics::gauge!("read_model_circuit_state", "model" => self.model).set(0.0);
        if was != CLOSED {
            tracing::info!(read_model = self.model, "circuit closed: recovered");
        }
    }
}

/// A circuit breaker with a per-call deadline.
#[derive(Clone)]
pub struct Breaker {
    timeout: Duration,
    machine: StateMachine<ConsecutiveFailures<Constant>, Observer>,
    observer: Observer,
}

impl Breaker {
    /// Opens after `failures` consecutive failures or timeouts; half-open after `open_for`.
    pub fn new(model: &'static str, failures: u32, open_for: Duration, timeout: Duration) -> Self {
        let observer = Observer {
            model,
            state: Arc::new(AtomicU8::new(CLOSED)),
        };
        let machine = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                failures,
                backoff::constant(open_for),
            ))
            .instrument(observer.clone())
            .build();
        Breaker {
            timeout,
            machine,
            observer,
        }
    }

    /// Runs `call` unless the circuit is open; an error or running past the deadline is a
    /// failure (the call is then dropped), any `Ok`, including "not found", a success.
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Unavailable<E>> {
        let timeout = self.timeout;
        // The deadline sits inside the breaker's future so that it is recorded as a failure;
        // a future dropped from outside would be recorded as nothing at all.
        let bounded = async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Unavailable::Failed(e)),
                Err(_) => Err(Unavailable::TimedOut(timeout)),
            }
        };
        match self.machine.call(bounded).await {
            Ok(v) => Ok(v),
            Err(failsafe::Error::Rejected) => Err(Unavailable::Open),
            Err(failsafe::Error::Inner(e)) => Err(e),
        }
    }

    /// The state at the last transition (an open circuit whose wait is over still reads
    /// `Open` until a call probes it).
    pub fn state(&self) -> State {
        match self.observer.state.load(Ordering::Relaxed) {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new("test", 3, open_for, Duration::from_millis(50))
    }

    async fn fail(b: &Breaker) -> Unavailable<&'static str> {
        b.call(async { Err::<(), _>("down") }).await.unwrap_err()
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_then_does_not_call() {
        let b = breaker(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(matches!(fail(&b).await, Unavailable::Failed("down")));
        }
        assert_eq!(b.state(), State::Open);
        let attempted = AtomicU32::new(0);
        let r = b
            .call(async {
                attempted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(1)
            })
            .await;
        assert!(matches!(r, Err(Unavailable::Open)));
        assert_eq!(
            attempted.load(Ordering::SeqCst),
            0,
            "an open circuit calls nothing"
        );
    }

    #[tokio::test]
    async fn a_success_resets_the_count_of_consecutive_failures() {
        let b = breaker(Duration::from_secs(60));
        fail(&b).await;
        fail(&b).await;
        assert_eq!(
            b.call(async { Ok::<_, ()>(None::<u8>) }).await.unwrap(),
            None
        );
        fail(&b).await;
        fail(&b).await;
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_failure() {
        let b = breaker(Duration::from_secs(60));
        for _ in 0..3 {
            let r = b
                .call(async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<_, ()>(())
                })
                .await;
            assert!(matches!(r, Err(Unavailable::TimedOut(_))));
        }
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test]
    async fn half_open_after_the_wait_then_closes_on_success_or_reopens_on_failure() {
        let b = breaker(Duration::from_millis(100));
        for _ in 0..3 {
            fail(&b).await;
        }
        assert!(matches!(fail(&b).await, Unavailable::Open));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The probe fails: open again, for another wait.
        assert!(matches!(fail(&b).await, Unavailable::Failed(_)));
        assert_eq!(b.state(), State::Open);
        assert!(matches!(fail(&b).await, Unavailable::Open));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The probe succeeds: closed, and calls go through again.
        assert_eq!(b.call(async { Ok::<_, ()>(7) }).await.unwrap(), 7);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.call(async { Ok::<_, ()>(8) }).await.unwrap(), 8);
    }
}
