//! The FUSE request dispatcher. (Skeleton: the public API the daemon and the VMM use.)

use std::path::PathBuf;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

/// How long the guest may cache entries and attributes, and whether it keeps page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// The share never changes behind the guest's back (the read-only store): long
    /// entry/attr timeouts, page cache kept across opens.
    Immutable,
    /// The host may change files: short timeouts, page cache dropped on open.
    Coherent,
}

/// One shared directory.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The host directory (the root of what the guest sees).
    pub source: PathBuf,
    /// Refuse every mutating request with EROFS.
    pub read_only: bool,
    /// Cache policy; [`ShareOptions::new`] picks Immutable for read-only shares.
    pub cache: CachePolicy,
}

impl ShareOptions {
    /// Options for `source` with the default cache policy for `read_only`.
    pub fn new(source: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            source: source.into(),
            read_only,
            cache: if read_only {
                CachePolicy::Immutable
            } else {
                CachePolicy::Coherent
            },
        }
    }
}

/// Why a server could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The shared directory could not be opened.
    #[error("open the shared directory {path}")]
    OpenSharedDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A FUSE server for one share. `Send + Sync`: queues may be served from several threads.
#[derive(Debug)]
pub struct Server {
    opts: ShareOptions,
}

impl Server {
    /// Opens the shared directory.
    pub fn new(opts: ShareOptions) -> Result<Self, ServerError> {
        std::fs::metadata(&opts.source).map_err(|source| ServerError::OpenSharedDir {
            path: opts.source.clone(),
            source,
        })?;
        Ok(Self { opts })
    }

    /// The options the server was created with.
    pub fn options(&self) -> &ShareOptions {
        &self.opts
    }

    /// Serves one request: reads it from the chain's readable descriptors, performs it, and
    /// writes the reply into the writable descriptors. Returns the number of bytes written
    /// (the `len` for the used ring; 0 for requests that have no reply, e.g. FORGET).
    pub fn handle_chain<M>(&self, _mem: &M, _chain: DescriptorChain<&M>) -> u32
    where
        M: GuestMemory,
    {
        0
    }
}
