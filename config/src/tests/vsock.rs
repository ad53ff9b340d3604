//! `vsock`: guest CID and host socket.

use super::{problems, Fixture};
use crate::parse;

fn with_vsock(f: &Fixture, obj: &str) -> String {
    let obj = obj.replace("DIR", f.dir.path().to_str().unwrap());
    f.with(
        r#""control_socket""#,
        &format!("\"vsock\": {obj},\n  \"control_socket\""),
    )
}

#[test]
fn parse_when_vsock_good_then_fields_and_device_counted() {
    let f = Fixture::new();
    let base = parse(&f.text, "vm1.json").unwrap().virtio_device_count();
    let text = with_vsock(&f, r#"{"guest_cid": 3, "socket": "DIR/vm1.vsock"}"#);

    let cfg = parse(&text, "vm1.json").unwrap();

    let v = cfg.vsock.as_ref().unwrap();
    assert_eq!(v.guest_cid, 3);
    assert_eq!(v.socket, f.path("vm1.vsock"));
    assert_eq!(cfg.virtio_device_count(), base + 1);
    let again = serde_json::to_string(&cfg).unwrap();
    assert_eq!(parse(&again, "again.json").unwrap(), cfg);
}

#[test]
fn parse_when_vsock_cid_reserved_or_socket_bad_then_fields_named() {
    let f = Fixture::new();
    let cases = [
        (
            r#"{"guest_cid": 2, "socket": "DIR/v.sock"}"#,
            "vsock.guest_cid",
        ),
        (
            r#"{"guest_cid": 4294967295, "socket": "DIR/v.sock"}"#,
            "vsock.guest_cid",
        ),
        (
            r#"{"guest_cid": 3, "socket": "/nonexistent-dir/v.sock"}"#,
            "vsock.socket",
        ),
        (r#"{"guest_cid": 3, "socket": "/tmp/LONG"}"#, "vsock.socket"),
        (r#"{"guest_cid": 3, "sock": "DIR/v.sock"}"#, "vsock.sock"),
    ];
    for (obj, path) in cases {
        let obj = obj.replace("LONG", &"x".repeat(100));
        let ps = problems(&with_vsock(&f, &obj));
        assert_eq!(ps.len(), 1, "{obj}: {ps:#?}");
        assert_eq!(ps[0].path, path, "{obj}");
    }
}
