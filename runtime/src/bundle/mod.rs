//! Bundles: the signed OCI artifact a tenant publishes (format, signing), the stores it lives in
//! (an OCI image layout on disk, any OCI distribution registry) and the fetch that pulls one
//! into the node's cache and verifies it. It never runs a module: the node swaps what it returns.

pub mod fetch;
pub mod format;
pub mod gc;
pub mod layout;
pub mod registry;
pub mod sign;
pub mod store;

/// Why a bundle version was not taken. Each kind is a metric label (`reason()`); the message
/// is the log line. Whether retrying could help follows from the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The store could not be reached or answered with an error (retry may help).
    #[error("the store did not answer: {0}")]
    Unreachable(String),
    /// The tag or manifest does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad manifest: {0}")]
    Manifest(String),
    #[error("bad layer: {0}")]
    Layer(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("digest mismatch: {0}")]
    Digest(String),
    #[error("unsigned: no signature artifact under {0}")]
    Unsigned(String),
    #[error("signature refused: {0}")]
    Signature(String),
    /// The sandbox refused or failed to compile the module.
    #[error("module refused: {0}")]
    Module(String),
    /// The node's own cache could not be written or read.
    #[error("cache: {0}")]
    Cache(String),
}

impl Rejection {
    /// The `reason` label of `outpost_sync_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unreachable(_) => "unreachable",
            Rejection::NotFound(_) => "not_found",
            Rejection::Manifest(_) => "manifest",
            Rejection::Layer(_) => "layer",
            Rejection::TooLarge(_) => "too_large",
            Rejection::Digest(_) => "digest",
            Rejection::Unsigned(_) => "unsigned",
            Rejection::Signature(_) => "signature",
            Rejection::Module(_) => "module",
            Rejection::Cache(_) => "cache",
        }
    }

    /// Whether the same version could succeed later without anything in it changing.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Rejection::Unreachable(_) | Rejection::NotFound(_) | Rejection::Cache(_)
        )
    }
}
