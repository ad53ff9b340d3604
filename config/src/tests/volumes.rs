//! `volumes`: virtio-blk disks (real image files in the fixture directory).

use super::{assert_one, problems, Fixture};
use crate::{parse, CacheConfig};

/// The fixture with `volumes` set to `list` (JSON array text, DIR replaced).
fn with_volumes(f: &Fixture, list: &str) -> String {
    let list = list.replace("DIR", f.dir.path().to_str().unwrap());
    f.with(
        r#""control_socket""#,
        &format!("\"volumes\": {list},\n  \"control_socket\""),
    )
}

fn image(f: &Fixture, name: &str) {
    std::fs::write(f.path(name), vec![0u8; 4096]).unwrap();
}

#[test]
fn parse_when_volumes_good_then_fields_and_defaults() {
    let f = Fixture::new();
    image(&f, "root.img");
    image(&f, "store.img");
    let text = with_volumes(
        &f,
        r#"[{"path": "DIR/root.img", "read_only": false, "cache": "none"},
            {"path": "DIR/store.img", "read_only": true, "serial": "nix-store"}]"#,
    );

    let cfg = parse(&text, "vm1.json").unwrap();

    assert_eq!(cfg.volumes.len(), 2);
    assert_eq!(cfg.volumes[0].cache, CacheConfig::None);
    assert!(!cfg.volumes[0].read_only);
    assert_eq!(cfg.volumes[0].serial, None);
    assert_eq!(cfg.volumes[1].cache, CacheConfig::Writeback);
    assert_eq!(cfg.volumes[1].serial.as_deref(), Some("nix-store"));
    assert_eq!(cfg.virtio_device_count(), 7);
    let again = serde_json::to_string(&cfg).unwrap();
    assert_eq!(parse(&again, "again.json").unwrap(), cfg);
}

#[test]
fn validate_when_volume_path_missing_or_directory_then_path_problem() {
    let f = Fixture::new();
    let text = with_volumes(&f, r#"[{"path": "DIR/nope.img", "read_only": false}]"#);
    let needle = format!(r#""{}""#, f.path("nope.img"));
    assert_one(&text, "volumes[0].path", &needle, "No such file");

    std::fs::create_dir(f.path("disk.d")).unwrap();
    let text = with_volumes(&f, r#"[{"path": "DIR/disk.d", "read_only": true}]"#);
    let needle = format!(r#""{}""#, f.path("disk.d"));
    assert_one(&text, "volumes[0].path", &needle, "neither a regular file");
}

#[test]
fn validate_when_volume_path_duplicated_then_second_named() {
    let f = Fixture::new();
    image(&f, "a.img");
    let text = with_volumes(
        &f,
        r#"[{"path": "DIR/a.img", "read_only": true}, {"path": "DIR/a.img", "read_only": false}]"#,
    );
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "volumes[1].path");
    assert!(ps[0].message.contains("also used by volumes[0]"), "{ps:?}");
}

#[test]
fn validate_when_serial_too_long_or_not_printable_then_serial_problem() {
    let f = Fixture::new();
    image(&f, "a.img");
    let long = "s".repeat(21);
    let text = with_volumes(
        &f,
        &format!(r#"[{{"path": "DIR/a.img", "read_only": true, "serial": "{long}"}}]"#),
    );
    assert_one(
        &text,
        "volumes[0].serial",
        &format!(r#""{long}""#),
        "at most 20 bytes, got 21",
    );
    let text = with_volumes(
        &f,
        r#"[{"path": "DIR/a.img", "read_only": true, "serial": "a\tb"}]"#,
    );
    assert_one(&text, "volumes[0].serial", r#""a\tb""#, "printable ASCII");
}

#[test]
fn parse_when_cache_unknown_or_read_only_missing_then_field_named() {
    let f = Fixture::new();
    image(&f, "a.img");
    let text = with_volumes(
        &f,
        r#"[{"path": "DIR/a.img", "read_only": true, "cache": "unsafe"}]"#,
    );
    let err = parse(&text, "vm1.json").unwrap_err();
    assert_eq!(err.problems()[0].path, "volumes[0].cache", "{err}");

    let text = with_volumes(&f, r#"[{"path": "DIR/a.img"}]"#);
    let err = parse(&text, "vm1.json").unwrap_err();
    assert!(err.to_string().contains("read_only"), "{err}");
}
