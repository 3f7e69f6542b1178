//! Any guest output into the CGI head finder and parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((end, _)) = outpost::sandbox::cgi::find_head_end(data) {
        let _ = outpost::sandbox::cgi::parse_head(&data[..end]);
    }
    let _ = outpost::sandbox::cgi::parse_head(data);
});
