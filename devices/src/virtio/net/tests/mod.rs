//! virtio-net tests.
