//! Event-manager glue of virtio-blk: ACTIVATE registers the queue eventfd, PROCESS_QUEUE_0
//! serves the request queue.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.glue.single_queue_event("virtio-blk", &events, ops) {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
    }
}
