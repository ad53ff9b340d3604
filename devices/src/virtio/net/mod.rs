//! virtio-net (device type 1) on a host TAP device.
