//! Any guest output, written in arbitrary pieces, through the incremental CGI parser: it must
//! give the same response as the whole output written at once (or fail both ways).
//! Input: one byte with the number of cuts (low 4 bits), two bytes per cut, then the output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outpost::sandbox::cgi::{parse_whole, parse_writes};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 0x0f);
    if rest.len() < 2 * count {
        return;
    }
    let (cut_bytes, output) = rest.split_at(2 * count);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (output.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut writes = Vec::with_capacity(count + 1);
    let mut from = 0;
    for cut in cuts {
        writes.push(&output[from..cut]);
        from = cut;
    }
    writes.push(&output[from..]);
    let whole = parse_whole(output);
    let split = parse_writes(writes.iter().copied());
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the split changed the response"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole: {whole:?}, split {:?}: {split:?}", writes),
    }
});
