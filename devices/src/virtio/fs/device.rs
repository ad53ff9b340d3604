//! The virtio-fs vhost-user frontend device model.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, EventGlue, VirtioDevice,
    VirtioInterrupt,
};

/// Queues: hiprio (0) and one request queue (1).
pub const NUM_QUEUES: usize = 2;
/// The maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Bytes of the tag field in the config space.
pub const TAG_LEN: usize = 36;
/// Bytes of the config space: tag + le32 num_request_queues.
pub const CONFIG_SIZE: usize = TAG_LEN + 4;

/// How long the frontend waits for a backend reply.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The virtio features the frontend can pass through (ring features; the backend's
/// device-specific bits are not used by virtio-fs today).
const SUPPORTED_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;

/// Protocol features the frontend uses when the backend has them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// Why a vhost-user step failed; each variant is the step.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than [`TAG_LEN`] bytes.
    #[error("tag {0:?} must be 1..=36 bytes")]
    Tag(String),
    /// Connecting to the backend socket failed.
    #[error("connect to the vhost-user backend")]
    Connect(#[source] std::io::Error),
    /// VHOST_USER_SET_OWNER failed.
    #[error("vhost-user SET_OWNER")]
    SetOwner(#[source] vhost::Error),
    /// VHOST_USER_GET_FEATURES failed.
    #[error("vhost-user GET_FEATURES")]
    GetFeatures(#[source] vhost::Error),
    /// The backend does not offer VIRTIO_F_VERSION_1.
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    /// VHOST_USER_GET_PROTOCOL_FEATURES failed.
    #[error("vhost-user GET_PROTOCOL_FEATURES")]
    GetProtocolFeatures(#[source] vhost::Error),
    /// VHOST_USER_SET_PROTOCOL_FEATURES failed.
    #[error("vhost-user SET_PROTOCOL_FEATURES")]
    SetProtocolFeatures(#[source] vhost::Error),
    /// VHOST_USER_SET_FEATURES failed.
    #[error("vhost-user SET_FEATURES")]
    SetFeatures(#[source] vhost::Error),
    /// A guest memory region has no file behind it (vhost-user needs a memfd).
    #[error("guest memory region at {0:#x} is not file-backed")]
    MemoryRegion(u64, #[source] vhost::Error),
    /// VHOST_USER_SET_MEM_TABLE failed.
    #[error("vhost-user SET_MEM_TABLE")]
    SetMemTable(#[source] vhost::Error),
    /// A ring address is not in guest memory.
    #[error("queue {0}: ring address {1:#x} is not in guest memory")]
    RingAddress(usize, u64),
    /// Creating a call eventfd failed.
    #[error("queue {0}: create the call eventfd")]
    CallEventFd(usize, #[source] std::io::Error),
    /// VHOST_USER_SET_VRING_NUM failed.
    #[error("queue {0}: vhost-user SET_VRING_NUM")]
    SetVringNum(usize, #[source] vhost::Error),
    /// VHOST_USER_SET_VRING_ADDR failed.
    #[error("queue {0}: vhost-user SET_VRING_ADDR")]
    SetVringAddr(usize, #[source] vhost::Error),
    /// VHOST_USER_SET_VRING_BASE failed.
    #[error("queue {0}: vhost-user SET_VRING_BASE")]
    SetVringBase(usize, #[source] vhost::Error),
    /// VHOST_USER_SET_VRING_CALL failed.
    #[error("queue {0}: vhost-user SET_VRING_CALL")]
    SetVringCall(usize, #[source] vhost::Error),
    /// VHOST_USER_SET_VRING_KICK failed.
    #[error("queue {0}: vhost-user SET_VRING_KICK")]
    SetVringKick(usize, #[source] vhost::Error),
    /// VHOST_USER_SET_VRING_ENABLE failed.
    #[error("queue {0}: vhost-user SET_VRING_ENABLE")]
    SetVringEnable(usize, #[source] vhost::Error),
    /// The backend connection was lost earlier; the device no longer works.
    #[error("the vhost-user backend disconnected")]
    Disconnected,
}

impl From<FsError> for ActivateError {
    fn from(e: FsError) -> Self {
        ActivateError::Device(Box::new(e))
    }
}

/// What the device has while activated.
struct Active {
    interrupt: Arc<VirtioInterrupt>,
    /// The call eventfds handed to the backend (the glue watches clones).
    _call_evts: Vec<EventFd>,
    queues: usize,
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct Fs {
    pub(super) glue: EventGlue,
    frontend: Frontend,
    config: [u8; CONFIG_SIZE],
    avail_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was negotiated.
    protocol: bool,
    active: Option<Active>,
    queue_sizes: [u16; NUM_QUEUES],
    /// Set once the backend connection failed; the failure was logged.
    pub(super) broken: bool,
    tag: String,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the backend listening on `socket`.
    pub fn connect(tag: &str, socket: &Path) -> Result<Self, FsError> {
        let stream = UnixStream::connect(socket).map_err(FsError::Connect)?;
        Self::with_stream(tag, stream)
    }

    /// Takes over a connected backend socket and runs the handshake: SET_OWNER,
    /// GET_FEATURES, and (if offered) GET/SET_PROTOCOL_FEATURES.
    pub fn with_stream(tag: &str, stream: UnixStream) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_owned()));
        }
        // A backend that stops answering must not hang the VMM (the handshake runs while
        // building, activation on a vCPU thread): replies time out.
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(FsError::Connect)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(FsError::SetOwner)?;
        let backend_features = frontend.get_features().map_err(FsError::GetFeatures)?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NoVersion1(backend_features));
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol = backend_features & protocol_bit != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(FsError::GetProtocolFeatures)?;
            frontend
                .set_protocol_features(offered & wanted_protocol_features())
                .map_err(FsError::SetProtocolFeatures)?;
        }
        let mut config = [0u8; CONFIG_SIZE];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            glue: EventGlue::new().map_err(FsError::Connect)?,
            frontend,
            config,
            avail_features: (backend_features & SUPPORTED_FEATURES) | VIRTIO_F_VERSION_1,
            protocol,
            active: None,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            broken: false,
            tag: tag.to_owned(),
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the backend connection has failed.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The backend socket (watched by the event glue for hang-ups).
    pub(super) fn backend_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.frontend)
    }

    /// A call eventfd fired: the backend used buffers of a queue.
    pub(super) fn signal_used(&self) {
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_used_queue() {
                crate::guest_warn!("virtio-fs {}: cannot raise the interrupt: {e}", self.tag);
            }
        }
    }

    /// Marks the backend lost (logged once).
    pub(super) fn mark_broken(&mut self, why: &dyn std::fmt::Display) {
        if !self.broken {
            log::error!(
                "virtio-fs {}: vhost-user backend lost ({why}); the device stops working",
                self.tag
            );
            self.broken = true;
        }
    }

    fn start(&mut self, args: ActivateArgs) -> Result<Active, FsError> {
        let features = args.acked_features
            | if self.protocol {
                VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            } else {
                0
            };
        self.frontend
            .set_features(features)
            .map_err(FsError::SetFeatures)?;
        self.frontend
            .set_mem_table(&memory_regions(&args.mem)?)
            .map_err(FsError::SetMemTable)?;
        let mut call_evts = Vec::with_capacity(args.queues.len());
        for (index, (queue, kick)) in args.queues.iter().zip(&args.queue_evts).enumerate() {
            let call = EventFd::new(EFD_NONBLOCK).map_err(|e| FsError::CallEventFd(index, e))?;
            self.start_queue(index, queue, &args.mem, kick, &call)?;
            call_evts.push(call);
        }
        Ok(Active {
            interrupt: args.interrupt,
            queues: call_evts.len(),
            _call_evts: call_evts,
        })
    }

    fn start_queue(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), FsError> {
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| FsError::RingAddress(index, addr))
        };
        let config = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host(queue.desc_table())?,
            used_ring_addr: host(queue.used_ring())?,
            avail_ring_addr: host(queue.avail_ring())?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(index, queue.size())
            .map_err(|e| FsError::SetVringNum(index, e))?;
        f.set_vring_addr(index, &config)
            .map_err(|e| FsError::SetVringAddr(index, e))?;
        f.set_vring_base(index, 0)
            .map_err(|e| FsError::SetVringBase(index, e))?;
        f.set_vring_call(index, call)
            .map_err(|e| FsError::SetVringCall(index, e))?;
        f.set_vring_kick(index, kick)
            .map_err(|e| FsError::SetVringKick(index, e))?;
        if self.protocol {
            f.set_vring_enable(index, true)
                .map_err(|e| FsError::SetVringEnable(index, e))?;
        }
        Ok(())
    }
}

/// One vhost-user memory region per guest memory region (each must be file-backed).
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|e| FsError::MemoryRegion(region.start_addr().0, e))
        })
        .collect()
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::guest_warn!(
            "virtio-fs {}: guest wrote {} bytes at config offset {offset}; the config space is \
             read-only",
            self.tag,
            data.len()
        );
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if args.queues.len() != NUM_QUEUES || args.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                queues: args.queues.len(),
                evts: args.queue_evts.len(),
            });
        }
        if self.broken {
            return Err(FsError::Disconnected.into());
        }
        let active = match self.start(args) {
            Ok(active) => active,
            Err(e) => {
                if matches!(
                    &e,
                    FsError::SetFeatures(_) | FsError::SetMemTable(_) | FsError::SetVringNum(..)
                ) {
                    self.mark_broken(&e);
                }
                return Err(e.into());
            }
        };
        let watched = active
            ._call_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ActivateError::Device(Box::new(FsError::CallEventFd(0, e))))?;
        self.glue
            .activate(watched)
            .map_err(ActivateError::SignalActivate)?;
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        if !self.broken {
            // GET_VRING_BASE stops the ring in the backend (vhost-user spec).
            for index in 0..active.queues {
                if let Err(e) = self.frontend.get_vring_base(index) {
                    self.mark_broken(&format_args!("GET_VRING_BASE of queue {index}: {e}"));
                    break;
                }
            }
        }
        self.glue.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
