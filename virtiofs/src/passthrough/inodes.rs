//! The inode table (node ids the guest holds) and a bounded cache of O_PATH fds.
//!
//! No fd is held per known inode: an inode is remembered by its file handle
//! (`name_to_handle_at`) when the server may use `open_by_handle_at`, else by the
//! (parent, name) it was found under plus its (st_dev, st_ino), which a re-walk checks
//! (ESTALE when the name now names something else). Hot inodes keep an O_PATH fd in a small LRU.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::sys::FileHandle;

/// What the server remembers about one node id.
#[derive(Debug, Clone)]
pub struct InodeData {
    /// Host device.
    pub dev: u64,
    /// Host inode number.
    pub ino: u64,
    /// Lookups the guest has not forgotten yet.
    pub refcount: u64,
    /// The file handle, when handles are in use and the file system supports them.
    pub handle: Option<FileHandle>,
    /// Without a handle: the birth time, so a re-walk or a later lookup can tell this file
    /// from a newer one that reuses its inode number.
    pub btime: Option<(i64, u32)>,
    /// The node id of the directory it was last found in, and the name there.
    pub parent: u64,
    /// See `parent`.
    pub name: CString,
}

/// Node id → inode, and (dev, ino) → node id so hard links and repeated lookups share one id.
#[derive(Debug)]
pub struct InodeTable {
    map: HashMap<u64, InodeData>,
    by_key: HashMap<(u64, u64), u64>,
    next_id: u64,
    max: usize,
}

impl InodeTable {
    /// An empty table holding at most `max` node ids; ids start after the root's.
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            by_key: HashMap::new(),
            next_id: crate::abi::ROOT_ID + 1,
            max,
        }
    }

    /// The inode for `id`.
    pub fn get(&self, id: u64) -> Option<&InodeData> {
        self.map.get(&id)
    }

    /// Number of node ids held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Records one more lookup of `data`'s file: reuses the node id when the same file (same
    /// dev/ino and, when known, the same handle) is already known, else allocates one;
    /// None when that would exceed the table's bound.
    pub fn add_lookup(&mut self, data: InodeData) -> Option<u64> {
        let key = (data.dev, data.ino);
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(known) = self.map.get_mut(&id) {
                if known.handle == data.handle && known.btime == data.btime {
                    known.refcount += 1;
                    known.parent = data.parent;
                    known.name = data.name;
                    return Some(id);
                }
            }
        }
        if self.map.len() >= self.max {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.insert(key, id);
        self.map.insert(
            id,
            InodeData {
                refcount: 1,
                ..data
            },
        );
        Some(id)
    }

    /// Updates where `id` was last seen (after a rename).
    pub fn set_location(&mut self, id: u64, parent: u64, name: CString) {
        if let Some(d) = self.map.get_mut(&id) {
            d.parent = parent;
            d.name = name;
        }
    }

    /// The node id known for (dev, ino), if any.
    pub fn find(&self, dev: u64, ino: u64) -> Option<u64> {
        self.by_key.get(&(dev, ino)).copied()
    }

    /// Drops `n` lookups of `id`; returns true when the entry was removed.
    pub fn forget(&mut self, id: u64, n: u64) -> bool {
        let Some(d) = self.map.get_mut(&id) else {
            return false;
        };
        d.refcount = d.refcount.saturating_sub(n);
        if d.refcount > 0 {
            return false;
        }
        let key = (d.dev, d.ino);
        self.map.remove(&id);
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        true
    }

    /// Forgets everything (DESTROY).
    pub fn clear(&mut self) {
        self.map.clear();
        self.by_key.clear();
    }
}

/// A least-recently-used cache of O_PATH fds keyed by node id.
#[derive(Debug)]
pub struct FdCache {
    cap: usize,
    tick: u64,
    map: HashMap<u64, (Arc<OwnedFd>, u64)>,
    order: BTreeMap<u64, u64>,
}

impl FdCache {
    /// A cache of at most `cap` fds (at least 1).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// The fd of `id`, marking it recently used.
    pub fn get(&mut self, id: u64) -> Option<Arc<OwnedFd>> {
        self.tick += 1;
        let tick = self.tick;
        let (fd, used) = self.map.get_mut(&id)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, id);
        Some(fd.clone())
    }

    /// Caches `fd` for `id`, evicting the least recently used entry when full.
    pub fn insert(&mut self, id: u64, fd: Arc<OwnedFd>) {
        self.remove(id);
        while self.map.len() >= self.cap {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&old);
        }
        self.tick += 1;
        self.order.insert(self.tick, id);
        self.map.insert(id, (fd, self.tick));
    }

    /// Drops `id`'s fd.
    pub fn remove(&mut self, id: u64) {
        if let Some((_, used)) = self.map.remove(&id) {
            self.order.remove(&used);
        }
    }

    /// Drops every fd.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Number of cached fds.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn fd_cache_when_full_then_evicts_least_recently_used() {
        let mut c = FdCache::new(2);
        c.insert(10, fd());
        c.insert(11, fd());
        assert!(c.get(10).is_some());
        c.insert(12, fd());
        assert_eq!(c.len(), 2);
        assert!(c.get(11).is_none());
        assert!(c.get(10).is_some());
        assert!(c.get(12).is_some());
    }

    fn data(ino: u64) -> InodeData {
        InodeData {
            dev: 1,
            ino,
            refcount: 0,
            handle: None,
            btime: None,
            parent: 1,
            name: CString::new("f").unwrap(),
        }
    }

    #[test]
    fn inode_table_when_same_file_twice_then_one_id_until_forgotten() {
        let mut t = InodeTable::new(16);
        let a = t.add_lookup(data(5)).unwrap();
        let b = t.add_lookup(data(5)).unwrap();
        assert_eq!(a, b);
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert_eq!(t.len(), 0);
        assert!(t.find(1, 5).is_none());
    }

    #[test]
    fn inode_table_when_full_then_new_files_refused_known_ones_still_counted() {
        let mut t = InodeTable::new(2);
        let a = t.add_lookup(data(1)).unwrap();
        t.add_lookup(data(2)).unwrap();
        assert_eq!(t.add_lookup(data(3)), None);
        assert_eq!(t.add_lookup(data(1)), Some(a));
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert!(t.add_lookup(data(3)).is_some());
        assert_eq!(t.len(), 2);
    }
}
