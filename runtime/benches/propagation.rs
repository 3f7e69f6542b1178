//! Bundle propagation: a push to a real registry until three `outpost serve` nodes serve it,
//! with notifications and with polling only (docs/benchmarks.md). Reuses the integration tests'
//! registry, signing and node helpers; their tests are not compiled here.
//!
//!     cargo bench -p outpost --profile dev --bench propagation

#[allow(dead_code, unused_imports)]
#[path = "../tests/all/support.rs"]
mod support;

#[allow(dead_code, unused_imports)]
#[path = "../tests/all/bundle.rs"]
mod bundle;

fn main() {
    bundle::bundle_propagation_benchmark();
}
