//! A tiny FUSE client over virtio-queue's mock split queue: it lays out each request as a
//! chain (readable request, writable reply buffer) in a `GuestMemoryMmap`, calls
//! `Server::handle_chain`, and decodes the reply.
#![allow(dead_code)]

use std::cell::Cell;
use std::mem::size_of;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtiofs::abi::{self, op, InHeader, OutHeader};
use virtiofs::{Server, ShareOptions};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// Where requests go in guest memory.
pub const REQ_ADDR: u64 = 0x10_0000;
/// Where replies go.
pub const REPLY_ADDR: u64 = 0x90_0000;
/// Guest memory size.
pub const MEM_SIZE: usize = 0x140_0000;
/// VIRTQ_DESC_F_WRITE.
pub const F_WRITE: u16 = 2;

pub struct Fuse {
    pub mem: GuestMemoryMmap,
    pub server: Server,
    unique: Cell<u64>,
    pub uid: Cell<u32>,
    pub gid: Cell<u32>,
}

/// A decoded reply.
#[derive(Debug)]
pub struct Out {
    /// Bytes `handle_chain` reported written.
    pub written: u32,
    pub hdr: OutHeader,
    pub body: Vec<u8>,
}

impl Out {
    /// The body as `T` (panics with the errno when the reply is an error).
    pub fn obj<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.hdr.error, 0, "reply error {}", -self.hdr.error);
        abi::read_prefix::<T>(&self.body).expect("reply too short")
    }

    /// `Ok(body)` or `Err(errno)`.
    pub fn result(self) -> Result<Vec<u8>, i32> {
        if self.hdr.error == 0 {
            Ok(self.body)
        } else {
            Err(-self.hdr.error)
        }
    }
}

pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

pub fn bytes<T: ByteValued>(v: &T) -> Vec<u8> {
    v.as_slice().to_vec()
}

