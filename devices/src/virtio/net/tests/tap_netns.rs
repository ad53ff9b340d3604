//! Real TAP tests.
