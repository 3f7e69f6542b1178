//! A connection's requests driven inside the connection's own task, not one task each.
//!
//! With a task per request, each response write wakes the connection's task, which tokio runs
//! right after the request's task (its LIFO slot): every response then leaves in a write and a
//! wake-up of the client of its own. Driven together, the responses of all requests that are
//! ready are written before the connection is polled again, and leave together: one `writev`
//! (HTTP/2) or one `sendmsg` (HTTP/3, quinn) for several. A request that waits (for its guest
//! on a guest thread, its body, an origin) holds none of the others; one that panics fails
//! alone, as it did in a task of its own. What a connection gives up is running its requests
//! on both async threads at once: its inline guests run one after another on its thread, each
//! bounded by the inline path's slice (docs/architecture.md). Each poll of the connection's
//! task is a turn that polls requests for at most `TURN` (1 ms); those still woken then wait
//! for its next turn, and the thread serves its other connections meanwhile.
//!
//! hyper starts each HTTP/2 stream through its executor: `ConnExecutor` hands the stream to
//! the connection being polled (`drive`), or, outside one, spawns it as a task.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

/// One request's work, boxed to sit beside its connection's others.
pub type Request = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// Where the executor puts streams started while `drive` polls its connection.
    static STARTED: mpsc::UnboundedSender<Request>;
}

/// How long one turn of a connection's task may go on polling its requests: past it, the
/// requests still woken wait for the task's next turn, and the thread serves its other tasks.
/// A turn therefore holds its thread for the connection's own work (frames read and written,
/// bounded by tokio's cooperative budget), plus this long of requests, plus one more request's
/// poll (an inline run is bounded by its slice). Every turn polls at least one request, however
/// long the connection's own work took, so requests always progress.
const TURN: Duration = Duration::from_millis(1);

/// A turn in progress: when it began, and whether it has polled a request yet.
#[derive(Clone, Copy)]
struct Turn {
    started: Instant,
    polled: bool,
}

thread_local! {
    /// The turn of the connection task being polled on this thread.
    static TURN_NOW: Cell<Option<Turn>> = const { Cell::new(None) };
}

/// Run `poll` as a turn of a connection's task (see `TURN`).
fn in_turn<R>(poll: impl FnOnce() -> R) -> R {
    struct Restore(Option<Turn>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TURN_NOW.with(|turn| turn.set(self.0));
        }
    }
    let turn = Turn {
        started: Instant::now(),
        polled: false,
    };
    let _restore = Restore(TURN_NOW.with(|now| now.replace(Some(turn))));
    poll()
}

/// Whether a request may be polled now: always outside a turn and for a turn's first request,
/// then until the turn's time is over.
fn may_poll_a_request() -> bool {
    TURN_NOW.with(|now| match now.get() {
        None => true,
        Some(turn) if !turn.polled => {
            now.set(Some(Turn {
                polled: true,
                ..turn
            }));
            true
        }
        Some(turn) => turn.started.elapsed() < TURN,
    })
}

/// One request beside its neighbours. A panic while it is polled or dropped is caught, so it
/// fails alone (its response stream reset by its drop) and its neighbours run on; past its
/// task's turn it waits for the next.
struct Guarded {
    request: Option<Request>,
}

impl Guarded {
    /// Drop the request where a panic in its drop stays caught. True if that panicked.
    fn drop_request(&mut self) -> bool {
        let request = self.request.take();
        std::panic::catch_unwind(AssertUnwindSafe(move || drop(request))).is_err()
    }
}

impl Future for Guarded {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(request) = self.request.as_mut() else {
            return Poll::Ready(());
        };
        if !may_poll_a_request() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| request.as_mut().poll(cx)));
        let panicked = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => false,
            Err(_) => true,
        };
        if self.drop_request() || panicked {
            tracing::error!("a request panicked; its response stream is reset");
        }
        Poll::Ready(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.request.is_some() && self.drop_request() {
            tracing::error!("a request panicked as it was dropped");
        }
    }
}

/// A connection's requests, polled by its task (inside `turns`): `push` one, then poll `next`
/// with the connection's other work. Bounded by the protocol's concurrent-stream limit, which
/// the connection enforces before a request gets here.
#[derive(Default)]
pub struct Requests {
    set: FuturesUnordered<Guarded>,
}

impl Requests {
    pub fn push(&mut self, request: impl Future<Output = ()> + Send + 'static) {
        self.push_boxed(Box::pin(request));
    }

