//! The vhost-user-fs backend: serves [`Server`]s to a VMM over unix sockets.
//!
//! # One process per VM
//!
//! A VM's shares are all served by ONE daemon process: one listening socket and one set of
//! backend threads (the vhost-user request thread plus one queue worker) per share. Compared
//! with one process per share (upstream virtiofsd's model), this
//! - costs one process image, one set of page tables and one sandbox instead of N;
//! - has no start-order races: the VMM creates every listening socket before it spawns the
//!   daemon and hands them over as inherited fds, so its `connect` succeeds at once (the
//!   kernel's backlog queues it) even before the child runs, and no socket path has to appear
//!   in time;
//! - needs one sandbox (mount namespace) holding exactly the VM's shares, and one process
//!   to kill and reap when the VM exits.
//!
//! # Queues
//!
//! virtio-fs has a high-priority queue (0, FORGET and INTERRUPT) and request queues (1..); we
//! offer one request queue. One worker thread serves both queues: each wake-up drains every
//! enabled queue with [`serve_available_budget`], round robin with a per-call budget, until
//! none has work left, so a flood of requests cannot starve the high-priority queue. The guest
//! is signalled only when the ring says it wants to be (EVENT_IDX aware).

mod sandbox;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::queue_loop::{serve_available_budget, Served};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::{Server, ServerError, ShareOptions};

pub use sandbox::{SandboxError, SandboxMode};

/// The high-priority queue (FORGET, INTERRUPT).
pub const HIPRIO_QUEUE: usize = 0;
/// The one request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Queues of the device: hiprio + one request queue.
pub const NUM_QUEUES: usize = 2;
/// The largest queue size the backend accepts.
pub const QUEUE_SIZE: usize = 1024;
/// Ring entries one queue may consume before the worker looks at the other queue.
pub const QUEUE_BUDGET: u32 = 64;

