//! virtio-rng tests driven through MockSplitQueue.