    fn push_boxed(&mut self, request: Request) {
        self.set.push(Guarded {
            request: Some(request),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Wait for any request to end; `None` when none is left.
    pub async fn next(&mut self) -> Option<()> {
        self.set.next().await
    }

    /// Poll every request that was woken; true if any ended.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        while let Poll::Ready(Some(())) = self.set.poll_next_unpin(cx) {
            any = true;
        }
        any
    }

    /// Let every request run to its end.
    pub async fn finish(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// hyper's executor for HTTP/2 streams: see the module's comment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnExecutor;

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let mut stream = Some(Box::pin(stream) as Request);
        let _ = STARTED.try_with(|started| {
            if let Some(s) = stream.take() {
                if let Err(refused) = started.send(s) {
                    stream = Some(refused.0);
                }
            }
        });
        if let Some(s) = stream {
            tokio::spawn(s);
        }
    }
}

/// Run `connection` (a hyper connection served with `ConnExecutor`) and the streams it
/// starts, all in the calling task, until the connection has ended and its streams with it.
/// The connection comes boxed (`Box::pin`) where its type is known to be `Send`.
pub fn drive<C: Future + Unpin>(connection: C) -> Driven<C> {
    let (started, rx) = mpsc::unbounded_channel();
    Driven {
        connection: Some(connection),
        started,
        rx,
        requests: Requests::default(),
        output: None,
    }
}

/// `connection` (one that polls a `Requests`), each poll of it a turn (see `TURN`).
pub fn turns<C: Future>(connection: C) -> Turns<C> {
    Turns {
        connection: Box::pin(connection),
    }
}

/// What `turns` returns.
pub struct Turns<C> {
    connection: Pin<Box<C>>,
}

impl<C: Future> Future for Turns<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let connection = self.connection.as_mut();
        in_turn(|| connection.poll(cx))
    }
}

/// Rounds of the connection and its requests one poll of `Driven` runs after the first.
const ROUNDS: u32 = 2;

/// What `drive` returns.
pub struct Driven<C: Future> {
    /// Dropped once it has ended, which tells the streams still open that it has.
    connection: Option<C>,
    started: mpsc::UnboundedSender<Request>,
    rx: mpsc::UnboundedReceiver<Request>,
    requests: Requests,
    output: Option<C::Output>,
}

impl<C> Future for Driven<C>
where
    C: Future + Unpin,
    C::Output: Unpin,
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let driven = self.get_mut();
        in_turn(|| driven.turn(cx))
    }
}

