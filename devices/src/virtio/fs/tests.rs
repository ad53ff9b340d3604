//! Unit tests of the virtio-fs frontend that need no backend (the handshake with a real
//! backend is tested in virtiofs/tests/vhost_user.rs).

use std::os::unix::net::UnixStream;

use super::*;

#[test]
fn with_stream_when_tag_empty_or_too_long_then_tag_error_before_any_io() {
    for tag in [String::new(), "x".repeat(TAG_LEN + 1)] {
        let (ours, _theirs) = UnixStream::pair().unwrap();

        let err = Fs::with_stream(&tag, ours).unwrap_err();

        assert!(matches!(err, FsError::Tag(t) if t == tag));
    }
}
