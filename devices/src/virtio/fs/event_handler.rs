//! Event-manager glue of virtio-fs: ACTIVATE (un)registers the call eventfds; a call eventfd
//! raises the guest interrupt; a hang-up of the backend socket marks the device broken.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Fs;
use crate::virtio::glue::FIRST_DEVICE_TOKEN;
use crate::virtio::ACTIVATE;

/// Token of the backend socket.
const BACKEND: u32 = FIRST_DEVICE_TOKEN;

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => self.glue.handle_activate(ops),
            BACKEND => {
                // Only hang-ups are watched (not IN: replies the vCPU thread is about to
                // read would look like events); a hang-up is permanent, so stop watching.
                self.mark_broken(&format_args!("socket event {:?}", events.event_set()));
                let _ = ops.remove(Events::with_data_raw(
                    self.backend_fd(),
                    BACKEND,
                    EventSet::HANG_UP | EventSet::READ_HANG_UP,
                ));
            }
            _ => {
                if self.glue.queue_event(&events).is_some() {
                    self.signal_used();
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
        let events = Events::with_data_raw(
            self.backend_fd(),
            BACKEND,
            EventSet::HANG_UP | EventSet::READ_HANG_UP,
        );
        if let Err(e) = ops.add(events) {
            log::warn!(
                "virtio-fs {}: cannot watch the backend socket: {e}",
                self.tag()
            );
        }
    }
}
