//! Transport tests: register reads, status state machine, queue setup, reset.
