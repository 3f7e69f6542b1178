//! Any guest output, whole, into the CGI response parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost::sandbox::cgi::parse_whole(data);
});
