//! Event-manager glue of virtio-vsock: queue eventfds, the host listener and every host
//! stream. Each event runs the device ([`Vsock::run`]), then the watched set is brought in
//! line with what the connections can use (a stream is watched for input only while the
//! guest has credit and receive buffers, so a full guest does not make the loop spin).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Vsock;
use crate::virtio::glue::FIRST_DEVICE_TOKEN;
use crate::virtio::ACTIVATE;

const LISTENER: u32 = FIRST_DEVICE_TOKEN;
const FIRST_STREAM: u32 = FIRST_DEVICE_TOKEN + 1;

impl Vsock {
    /// Watches what the streams can use now; stops watching closed streams, then closes them.
    fn sync_interest(&mut self, ops: &mut EventOps) {
        let starved = self.rx_starved;
        let mut want: Vec<(u32, i32, EventSet)> = Vec::new();
        for p in self.pending.iter() {
            want.push((*p.0, p.1.stream.as_raw_fd(), EventSet::IN));
        }
        for c in self.conns.values() {
            let mut set = EventSet::empty();
            if c.wants_read(starved) {
                set |= EventSet::IN;
            }
            if !c.to_host.is_empty() {
                set |= EventSet::OUT;
            }
            want.push((c.token, c.stream.as_raw_fd(), set));
        }
        // Closed streams first (their fds are still open, so epoll can drop them).
        for (token, stream) in std::mem::take(&mut self.graveyard) {
            if let Some((fd, set)) = self.watched.remove(&token) {
                if fd == stream.as_raw_fd() {
                    let _ = ops.remove(Events::with_data_raw(fd, FIRST_STREAM + token, set));
                }
            }
        }
        for (token, fd, set) in want {
            let data = FIRST_STREAM + token;
            match self.watched.get(&token).copied() {
                Some((_, old)) if old == set => {}
                // Nothing wanted: unwatch entirely (a hung-up fd is reported regardless
                // of interest).
                Some((_, old)) if set.is_empty() => {
                    let _ = ops.remove(Events::with_data_raw(fd, data, old));
                    self.watched.remove(&token);
                }
                Some(_) => {
                    if let Err(e) = ops.modify(Events::with_data_raw(fd, data, set)) {
                        log::error!("virtio-vsock: cannot change a stream's events: {e:?}");
                    }
                    self.watched.insert(token, (fd, set));
                }
                None if set.is_empty() => {}
                None => match ops.add(Events::with_data_raw(fd, data, set)) {
                    Ok(()) => {
                        self.watched.insert(token, (fd, set));
                    }
                    Err(e) => log::error!("virtio-vsock: cannot watch a stream: {e:?}"),
                },
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => self.glue.handle_activate(ops),
            LISTENER => {}
            d if d >= FIRST_STREAM => {}
            // RX: the guest queued receive buffers. TX and event queue: `run` serves them.
            _ => {
                if self.glue.queue_event(&events) == Some(0) {
                    self.rx_kicked();
                }
            }
        }
        self.run();
        self.sync_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.glue.init(ops);
        if let Err(e) = ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN)) {
            log::error!("virtio-vsock: cannot watch the host socket: {e:?}");
        }
    }
}
