//! Cross-core calls over a glommio channel mesh.
//!
//! ```text
//!  core A task ── call(B, job) ──► [bounded A→B channel] ──► B's receiver task
//!       ▲                                                        │ spawns job on B
//!       └──── pending[id] ◄── B's receiver on A ◄── Reply(id) ◄──┘
//! ```
//!
//! A job is a `Send` closure run on the target core, where it reaches that core's state through
//! [`crate::core::current`]; its result comes back as a `Box<dyn Any + Send>`. Nothing mutable
//! is shared between cores: only the messages move. Channels are bounded (back-pressure at
//! [`MESH_CHANNEL_CAPACITY`]). Receiver tasks never wait on a send themselves (jobs and replies
//! are handled in spawned tasks), so two cores calling each other cannot deadlock.

use glommio::channels::channel_mesh::{Receivers, Senders};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Messages in flight per ordered pair of cores.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

type Reply = Box<dyn Any + Send>;
type LocalJobFuture = Pin<Box<dyn Future<Output = Reply>>>;
type Job = Box<dyn FnOnce() -> LocalJobFuture + Send>;

/// What travels between cores.
pub enum MeshMsg {
    Call { id: u64, job: Job },
    Reply { id: u64, value: Reply },
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("core {0} is gone")]
    PeerGone(usize),
    #[error("core {0} does not exist")]
    NoSuchCore(usize),
}

/// This core's end of the mesh.
pub struct Mesh {
    me: usize,
    cores: usize,
    senders: Senders<MeshMsg>,
    next_id: Cell<u64>,
    pending: RefCell<HashMap<u64, Rc<Slot>>>,
}

impl Mesh {
    pub fn new(senders: Senders<MeshMsg>) -> Rc<Mesh> {
        Rc::new(Mesh {
            me: senders.peer_id(),
            cores: senders.nr_consumers(),
            senders,
            next_id: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
        })
    }

    /// This core's index (its mesh peer id).
    pub fn me(&self) -> usize {
        self.me
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Starts one task per peer that receives calls and replies.
    pub fn start(self: &Rc<Self>, mut receivers: Receivers<MeshMsg>) {
        for (peer, stream) in receivers.streams() {
            let mesh = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = stream.recv().await {
                    mesh.on_message(peer, msg);
                }
            })
            .detach();
        }
    }

    /// Runs `job` on core `core` and returns its result. Runs inline on this core when
    /// `core` is this one.
    pub async fn call<R, F, Fut>(&self, core: usize, job: F) -> Result<R, MeshError>
    where
        R: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if core == self.me {
            return Ok(job().await);
        }
        if core >= self.cores {
            return Err(MeshError::NoSuchCore(core));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let slot = Rc::new(Slot::default());
        self.pending.borrow_mut().insert(id, slot.clone());
        let boxed: Job = Box::new(move || Box::pin(async move { Box::new(job().await) as Reply }));
        if self
            .senders
            .send_to(core, MeshMsg::Call { id, job: boxed })
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&id);
            return Err(MeshError::PeerGone(core));
        }
        let value = SlotWait(slot).await;
        value
            .downcast::<R>()
            .map(|b| *b)
            .map_err(|_| MeshError::PeerGone(core))
    }

    fn on_message(self: &Rc<Self>, peer: usize, msg: MeshMsg) {
        match msg {
            MeshMsg::Call { id, job } => {
                let mesh = self.clone();
                glommio::spawn_local(async move {
                    let value = job().await;
                    // A closed channel means the peer is shutting down; nobody waits any more.
                    let _ = mesh
                        .senders
                        .send_to(peer, MeshMsg::Reply { id, value })
                        .await;
                })
                .detach();
            }
            MeshMsg::Reply { id, value } => {
                if let Some(slot) = self.pending.borrow_mut().remove(&id) {
                    slot.fill(value);
                }
            }
        }
    }
}

/// A one-shot, single-core rendezvous between a reply and the task waiting for it.
#[derive(Default)]
struct Slot {
    value: RefCell<Option<Reply>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, value: Reply) {
        *self.value.borrow_mut() = Some(value);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct SlotWait(Rc<Slot>);

impl Future for SlotWait {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if let Some(v) = self.0.value.borrow_mut().take() {
            return Poll::Ready(v);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A single-core notification: tasks wait until `notify_all` is called after they started
/// waiting. A waiter that goes away (timed out, cancelled) removes its waker, so idle waiters do
/// not accumulate.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    next_waiter: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers: Vec<Waker> = self.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub fn notified(&self) -> Notified<'_> {
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        Notified {
            notify: self,
            start: self.generation.get(),
            id,
        }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    start: u64,
    id: u64,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.start {
            return Poll::Ready(());
        }
        self.notify
            .wakers
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        self.notify.wakers.borrow_mut().remove(&self.id);
    }
}
