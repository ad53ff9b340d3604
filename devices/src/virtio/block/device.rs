//! The virtio-blk model: features, config space, and the request queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::backend::Backend;
use super::limits::*;
use super::request::{self, BadRequest, Context, STATUS_OK};
use crate::ratelimit::{guest_warn, RateLimiter};
use crate::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtio::queue_loop::{serve_available_budget, Served};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, EventGlue, VirtioDevice,
    VirtioInterrupt,
};

/// Size of the config space laid out by [`config_space`] (through write_zeroes_may_unmap).
const CONFIG_LEN: usize = 60;

/// Request counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed with status OK.
    pub ok: AtomicU64,
    /// Requests the guest got wrong (IOERR/UNSUPP, or returned without a status byte).
    pub bad: AtomicU64,
    /// Requests that failed on the host (I/O or memory errors).
    pub host_errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-blk device with one request queue over a [`Backend`].
pub struct Block {
    pub(super) glue: EventGlue,
    active: Option<Active>,
    backend: Backend,
    queue_sizes: [u16; 1],
    config: [u8; CONFIG_LEN],
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
    counters: Arc<BlockCounters>,
    log: RateLimiter,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.backend.path())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// An inactive device serving `backend`; `serial` (at most 20 bytes are used) answers
    /// GET_ID.
    pub fn new(backend: Backend, serial: Option<&str>) -> std::io::Result<Self> {
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = serial {
            let n = serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        }
        Ok(Self {
            glue: EventGlue::new()?,
            active: None,
            config: config_space(&backend),
            backend,
            queue_sizes: [QUEUE_SIZE],
            id,
            bounce: Vec::new(),
            counters: Arc::default(),
            log: RateLimiter::new(),
        })
    }

    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Bytes held by the bounce buffer (bounded by the request size limit).
    pub fn bounce_capacity(&self) -> usize {
        self.bounce.capacity()
    }

    /// Serves up to [`BUDGET`] available requests (re-kicking its own queue eventfd when
    /// more may remain, so the event loop serves its other events in between), then
    /// interrupts the guest if it asked to be. Returns whether it did. Does nothing while the
    /// device is not active.
    pub fn process_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut server = Server {
            mem: &active.mem,
            backend: &mut self.backend,
            id: &self.id,
            bounce: &mut self.bounce,
            counters: &self.counters,
            log: &self.log,
        };
        let drained = serve_available_budget(
            "virtio-blk",
            &mut active.queue,
            &active.mem,
            BUDGET,
            |chain| Served::Used(server.serve(chain)),
        );
        if drained.bad_heads > 0 {
            self.counters
                .bad
                .fetch_add(u64::from(drained.bad_heads), Ordering::Relaxed);
        }
        if drained.notify {
            if let Err(e) = active.interrupt.signal_used_queue() {
                crate::guest_error!("virtio-blk: cannot interrupt the guest: {e}");
            }
        }
        if drained.exhausted {
            if let Err(e) = self.glue.kick_queue(0) {
                crate::guest_error!("virtio-blk: cannot reschedule the queue: {e}");
            }
        }
        drained.notify
    }
}

/// Everything one request needs, borrowed from the device for one drain.
struct Server<'a> {
    mem: &'a GuestMemoryMmap,
    backend: &'a mut Backend,
    id: &'a [u8; ID_BYTES],
    bounce: &'a mut Vec<u8>,
    counters: &'a BlockCounters,
    log: &'a RateLimiter,
}

impl Server<'_> {
    /// Serves one chain; returns the used length (data written + status byte, or 0 when the
    /// chain has nowhere to put a status byte).
    fn serve(&mut self, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let head = chain.head_index();
        let parsed = match request::parse(chain, self.mem) {
            Ok(p) => p,
            Err((e, status)) => {
                self.complain(head, &e);
                return status.map_or(0, |at| self.finish(at, e.status(), 0));
            }
        };
        let discard = !self.backend.read_only();
        let result = request::header(&parsed, self.mem).and_then(|hdr| {
            let mut cx = Context {
                mem: self.mem,
                backend: self.backend,
                id: self.id,
                bounce: self.bounce,
                discard,
            };
            request::execute(&parsed, hdr, &mut cx).map(|n| (hdr, n))
        });
        match result {
            Ok((hdr, written)) => {
                self.count_ok(hdr.kind, written, &parsed);
                self.finish(parsed.status_addr(), STATUS_OK, written)
            }
            Err(e) => {
                self.complain(head, &e);
                self.finish(parsed.status_addr(), e.status(), 0)
            }
        }
    }

    /// Writes the status byte (after the data) and returns the used length.
    fn finish(&mut self, at: vm_memory::GuestAddress, status: u8, written: u32) -> u32 {
        if request::write_status(self.mem, at, status) {
            written + 1
        } else {
            log::error!("virtio-blk: cannot write the status byte at {:#x}", at.0);
            0
        }
    }

    fn count_ok(&self, kind: u32, written: u32, parsed: &request::Parsed) {
        use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
        self.counters.ok.fetch_add(1, Ordering::Relaxed);
        let (counter, n) = match kind {
            VIRTIO_BLK_T_IN => (&self.counters.bytes_read, u64::from(written)),
            VIRTIO_BLK_T_OUT => (
                &self.counters.bytes_written,
                parsed.readable_data_len() as u64,
            ),
            _ => return,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn complain(&mut self, head: u16, e: &BadRequest) {
        let counter = if e.is_guest_error() {
            &self.counters.bad
        } else {
            &self.counters.host_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The cause is formatted only for lines the limiter lets through.
        guest_warn!(
            self.log;
            "virtio-blk: request at head {head} failed: {e}{}",
            std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        );
    }
}

/// `struct virtio_blk_config` for `backend` (little-endian, virtio 1.2 section 5.2.4).
fn config_space(backend: &Backend) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &backend.sectors().to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &BLK_SIZE.to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_DISCARD_SEG.to_le_bytes());
    put(56, &[1]);
    c
}

fn bit(b: u32) -> u64 {
    1 << b
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_INDIRECT_DESC
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.backend.read_only() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The only writable field (writeback, with CONFIG_WCE) is not offered.
        crate::guest_warn!("virtio-blk: config write at {offset:#x} ignored: fields are read-only");
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateArgs {
            mem,
            mut queues,
            queue_evts,
            interrupt,
            acked_features: _,
        } = args;
        if queues.len() != 1 || queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                queues: queues.len(),
                evts: queue_evts.len(),
            });
        }
        let queue = queues.remove(0);
        self.glue
            .activate(queue_evts)
            .map_err(ActivateError::SignalActivate)?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.glue.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
