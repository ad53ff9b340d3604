//! Event-manager glue of virtio-rng: ACTIVATE registers the queue eventfd, PROCESS_QUEUE_0
//! serves the queue.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Rng;

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.glue.single_queue_event("virtio-rng", &events, ops) {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
    }
}
