//! Event-manager glue of virtio-rng: ACTIVATE registers the queue eventfd, PROCESS_QUEUE_0
//! serves the queue.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Rng;
use crate::virtio::ACTIVATE;

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == ACTIVATE {
            self.glue.handle_activate(ops);
            // Buffers the guest queued before the eventfd was watched are served now; their
            // notification is still pending on the eventfd, so this is only a shortcut.
            self.process_queue();
            return;
        }
        match self.glue.queue_event(&events) {
            Some(0) => {
                self.process_queue();
            }
            Some(index) => crate::guest_warn!("virtio-rng: event for nonexistent queue {index}"),
            None => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
    }
}
