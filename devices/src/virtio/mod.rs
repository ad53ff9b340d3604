//! virtio-mmio transport and virtio devices. To be written.
