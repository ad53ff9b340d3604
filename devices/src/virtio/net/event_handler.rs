//! Event-manager glue of virtio-net.
//!
//! Tokens: ACTIVATE (the glue's eventfd: activation or reset happened), PROCESS_QUEUE_0
//! (receive queue notified: the guest added buffers), PROCESS_QUEUE_1 (transmit queue
//! notified), and [`PROCESS_TAP`] (the backend has frames). The backend is watched only
//! while the device is active, has no frame waiting for guest buffers, and has not failed:
//! level-triggered epoll then never spins on a frame the device cannot take.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, NetBackend, RX_QUEUE, TX_QUEUE};
use super::rx::RxOutcome;
use crate::virtio::glue::FIRST_DEVICE_TOKEN;
use crate::virtio::ACTIVATE;

/// Token of the backend (TAP) file descriptor.
pub const PROCESS_TAP: u32 = FIRST_DEVICE_TOKEN;

impl<B: NetBackend> Net<B> {
    /// Receives and records whether the backend failed.
    fn rx_event(&mut self) {
        if self.process_rx() == RxOutcome::BackendFailed {
            self.backend_failed = true;
        }
    }

    /// Whether the backend fd should be in the epoll set now.
    fn want_backend_watched(&self) -> bool {
        self.active.is_some() && !self.rx.has_pending() && !self.backend_failed
    }

    /// Adds or removes the backend fd so that the epoll set matches the device state.
    fn sync_backend_watch(&mut self, ops: &mut EventOps) {
        let want = self.want_backend_watched();
        if want == self.backend_watched {
            return;
        }
        let result = if want {
            let set = EventSet::IN | EventSet::READ_HANG_UP;
            ops.add(Events::with_data(&self.backend, PROCESS_TAP, set))
        } else {
            ops.remove(Events::empty(&self.backend))
        };
        match result {
            Ok(()) => self.backend_watched = want,
            Err(e) => log::error!(
                "virtio-net: cannot {} the host side's fd: {e}",
                if want { "watch" } else { "stop watching" }
            ),
        }
    }

    /// Whether the event loop currently watches the backend (for tests and diagnostics).
    pub fn backend_watched(&self) -> bool {
        self.backend_watched
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                self.glue.handle_activate(ops);
                // Buffers queued before the queue eventfds were watched, and frames already
                // waiting on the host side, are served now.
                self.process_tx();
                self.rx_event();
            }
            PROCESS_TAP => {
                self.rx_event();
                // A TAP reports ERROR once its interface is gone; a socket backend reports
                // a hang-up. Either stays "ready" forever: stop watching instead of spinning.
                let dead = EventSet::ERROR | EventSet::HANG_UP | EventSet::READ_HANG_UP;
                if events.event_set().intersects(dead) {
                    log::error!("virtio-net: the host side hung up or failed; receive stopped");
                    self.backend_failed = true;
                }
            }
            _ => match self.glue.queue_event(&events) {
                Some(RX_QUEUE) => self.rx_event(),
                Some(TX_QUEUE) => {
                    self.process_tx();
                }
                Some(index) => {
                    crate::guest_warn!("virtio-net: event for nonexistent queue {index}")
                }
                None => {}
            },
        }
        self.sync_backend_watch(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
    }
}
