//! Any bytes into the module admission check that runs before a compile.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost::sandbox::check::check_module(
        data,
        1 << 20,
        outpost::sandbox::check::HostChoice::Auto,
    );
});