/// Joins argument pieces.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A NUL-terminated name.
pub fn nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Fuse {
    /// A server for `opts`, not yet initialised.
    pub fn uninit(opts: ShareOptions) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Self {
            mem,
            server: Server::new(opts).expect("server"),
            unique: Cell::new(1),
            uid: Cell::new(0),
            gid: Cell::new(0),
        }
    }

    /// A server for `opts` after a 7.37 INIT.
    pub fn new(opts: ShareOptions) -> Self {
        let f = Self::uninit(opts);
        let out = f.init(37, u32::MAX);
        assert_eq!(out.hdr.error, 0);
        f
    }

    pub fn init(&self, minor: u32, flags: u32) -> Out {
        let i = abi::InitIn {
            major: 7,
            minor,
            max_readahead: 1 << 20,
            flags,
            ..Default::default()
        };
        self.call(op::INIT, 0, &bytes(&i), 4096)
    }

    /// Runs a chain made of `descs` (after writing `req` at REQ_ADDR); returns what
    /// `handle_chain` returned and the bytes at REPLY_ADDR.
    pub fn run(&self, req: &[u8], descs: &[RawDescriptor], reply_len: usize) -> (u32, Vec<u8>) {
        self.mem.write_slice(req, GuestAddress(REQ_ADDR)).unwrap();
        let zero = vec![0u8; reply_len];
        self.mem
            .write_slice(&zero, GuestAddress(REPLY_ADDR))
            .unwrap();
        let q = MockSplitQueue::new(&self.mem, 16);
        self.mem
            .write_obj(0u16, q.avail_addr().unchecked_add(2))
            .unwrap();
        let chain = q.build_desc_chain(descs).unwrap();
        let n = self.server.handle_chain(&self.mem, chain);
        let mut out = vec![0u8; reply_len];
        self.mem
            .read_slice(&mut out, GuestAddress(REPLY_ADDR))
            .unwrap();
        (n, out)
    }

    /// A request with a header of `len` (None: the true length), the given args, and
    /// `out_len` writable bytes.
    pub fn call_len(
        &self,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        out_len: usize,
        len: Option<u32>,
    ) -> Out {
        let unique = self.unique.get();
        self.unique.set(unique + 1);
        let h = InHeader {
            len: len.unwrap_or((size_of::<InHeader>() + args.len()) as u32),
            opcode,
            unique,
            nodeid,
            uid: self.uid.get(),
            gid: self.gid.get(),
            pid: 1,
            total_extlen: 0,
            padding: 0,
        };
        let req = cat(&[h.as_slice(), args]);
        let descs = [
            desc(REQ_ADDR, req.len() as u32, 0),
            desc(REPLY_ADDR, out_len as u32, F_WRITE),
        ];
        let (written, raw) = self.run(&req, &descs, out_len);
        let hdr = abi::read_prefix::<OutHeader>(&raw).unwrap_or_default();
        if written > 0 {
            assert_eq!(hdr.len, written, "out header len matches bytes written");
            assert_eq!(hdr.unique, unique);
        }
        let body = raw
            .get(size_of::<OutHeader>()..written as usize)
            .unwrap_or_default()
            .to_vec();
        Out { written, hdr, body }
    }

    pub fn call(&self, opcode: u32, nodeid: u64, args: &[u8], out_len: usize) -> Out {
        self.call_len(opcode, nodeid, args, out_len, None)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<abi::EntryOut, i32> {
        self.entry(self.call(op::LOOKUP, parent, &nul(name), 4096))
    }

    pub fn entry(&self, o: Out) -> Result<abi::EntryOut, i32> {
        o.result().map(|b| abi::read_prefix(&b).expect("entry"))
    }

    pub fn getattr(&self, node: u64) -> Result<abi::Attr, i32> {
        let o = self.call(op::GETATTR, node, &bytes(&abi::GetattrIn::default()), 4096);
        o.result()
            .map(|b| abi::read_prefix::<abi::AttrOut>(&b).expect("attr").attr)
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<abi::EntryOut, i32> {
        let a = abi::MkdirIn { mode, umask: 0 };
        self.entry(self.call(op::MKDIR, parent, &cat(&[&bytes(&a), &nul(name)]), 4096))
    }

    /// CREATE: (entry, fh).
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: u32,
    ) -> Result<(abi::EntryOut, u64), i32> {
        let a = abi::CreateIn {
            flags,
            mode,
            umask: 0,
            open_flags: 0,
        };
        let b = self
            .call(op::CREATE, parent, &cat(&[&bytes(&a), &nul(name)]), 4096)
            .result()?;
        let e: abi::EntryOut = abi::read_prefix(&b).expect("entry");
        let o: abi::OpenOut = abi::read_prefix(&b[size_of::<abi::EntryOut>()..]).expect("open");
        Ok((e, o.fh))
    }

    pub fn open_out(&self, node: u64, flags: u32) -> Result<abi::OpenOut, i32> {
        let a = abi::OpenIn {
            flags,
            open_flags: 0,
        };
        self.call(op::OPEN, node, &bytes(&a), 4096)
            .result()
            .map(|b| abi::read_prefix(&b).expect("open"))
    }

    pub fn open(&self, node: u64, flags: u32) -> Result<u64, i32> {
        self.open_out(node, flags).map(|o| o.fh)
    }

    pub fn opendir(&self, node: u64) -> Result<u64, i32> {
        self.call(op::OPENDIR, node, &bytes(&abi::OpenIn::default()), 4096)
            .result()
            .map(|b| abi::read_prefix::<abi::OpenOut>(&b).expect("open").fh)
    }

    pub fn read(&self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let a = abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(op::READ, node, &bytes(&a), size as usize + 16)
            .result()
    }

    pub fn write(&self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let a = abi::WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(op::WRITE, node, &cat(&[&bytes(&a), data]), 4096)
            .result()
            .map(|b| abi::read_prefix::<abi::WriteOut>(&b).expect("write").size)
    }

    pub fn release(&self, node: u64, fh: u64, dir: bool) -> Result<(), i32> {
        let a = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        let opc = if dir { op::RELEASEDIR } else { op::RELEASE };
        self.call(opc, node, &bytes(&a), 4096).result().map(drop)
    }

    pub fn forget(&self, node: u64, n: u64) -> Out {
        self.call(
            op::FORGET,
            node,
            &bytes(&abi::ForgetIn { nlookup: n }),
            4096,
        )
    }

    /// Raw READDIR(PLUS) bytes.
    pub fn readdir_raw(
        &self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<u8>, i32> {
        let a = abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let opc = if plus { op::READDIRPLUS } else { op::READDIR };
        self.call(opc, node, &bytes(&a), size as usize + 16)
            .result()
    }

    /// Every entry of the directory `node`: (name, dirent, entry for plus).
    pub fn readdir_all(&self, node: u64, plus: bool, chunk: u32) -> Result<Vec<DirEntry>, i32> {
        let fh = self.opendir(node)?;
        let mut all = Vec::new();
        let mut off = 0;
        loop {
            let b = self.readdir_raw(node, fh, off, chunk, plus)?;
            if b.is_empty() {
                break;
            }
            let ents = parse_dirents(&b, plus);
            off = ents.last().expect("entries").dirent.off;
            all.extend(ents);
        }
        self.release(node, fh, true)?;
        Ok(all)
    }

    pub fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<abi::EntryOut, i32> {
        self.entry(self.call(op::SYMLINK, parent, &cat(&[&nul(name), &nul(target)]), 4096))
    }

    pub fn readlink(&self, node: u64) -> Result<Vec<u8>, i32> {
        self.call(op::READLINK, node, &[], 8192).result()
    }

    pub fn setattr(&self, node: u64, s: abi::SetattrIn) -> Result<abi::Attr, i32> {
        self.call(op::SETATTR, node, &bytes(&s), 4096)
            .result()
            .map(|b| abi::read_prefix::<abi::AttrOut>(&b).expect("attr").attr)
    }

    pub fn unlink(&self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(op::UNLINK, parent, &nul(name), 4096)
            .result()
            .map(drop)
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(op::RMDIR, parent, &nul(name), 4096)
            .result()
            .map(drop)
    }

    pub fn rename2(
        &self,
        olddir: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), i32> {
        let a = abi::Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        self.call(
            op::RENAME2,
            olddir,
            &cat(&[&bytes(&a), &nul(old), &nul(new)]),
            4096,
        )
        .result()
        .map(drop)
    }
}

/// One parsed READDIR(PLUS) entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub dirent: abi::Dirent,
    pub entry: Option<abi::EntryOut>,
}

pub fn parse_dirents(mut b: &[u8], plus: bool) -> Vec<DirEntry> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let entry = if plus {
            let e: abi::EntryOut = abi::read_prefix(b).expect("entry");
            b = &b[size_of::<abi::EntryOut>()..];
            Some(e)
        } else {
            None
        };
        let d: abi::Dirent = abi::read_prefix(b).expect("dirent");
        let nl = d.namelen as usize;
        let name = String::from_utf8_lossy(&b[24..24 + nl]).into_owned();
        b = &b[abi::dirent_size(nl)..];
        v.push(DirEntry {
            name,
            dirent: d,
            entry,
        });
    }
    v
}

/// A temp dir and a writable (coherent) server on it.
pub fn rw() -> (tempfile::TempDir, Fuse) {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::new(ShareOptions::new(d.path(), false));
    (d, f)
}

/// A temp dir and a read-only server on it.
pub fn ro() -> (tempfile::TempDir, Fuse) {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::new(ShareOptions::new(d.path(), true));
    (d, f)
}

pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}