/// The virtio features the backend offers.
pub const BACKEND_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The vhost-user protocol features the backend offers.
pub fn backend_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// Why the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A share's FUSE server could not be created.
    #[error("create the server of share {tag}")]
    CreateServer {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: ServerError,
    },
    /// The vhost-user daemon object could not be created.
    #[error("create the vhost-user daemon of share {tag}")]
    CreateDaemon {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: VhostUserFailure,
    },
    /// Accepting the frontend's connection or starting the request thread failed.
    #[error("accept the frontend of share {tag}")]
    Accept {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: VhostUserFailure,
    },
    /// The vhost-user connection ended with an error.
    #[error("serve the frontend of share {tag}")]
    Serve {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: VhostUserFailure,
    },
    /// The worker's exit eventfd could not be created.
    #[error("create the exit eventfd of share {tag}")]
    ExitEvent {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A share thread could not be spawned.
    #[error("spawn the thread of share {tag}")]
    SpawnThread {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A share thread panicked.
    #[error("the thread of share {tag} panicked")]
    ThreadPanicked {
        /// The share.
        tag: String,
    },
    /// Entering the sandbox failed.
    #[error("enter the sandbox")]
    Sandbox(#[source] SandboxError),
}

/// A `vhost_user_backend::Error` (which implements `Display` but not `std::error::Error`).
#[derive(Debug)]
pub struct VhostUserFailure(pub vhost_user_backend::Error);

impl std::fmt::Display for VhostUserFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for VhostUserFailure {}

/// One share the daemon serves: a listening socket and what to serve on it.
#[derive(Debug)]
pub struct DaemonShare {
    /// The tag (for logs and errors).
    pub tag: String,
    /// A bound, listening socket; the daemon accepts one frontend on it.
    pub listener: UnixListener,
    /// The share.
    pub options: ShareOptions,
}

/// Serves every share until each share's frontend has connected and disconnected again (the
/// VMM exited or reset the connection). Shares are served concurrently; the first error is
/// returned once all shares are done.
///
/// With `sandbox` other than [`SandboxMode::None`] the calling process first moves into a
/// mount namespace holding only the shared directories (module `sandbox`); the servers open
/// the shares from inside it.
pub fn serve(mut shares: Vec<DaemonShare>, sandbox: SandboxMode) -> Result<(), DaemonError> {
    let sources: Vec<PathBuf> = shares.iter().map(|s| s.options.source.clone()).collect();
    let read_only: Vec<bool> = shares.iter().map(|s| s.options.read_only).collect();
    let inside = sandbox::enter(sandbox, &sources, &read_only).map_err(DaemonError::Sandbox)?;
    for (share, path) in shares.iter_mut().zip(inside) {
        share.options.source = path;
    }
    let mut threads = Vec::with_capacity(shares.len());
    for share in shares {
        let tag = share.tag.clone();
        let handle = std::thread::Builder::new()
            .name(format!("fs-{tag}"))
            .spawn(move || {
                let result = serve_share(share);
                if let Err(e) = &result {
                    log::error!("virtiofsd: {}", error_chain(e));
                }
                result
            })
            .map_err(|source| DaemonError::SpawnThread {
                tag: tag.clone(),
                source,
            })?;
        threads.push((tag, handle));
    }
    let mut first_err = None;
    for (tag, handle) in threads {
        let result = handle
            .join()
            .unwrap_or(Err(DaemonError::ThreadPanicked { tag }));
        if let Err(e) = result {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Serves one share on its listener: accepts one frontend and serves it until it hangs up.
pub fn serve_share(share: DaemonShare) -> Result<(), DaemonError> {
    let DaemonShare {
        tag,
        listener,
        options,
    } = share;
    let server = Server::new(options).map_err(|source| DaemonError::CreateServer {
        tag: tag.clone(),
        source,
    })?;
    let backend = Arc::new(
        FsBackend::new(server).map_err(|source| DaemonError::ExitEvent {
            tag: tag.clone(),
            source,
        })?,
    );
    let mut daemon = VhostUserDaemon::new(
        format!("vhost-fs-{tag}"),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| DaemonError::CreateDaemon {
        tag: tag.clone(),
        source: VhostUserFailure(e),
    })?;
    let mut listener = Listener::from(listener);
    daemon
        .start(&mut listener)
        .map_err(|e| DaemonError::Accept {
            tag: tag.clone(),
            source: VhostUserFailure(e),
        })?;
    log::info!("virtiofsd: share {tag}: frontend connected");
    let result = daemon.wait();
    // The queue worker exits on its exit eventfd.
    backend.signal_exit();
    match result {
        Ok(()) => {
            log::info!("virtiofsd: share {tag}: frontend disconnected");
            Ok(())
        }
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(DaemonError::Serve {
            tag,
            source: VhostUserFailure(e),
        }),
    }
}

/// `e` and its causes, joined with ": " (for log lines).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// The vhost-user backend of one share.
pub struct FsBackend {
    server: Server,
    mem: Mutex<Option<Mem>>,
    /// Queues whose available ring was found corrupt: not served again (and not logged
    /// again) until the frontend stops the ring (GET_VRING_BASE, i.e. a device reset).
    stalled: [AtomicBool; NUM_QUEUES],
    exit: (
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    ),
}

impl std::fmt::Debug for FsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBackend")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl FsBackend {
    /// A backend serving `server`.
    pub fn new(server: Server) -> io::Result<Self> {
        Ok(Self {
            server,
            mem: Mutex::new(None),
            stalled: Default::default(),
            exit: vmm_sys_util::event::new_event_consumer_and_notifier(
                vmm_sys_util::event::EventFlag::NONBLOCK,
            )?,
        })
    }

    fn signal_exit(&self) {
        let _ = self.exit.1.notify();
    }

    /// Drains every enabled queue, round robin with [`QUEUE_BUDGET`], until none has work.
    fn serve_queues(&self, vrings: &[VringRwLock<Mem>]) -> io::Result<()> {
        let Some(atomic) = self.mem.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            log::warn!("virtiofsd: queue kicked before the memory table was set");
            return Ok(());
        };
        let mem = atomic.memory();
        loop {
            let mut more = false;
            for (index, vring) in vrings.iter().enumerate() {
                let mut state = vring.get_mut();
                let stalled = self.stalled.get(index);
                if !state.is_enabled()
                    || !state.get_queue().ready()
                    || stalled.is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    continue;
                }
                let name = if index == HIPRIO_QUEUE {
                    "virtio-fs hiprio"
                } else {
                    "virtio-fs request"
                };
                let drained = serve_available_budget(
                    name,
                    state.get_queue_mut(),
                    &*mem,
                    QUEUE_BUDGET,
                    |chain| Served::Used(self.server.handle_chain(&*mem, chain)),
                );
                more |= drained.exhausted;
                if drained.stalled {
                    if let Some(s) = stalled {
                        s.store(true, Ordering::Relaxed);
                    }
                }
                if drained.notify {
                    if let Err(e) = state.signal_used_queue() {
                        log::warn!("virtiofsd: cannot signal queue {index}: {e}");
                    }
                }
            }
            if !more {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        BACKEND_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        backend_protocol_features()
    }

    fn reset_device(&self) {
        self.server.end_session();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The handler sets EVENT_IDX on the vrings; `serve_available_budget` asks the queue.
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let index = usize::try_from(queue_index).ok();
        if let Some(s) = index.and_then(|i| self.stalled.get(i)) {
            s.store(false, Ordering::Relaxed);
        }
        // The frontend stops every ring (GET_VRING_BASE) when the guest resets the device; the
        // request queue stopping is where the FUSE session of that driver instance ends.
        if index.is_some_and(|q| q != HIPRIO_QUEUE) {
            self.server.end_session();
        }
        Ok(())
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(
        &self,
        _thread_index: usize,
    ) -> Option<(
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    )> {
        let consumer = self.exit.0.try_clone().ok()?;
        let notifier = self.exit.1.try_clone().ok()?;
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected event set {evset:?} on queue {device_event}"
            )));
        }
        if usize::from(device_event) >= NUM_QUEUES {
            return Err(io::Error::other(format!(
                "event for nonexistent queue {device_event}"
            )));
        }
        self.serve_queues(vrings)
    }
}
