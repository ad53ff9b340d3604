//! A minimal cpio "newc" writer: what the Linux initramfs unpacker reads.
//!
//! Parents are emitted before children automatically (the kernel does not create missing
//! parent directories). Every entry has its own inode number and nlink 1, so the kernel never
//! treats two entries as hard links. Device nodes need no privileges to be written here.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive to `W`. Call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose first header lands at offset 0 of `out`; `out` must start 4-aligned
    /// relative to the whole initramfs (callers pad before appending).
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
            dirs: HashSet::from([String::new()]),
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let path = normalize(path);
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.header(&path, S_IFDIR | (mode & 0o7777), 0, (0, 0))?;
        self.dirs.insert(path);
        Ok(())
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = normalize(path);
        self.parents(&path)?;
        self.header(&path, S_IFREG | (mode & 0o7777), data.len() as u64, (0, 0))?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    /// A regular file copied from the host (following symlinks), keeping its permission bits.
    pub fn host_file(&mut self, path: &str, source: &Path) -> io::Result<()> {
        let mut src = File::open(source)?;
        let meta = src.metadata()?;
        let path = normalize(path);
        self.parents(&path)?;
        self.header(
            &path,
            S_IFREG | (meta.permissions().mode() & 0o7777),
            meta.len(),
            (0, 0),
        )?;
        let copied = io::copy(&mut src, &mut self.out)?;
        if copied != meta.len() {
            return Err(io::Error::other(format!(
                "{} changed while copying",
                source.display()
            )));
        }
        self.written += copied;
        self.pad()
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = normalize(path);
        self.parents(&path)?;
        self.header(&path, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.written += target.len() as u64;
        self.pad()
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = normalize(path);
        self.parents(&path)?;
        self.header(&path, S_IFCHR | (mode & 0o7777), 0, (major, minor))
    }

    /// Copies the directory tree `source` to `dest` inside the archive (files and symlinks).
    pub fn host_tree(&mut self, dest: &str, source: &Path) -> io::Result<()> {
        self.dir(dest, 0o755)?;
        let mut entries: Vec<_> = fs::read_dir(source)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = format!("{}/{}", normalize(dest), name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.host_tree(&child, &entry.path())?;
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path())?;
                self.symlink(&child, &target.to_string_lossy())?;
            } else if kind.is_file() {
                self.host_file(&child, &entry.path())?;
            }
        }
        Ok(())
    }

    /// Writes the trailer, pads to 4 bytes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 1, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += (header.len() + namesize) as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, data, rdevmajor, rdevminor).
    fn parse(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let align = |n: usize| (n + 3) & !3;
        let mut out = Vec::new();
        loop {
            assert_eq!(&buf[..6], b"070701", "magic");
            let (mode, size, maj, min, namesize) = (
                field(buf, 1),
                field(buf, 6) as usize,
                field(buf, 9),
                field(buf, 10),
                field(buf, 11) as usize,
            );
            let name = String::from_utf8(buf[110..110 + namesize - 1].to_vec()).unwrap();
            let data_start = align(110 + namesize);
            let data = buf[data_start..data_start + size].to_vec();
            buf = &buf[align(data_start + size)..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "nothing after trailer");
                return out;
            }
            out.push((name, mode, data, maj, min));
        }
    }

    #[test]
    fn writer_when_file_in_nested_dir_then_parents_come_first() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/lab/bin/tool", 0o755, b"hello").unwrap();
        let entries = parse(&w.finish().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["lab", "lab/bin", "lab/bin/tool"]);
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(entries[2].1, S_IFREG | 0o755);
        assert_eq!(entries[2].2, b"hello");
    }

    #[test]
    fn writer_when_symlink_and_device_then_encoded() {
        let mut w = CpioWriter::new(Vec::new());
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.char_device("dev/mem", 0o600, 1, 1).unwrap();
        let entries = parse(&w.finish().unwrap());
        assert_eq!(
            entries[1],
            (
                "bin/sh".into(),
                S_IFLNK | 0o777,
                b"/bin/busybox".to_vec(),
                0,
                0
            )
        );
        assert_eq!(
            entries[3],
            ("dev/mem".into(), S_IFCHR | 0o600, vec![], 1, 1)
        );
    }

    #[test]
    fn writer_when_output_finished_then_length_is_multiple_of_four() {
        for len in 0..8 {
            let mut w = CpioWriter::new(Vec::new());
            w.file(&"x".repeat(len + 1), 0o644, &vec![7u8; len])
                .unwrap();
            assert_eq!(w.finish().unwrap().len() % 4, 0, "len {len}");
        }
    }

    #[test]
    fn host_tree_when_copied_then_files_and_links_present() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f.ko"), b"module").unwrap();
        std::os::unix::fs::symlink("b/f.ko", dir.path().join("a/link")).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.host_tree("lib/modules", dir.path()).unwrap();
        let entries = parse(&w.finish().unwrap());
        assert!(entries
            .iter()
            .any(|e| e.0 == "lib/modules/a/b/f.ko" && e.2 == b"module"));
        assert!(entries
            .iter()
            .any(|e| e.0 == "lib/modules/a/link" && e.2 == b"b/f.ko"));
    }
}
