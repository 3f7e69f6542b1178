//! The wasix host under the scheduler: a wasix guest waiting in its own sleep (here
//! `poll_oneoff`'s clock wait, which wasix serves with its task manager's sleep) gives its CPU
//! slot back, as a lean guest does, so its tenant's other requests are not queued behind it.

use std::time::{Duration, Instant};

use crate::support::*;

const LOCAL: &[&str] = &["-H", "Host: localhost"];

#[test]
fn a_sleeping_wasix_guest_holds_no_cpu_slot() {
    let _alone = heavy_test();
    let dir = TempDir::new("wasix-sleep");
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
timeout = "6s"
concurrency = 16

[[app]]
name = "sleeper"
tenant = "a"
source = "file:{sleeper}"
host = "wasix"

[[app]]
name = "hello"
tenant = "a"
source = "file:{hello}"

[[route]]
host = "localhost"
path = "/sleep"
app = "sleeper"

[[route]]
host = "localhost"
path = "/hello"
app = "hello"
"#,
        data = dir.path("data").display(),
        sleeper = wat_guest("hostile_sleep").display(),
        hello = wat_guest("hello").display(),
    );
    std::fs::write(&cfg, config).expect("write config");
    let node = Daemon::serve(&cfg);
    assert_eq!(curl(&node.url("/hello"), LOCAL).status, 200);
    // Twice as many sleepers as the tenant has CPU slots (one per core).
    let sleepers = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let url = node.url("/sleep");
    let load = std::thread::spawn(move || {
        (0..sleepers)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || curl(&url, LOCAL).status)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("sleeper"))
            .collect::<Vec<_>>()
    });
    // Wait until every sleeper runs (its instance is active), not a fixed time.
    crate::serve::wait_for_metric(
        &node,
        "outpost_active_instances{tenant=\"a\"}",
        sleepers as f64,
    );
    // With every sleeper holding a slot, this would wait for their 6 s deadline.
    let started = Instant::now();
    let hello = curl(&node.url("/hello"), LOCAL);
    let took = started.elapsed();
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert!(
        took < Duration::from_secs(3),
        "the tenant's hello waited {took:?} behind its sleeping wasix guests"
    );
    // The sleepers end at their deadline.
    let statuses = load.join().expect("load");
    assert!(
        statuses.iter().all(|s| *s == 504),
        "the sleepers' statuses: {statuses:?}\n{}",
        node.log_text()
    );
}
