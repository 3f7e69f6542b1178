//! The inline path: a short guest runs on the async thread that received its request; a guest
//! that would wait, hold a large response, or run past the slice moves to a pool thread and
//! runs again from the start, and its client sees one whole, correct response either way.

use crate::serve::metric;
use crate::support::*;

const LOCAL: &[&str] = &["-H", "Host: localhost"];

fn runs(node: &Daemon, path: &str) -> f64 {
    metric(
        node,
        &format!("outpost_guest_runs_total{{tenant=\"a\",path=\"{path}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn short_guests_run_inline_and_the_others_move_with_the_same_response() {
    let dir = TempDir::new("inline");
    let cfg = dir.path("node.toml");
    let config = format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[tenant]]
name = "a"
allow_unsigned = true
[tenant.limits]
timeout = "1500ms"
fuel = 100000000000

[[app]]
name = "hello"
tenant = "a"
source = "file:{hello}"

[[app]]
name = "nap"
tenant = "a"
source = "file:{nap}"

[[app]]
name = "big"
tenant = "a"
source = "file:{big}"

[[app]]
name = "spin"
tenant = "a"
source = "file:{spin}"

[[route]]
host = "localhost"
path = "/hello"
app = "hello"

[[route]]
host = "localhost"
path = "/nap"
app = "nap"

[[route]]
host = "localhost"
path = "/big"
app = "big"

[[route]]
host = "localhost"
path = "/spin"
app = "spin"
"#,
        data = dir.path("data").display(),
        hello = wat_guest("hello").display(),
        nap = wat_guest("nap").display(),
        big = wat_guest("big_body").display(),
        spin = wat_guest("loop").display(),
    );
    std::fs::write(&cfg, config).expect("write config");
    let node = Daemon::serve(&cfg);

    // One request at a time: the tenant's slot is always free, so each runs inline.
    for _ in 0..5 {
        let reply = curl(&node.url("/hello"), LOCAL);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello\n");
    }
    assert_eq!(runs(&node, "inline"), 5.0, "{}", node.log_text());
    assert_eq!(runs(&node, "pool"), 0.0);
    assert_eq!(runs(&node, "moved"), 0.0);

    // A guest that sleeps cannot wait on an async thread: it moves, sleeps there, answers.
    let reply = curl(&node.url("/nap"), LOCAL);
    assert_eq!((reply.status, reply.text().as_str()), (200, "napped"));
    assert_eq!(runs(&node, "moved"), 1.0, "{}", node.log_text());

    // A response larger than an inline run may hold moves too, and arrives whole.
    let reply = curl(&node.url("/big"), LOCAL);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 8 << 16);
    assert!(reply.body.iter().all(|&b| b == b'a'));
    assert_eq!(runs(&node, "moved"), 2.0, "{}", node.log_text());

    // A guest spinning past the slice moves, and still ends at its deadline.
    let reply = curl(&node.url("/spin"), LOCAL);
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(runs(&node, "moved"), 3.0, "{}", node.log_text());

    // Each request ran exactly once for the client and once in the request counters.
    let total = metric(
        &node,
        "outpost_requests_total{tenant=\"a\",app=\"hello\",protocol=\"HTTP/1.1\",status=\"200\"}",
    );
    assert_eq!(total, Some(5.0));
    let nap = metric(
        &node,
        "outpost_requests_total{tenant=\"a\",app=\"nap\",protocol=\"HTTP/1.1\",status=\"200\"}",
    );
    assert_eq!(nap, Some(1.0));
}
