//! The virtio-net model: features, config space, activation and reset. Queue processing is
//! in `rx.rs` and `tx.rs`; the event-manager glue in `event_handler.rs`.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::counters::{NetCounters, NetStats};
use super::rx::RxState;
use super::tap::{Tap, TapError};
use crate::virtio::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, EventGlue, VirtioDevice,
    VirtioInterrupt,
};

/// Size of each of the two queues (receive, transmit).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// The largest Ethernet frame (without the virtio-net header) the device passes either way:
/// a 64 KiB TSO super-frame, i.e. an IP packet of at most 65535 bytes behind an Ethernet
/// header with one VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + 18;
/// The shortest frame the device passes to the guest (an Ethernet header).
pub const MIN_FRAME_LEN: usize = 14;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The features the device offers.
pub const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_EVENT_IDX
    | VIRTIO_F_INDIRECT_DESC
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS);

/// What the device needs from its host side. [`Tap`] is the real one; tests may use any
/// datagram socket that carries "virtio-net header + frame" messages.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame with its virtio-net header into `buf`; `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame with its virtio-net header.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Sets the receive offloads (TUN_F_* flags) the guest accepts.
    fn set_offload(&mut self, tun_flags: u32) -> Result<(), TapError>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.write(frame)
    }

    fn set_offload(&mut self, tun_flags: u32) -> Result<(), TapError> {
        Tap::set_offload(self, tun_flags)
    }
}

/// Why a [`Net`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC is multicast (or broadcast), which no NIC may have.
    #[error("MAC {0} is a multicast address")]
    MulticastMac(String),
    /// The MAC is all zeroes.
    #[error("MAC 00:00:00:00:00:00 is not a valid station address")]
    ZeroMac,
    /// Creating the device's ACTIVATE eventfd failed.
    #[error("cannot create the activate eventfd: {0}")]
    CreateEventFd(#[source] io::Error),
}

/// The TUN_F_* receive offloads matching the features the guest acked. TSO needs checksum
/// offload on the TAP too, so a guest that acks TSO without GUEST_CSUM gets neither.
pub fn tun_offload_flags(acked_features: u64) -> u32 {
    let has = |b| acked_features & bit(b) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// What the device has while activated.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx_queue: Queue,
    pub(super) tx_queue: Queue,
    pub(super) interrupt: Arc<VirtioInterrupt>,
    pub(super) acked_features: u64,
    /// A clone of the transmit queue's eventfd, to reschedule itself after a full budget.
    pub(super) tx_kick: EventFd,
}

impl Active {
    pub(super) fn has(&self, feature_bit: u32) -> bool {
        self.acked_features & bit(feature_bit) != 0
    }

    pub(super) fn signal_used(&self) {
        if let Err(e) = self.interrupt.signal_used_queue() {
            crate::guest_error!("virtio-net: cannot interrupt the guest: {e}");
        }
    }
}

/// A virtio-net device (type 1) with one receive and one transmit queue on a host backend,
/// usually a [`Tap`].
pub struct Net<B: NetBackend = Tap> {
    pub(super) glue: EventGlue,
    pub(super) backend: B,
    pub(super) active: Option<Active>,
    pub(super) rx: RxState,
    pub(super) tx_buf: Vec<u8>,
    pub(super) counters: Arc<NetCounters>,
    /// Whether the backend fd is in the event loop's epoll set.
    pub(super) backend_watched: bool,
    /// Reading the backend failed; not watched again until the next activation.
    pub(super) backend_failed: bool,
    config: [u8; 10],
    queue_sizes: [u16; 2],
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &format_mac(&self.mac()))
            .field("active", &self.active.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

impl<B: NetBackend> Net<B> {
    /// An inactive device with station address `mac` on `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Result<Self, NetError> {
        if mac == [0; 6] {
            return Err(NetError::ZeroMac);
        }
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(format_mac(&mac)));
        }
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs: one pair (only meaningful with VIRTIO_NET_F_MQ).
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Self {
            glue: EventGlue::new().map_err(NetError::CreateEventFd)?,
            backend,
            active: None,
            rx: RxState::new(),
            tx_buf: Vec::new(),
            counters: Arc::new(NetCounters::default()),
            backend_watched: false,
            backend_failed: false,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
        })
    }

    /// The station address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The live counters; keep the `Arc` to read them without locking the device.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    /// The host side (for tests and diagnostics).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The features the driver acked, while active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.acked_features)
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // With VIRTIO_F_VERSION_1 the MAC is read-only (changing it needs the control queue,
        // which this device does not have); status is read-only anyway.
        crate::guest_warn!(
            "virtio-net: {}-byte config write at {offset:#x} ignored: read-only",
            data.len()
        );
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateArgs {
            mem,
            queues,
            queue_evts,
            interrupt,
            acked_features,
        } = args;
        let count_error = ActivateError::QueueCount {
            expected: 2,
            queues: queues.len(),
            evts: queue_evts.len(),
        };
        let Ok([rx_queue, tx_queue]) = <[Queue; 2]>::try_from(queues) else {
            return Err(count_error);
        };
        let Some(tx_evt) = queue_evts.get(TX_QUEUE).filter(|_| queue_evts.len() == 2) else {
            return Err(count_error);
        };
        let tx_kick = tx_evt
            .try_clone()
            .map_err(|e| ActivateError::Device(Box::new(e)))?;
        self.backend
            .set_offload(tun_offload_flags(acked_features))
            .map_err(|e| ActivateError::Device(Box::new(e)))?;
        self.glue
            .activate(queue_evts)
            .map_err(ActivateError::SignalActivate)?;
        self.rx.clear(&self.counters);
        self.backend_failed = false;
        self.active = Some(Active {
            mem,
            rx_queue,
            tx_queue,
            interrupt,
            acked_features,
            tx_kick,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // A frame read under the old driver's offloads may not suit the next one.
        self.rx.clear(&self.counters);
        self.glue.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
