//! Event-manager glue of virtio-blk: ACTIVATE registers the queue eventfd, PROCESS_QUEUE_0
//! serves the request queue.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;
use crate::virtio::ACTIVATE;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == ACTIVATE {
            self.glue.handle_activate(ops);
            // Requests queued before the eventfd was watched are served now.
            self.process_queue();
            return;
        }
        match self.glue.queue_event(&events) {
            Some(0) => {
                self.process_queue();
            }
            Some(index) => log::warn!("virtio-blk: event for nonexistent queue {index}"),
            None => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
    }
}
