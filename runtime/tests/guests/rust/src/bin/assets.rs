//! Serves its bundle's assets through Rust std's filesystem calls: `GET /FILE` answers the
//! file under /assets, `GET /DIR/` lists it (sorted, one name per line, directories with a
//! trailing slash). `?write` tries to create a file there and `?escape` to read outside the
//! mount; each reports the error it got.
use std::io::{Read, Seek, SeekFrom, Write};

fn respond(status: &str, body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Status: {status}\r\nContent-Type: text/plain\r\n\r\n");
    let _ = out.write_all(body);
}

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let full = format!("/assets{path}");
    match query.as_str() {
        "write" => {
            let r = std::fs::File::create(&full).map(|_| ());
            return respond("200 OK", format!("write: {r:?}\n").as_bytes());
        }
        "escape" => {
            let r = std::fs::read_to_string(format!("/assets/../{path}"));
            return respond("200 OK", format!("escape: {:?}\n", r.map(|s| s.len())).as_bytes());
        }
        "tail" => {
            // Seek from the end, read the last 4 bytes and report them with the file's size.
            let r = std::fs::File::open(&full).and_then(|mut f| {
                let size = f.metadata()?.len();
                f.seek(SeekFrom::End(-4))?;
                let mut last = Vec::new();
                f.read_to_end(&mut last)?;
                Ok(format!("size {size}, last {last:?}"))
            });
            return respond("200 OK", format!("{r:?}\n").as_bytes());
        }
        _ => {}
    }
    if path.ends_with('/') {
        match std::fs::read_dir(&full) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| {
                        let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                        format!("{}{}", e.file_name().to_string_lossy(), if dir { "/" } else { "" })
                    })
                    .collect();
                names.sort();
                respond("200 OK", (names.join("\n") + "\n").as_bytes())
            }
            Err(e) => respond("404 Not Found", format!("{e}\n").as_bytes()),
        }
        return;
    }
    match std::fs::read(&full) {
        Ok(bytes) => respond("200 OK", &bytes),
        Err(e) => respond("404 Not Found", format!("{e}\n").as_bytes()),
    }
}