impl<C> Driven<C>
where
    C: Future + Unpin,
    C::Output: Unpin,
{
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut rounds = 0;
        loop {
            if let Some(connection) = self.connection.as_mut() {
                let connection = Pin::new(connection);
                if let Poll::Ready(out) =
                    STARTED.sync_scope(self.started.clone(), || connection.poll(cx))
                {
                    self.output = Some(out);
                    self.connection = None;
                }
            }
            let mut started = false;
            while let Poll::Ready(Some(request)) = self.rx.poll_recv(cx) {
                self.requests.push_boxed(request);
                started = true;
            }
            let ended = self.requests.poll_ended(cx);
            if self.output.is_some() {
                if self.requests.is_empty() {
                    if let Some(out) = self.output.take() {
                        return Poll::Ready(out);
                    }
                }
                return Poll::Pending;
            }
            // A request that started or ended leaves the connection work to do now (the
            // frames after it, the responses to write). After a few rounds the task yields to
            // the others on its thread: whatever is left has woken it already (a response
            // written wakes the connection), so it is polled again.
            if !(started || ended) || rounds == ROUNDS {
                return Poll::Pending;
            }
            rounds += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hyper::rt::Executor;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_request_that_panics_fails_alone() {
        runtime().block_on(async {
            let done = Arc::new(AtomicUsize::new(0));
            let mut requests = Requests::default();
            requests.push(async { panic!("a bug in one request") });
            for _ in 0..3 {
                let done = done.clone();
                requests.push(async move {
                    tokio::task::yield_now().await;
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            requests.finish().await;
            assert_eq!(done.load(Ordering::SeqCst), 3);
            assert!(requests.is_empty());
        });
    }

    fn spin(time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    /// Poll the requests woken, as one turn of their connection's task does.
    async fn one_turn(requests: &mut Requests) {
        std::future::poll_fn(|cx| {
            in_turn(|| requests.poll_ended(cx));
            Poll::Ready(())
        })
        .await;
    }

    #[test]
    fn a_turn_polls_requests_for_at_most_its_time_then_leaves_them_woken() {
        runtime().block_on(async {
            let ran = Arc::new(AtomicUsize::new(0));
            let mut requests = Requests::default();
            for _ in 0..50 {
                let ran = ran.clone();
                requests.push(async move {
                    // Holds its thread 400 µs when first polled, as an inline run does.
                    spin(Duration::from_micros(400));
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
            one_turn(&mut requests).await;
            let in_one_turn = ran.load(Ordering::SeqCst);
            assert!(
                in_one_turn <= 3,
                "{in_one_turn} requests of 400 µs ran in one turn of {TURN:?}"
            );
            // A turn whose connection's own work took all its time still runs one request.
            let before = ran.load(Ordering::SeqCst);
            std::future::poll_fn(|cx| {
                in_turn(|| {
                    spin(Duration::from_micros(1_200));
                    requests.poll_ended(cx)
                });
                Poll::Ready(())
            })
            .await;
            assert_eq!(
                ran.load(Ordering::SeqCst) - before,
                1,
                "a turn over at its start"
            );
            // The others were left woken, and run in the turns that follow.
            let mut turns = 1;
            while !requests.is_empty() {
                one_turn(&mut requests).await;
                tokio::task::yield_now().await;
                turns += 1;
                assert!(
                    turns < 1_000,
                    "{} requests left",
                    50 - ran.load(Ordering::SeqCst)
                );
            }
            assert_eq!(ran.load(Ordering::SeqCst), 50);
        });
    }

    /// A connection that starts `n` streams through the executor on its first poll (each
    /// waiting a little, then noting the task it runs in), and ends when all have ended.
    struct Connection {
        n: usize,
        started: bool,
        /// Ends as soon as it has started its streams (as a connection reset would).
        at_once: bool,
        tasks: Ended,
    }

    type Ended = Arc<std::sync::Mutex<Vec<Option<tokio::task::Id>>>>;

    impl Connection {
        /// The connection, and the tasks its streams ended in, as they end.
        fn new(n: usize, at_once: bool) -> (Self, Ended) {
            let tasks = Ended::default();
            let connection = Connection {
                n,
                started: false,
                at_once,
                tasks: tasks.clone(),
            };
            (connection, tasks)
        }
    }

    impl Future for Connection {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                for _ in 0..self.n {
                    let (tasks, waker) = (self.tasks.clone(), cx.waker().clone());
                    ConnExecutor.execute(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        tasks.lock().expect("lock").push(tokio::task::try_id());
                        waker.wake();
                    });
                }
            }
            let ended = self.tasks.lock().expect("lock").len();
            if ended == self.n || self.at_once {
                Poll::Ready(ended)
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn a_connections_streams_run_in_its_task_and_it_ends_after_them() {
        runtime().block_on(async {
            let (connection, tasks) = Connection::new(5, false);
            let driving = tokio::spawn(async move {
                let ended = drive(Box::pin(connection)).await;
                (ended, tokio::task::id())
            });
            let (ended, driver) = driving.await.expect("driven");
            assert_eq!(ended, 5);
            let tasks = tasks.lock().expect("lock").clone();
            assert_eq!(
                tasks,
                vec![Some(driver); 5],
                "every stream ran in the connection's task"
            );
        });
    }

    #[test]
    fn a_connection_that_ends_first_is_driven_until_its_streams_have_ended() {
        runtime().block_on(async {
            let (connection, tasks) = Connection::new(3, true);
            assert_eq!(drive(Box::pin(connection)).await, 0);
            assert_eq!(tasks.lock().expect("lock").len(), 3, "streams left running");
        });
    }

    #[test]
    fn a_stream_started_outside_a_driven_connection_gets_a_task_of_its_own() {
        runtime().block_on(async {
            let (connection, tasks) = Connection::new(2, false);
            let driving = tokio::spawn(async move {
                let ended = connection.await;
                (ended, tokio::task::id())
            });
            let (ended, driver) = driving.await.expect("polled");
            assert_eq!(ended, 2);
            let tasks = tasks.lock().expect("lock").clone();
            assert!(
                tasks.iter().all(|t| t.is_some() && *t != Some(driver)),
                "{tasks:?} (the connection's task: {driver:?})"
            );
        });
    }
}
