//! Hostile tenants through `outpost serve`: each class of resource hole has a WAT fixture of its
//! own (runtime/tests/guests/wat/hostile_*.wat). Every hostile request ends within its deadline
//! plus a second or its app is refused at load with the cause named, the daemon stays up, many
//! of them leave memory flat, and another tenant keeps being served.

use std::time::Duration;

use crate::support::*;

/// Requests name the host the routes serve.
const LOCAL: &[&str] = &["-H", "Host: localhost"];

/// The hostile tenant's deadline.
const DEADLINE: Duration = Duration::from_millis(500);

/// As a body: the response must end early (the connection or stream cut).
const CUT: &str = "<cut>";

/// Fixtures that load, and what one request to each must give: (fixture, status, body); status
/// 0 is fuel (503) or time (504), whichever comes first.
const RUNS: &[(&str, u16, Option<&str>)] = &[
    ("hostile_fdwrite_huge", 200, Some("21 21 ")),
    ("hostile_iovec_count", 200, Some("ok")),
    ("hostile_table_grow", 200, Some("ok")),
    ("hostile_table_huge", 500, None),
    ("hostile_start_fill", 0, None),
    ("hostile_start_loop", 0, None),
    ("hostile_stderr_flood", 200, Some("ok")),
    // The head went out before the cap was hit: the body is cut short (curl reports it).
    ("hostile_stdout_flood", 200, Some(CUT)),
    ("hostile_sleep", 504, None),
    ("hostile_wasix_futex", 504, None),
    ("hostile_cgi_split", 200, Some("hello")),
];

/// Fixtures the module check refuses, and a word of the cause it must name.
const REFUSED: &[(&str, &str)] = &[
    ("hostile_multi_memory", "more than one memory"),
    ("hostile_shared_wait", "shared memory"),
    ("hostile_memory64", "64-bit memory"),
];

fn config(dir: &TempDir) -> String {
    let mut apps = String::new();
    let mut add = |name: &str, tenant: &str, module: std::path::PathBuf| {
        apps.push_str(&app_routed(name, tenant, "localhost", &module));
    };
    for (name, _, _) in RUNS {
        add(name, "hostile", wat_guest(name));
    }
    for (name, _) in REFUSED {
        add(name, "hostile", wat_guest(name));
    }
    add("hello", "good", wat_guest("hello"));
    add("slow", "hostile", wat_guest("hostile_sleep"));
    format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[tenant]]
name = "hostile"
allow_unsigned = true
[tenant.limits]
memory = "32MiB"
response_body = "1MiB"
fuel = 200_000_000
timeout = "{deadline}ms"
concurrency = 64

[[tenant]]
name = "good"
allow_unsigned = true
{apps}"#,
        data = dir.path("data").display(),
        deadline = DEADLINE.as_millis(),
    )
}

#[test]
fn each_hostile_guest_fails_alone_within_its_deadline_and_memory_stays_flat() {
    let _alone = heavy_test();
    let dir = TempDir::new("hostile");
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir)).expect("write config");
    let mut node = Daemon::serve(&cfg);

    // Refused at load, the cause in /apps and in the log.
    let apps = curl(&node.admin_url("/apps"), &[]).text();
    for (name, cause) in REFUSED {
        let needle = format!("\"app\": \"{}\"", name.replace('_', "-"));
        let at = apps
            .find(&needle)
            .unwrap_or_else(|| panic!("{name} in /apps"));
        let entry = &apps[at..apps[at..].find('}').map_or(apps.len(), |e| at + e)];
        assert!(entry.contains(cause), "{name}: {entry}");
        assert!(
            node.log_text().contains(cause),
            "{name}: the log names the cause"
        );
        assert_eq!(curl(&node.url(&format!("/{name}")), LOCAL).status, 503);
    }

    // Each hostile request: its status and body, within the deadline plus a second.
    for round in 0..2 {
        for (name, status, body) in RUNS {
            let reply = curl(&node.url(&format!("/{name}")), LOCAL);
            assert!(
                reply.elapsed < DEADLINE + Duration::from_secs(1),
                "{name} took {:?}",
                reply.elapsed
            );
            if *status == 0 {
                assert!(
                    matches!(reply.status, 503 | 504),
                    "{name}: fuel or deadline, got {}",
                    reply.status
                );
            } else {
                let text = reply.text();
                let shown = &text[..text.len().min(200)];
                assert_eq!(reply.status, *status, "{name} round {round}: {shown}");
            }
            match body {
                Some(b) if *b == CUT => {
                    assert_ne!(reply.curl_exit, 0, "{name}: the body is cut short")
                }
                Some(body) => assert_eq!(reply.text(), *body, "{name}"),
                None => {}
            }
            if *name == "hostile_cgi_split" {
                assert_eq!(reply.header("x-foo"), Some("bar"), "{:?}", reply.headers);
            }
            let hello = curl(&node.url("/hello"), LOCAL);
            assert_eq!((hello.status, hello.text().as_str()), (200, "hello\n"));
        }
    }
    assert!(node.alive());

    // The stderr flood reached the tenant's log as one line: 64 KiB of its bytes (the guest's
    // memory from 0: zeroes, escaped as `\0`, and its 28-byte response text at 64), marked
    // truncated.
    let log = node.log_text();
    let flood = log
        .lines()
        .find(|l| l.contains("app=\"hostile-stderr-flood\"") && l.contains("stderr: "))
        .unwrap_or_else(|| panic!("no stderr line for the flood:\n{log}"));
    assert!(flood.contains("truncated=true"), "{}", &flood[..300]);
    assert!(
        flood.contains("Content-Type: text/plain\\n\\nok"),
        "{}",
        &flood[..300]
    );
    assert_eq!(
        flood.matches("\\0").count() + 28,
        64 * 1024,
        "{}",
        &flood[..300]
    );

    // 50 of each, 16 at a time, after a warm-up round: memory stays within a fixed bound.
    let warm = || {
        for (name, _, _) in RUNS {
            let replies = curl_many(&node.url(&format!("/{name}")), Some("localhost"), 16, 16);
            assert_eq!(replies.len(), 16, "{name}: every request answered");
        }
    };
    warm();
    let (_, rss_before) = node.threads_and_rss();
    for (name, status, _) in RUNS {
        let replies = curl_many(&node.url(&format!("/{name}")), Some("localhost"), 50, 16);
        assert_eq!(replies.len(), 50, "{name}: every request answered");
        for (got, secs) in &replies {
            // wasix's own waits keep their CPU slot (only the lean host's waits give it back):
            // of 16 at once, those queued behind two waiting out their deadline are refused.
            if *name == "hostile_wasix_futex" && *got == 503 {
                continue;
            }
            if *status != 0 {
                assert_eq!(got, status, "{name}");
            }
            assert!(
                *secs < (DEADLINE + Duration::from_secs(2)).as_secs_f64(),
                "{name}: {secs} s"
            );
        }
    }
    let (_, rss_after) = node.threads_and_rss();
    assert!(node.alive());
    assert!(
        rss_after < rss_before + 24 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 500 hostile requests"
    );
    let hello = curl(&node.url("/hello"), LOCAL);
    assert_eq!(hello.status, 200);
}

/// Tenant A fills its concurrency with guests sleeping in a host call, then with guests
/// spinning on the CPU; tenant B's hello keeps answering promptly throughout.
#[test]
fn a_tenant_at_its_limit_does_not_starve_another() {
    let _alone = heavy_test();
    let dir = TempDir::new("fair");
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
timeout = "3s"
fuel = 1_000_000_000_000
concurrency = 16

[[tenant]]
name = "b"
allow_unsigned = true

[[app]]
name = "sleeper"
tenant = "a"
source = "file:{sleeper}"

[[app]]
name = "spinner"
tenant = "a"
source = "file:{spinner}"

[[app]]
name = "hello"
tenant = "b"
source = "file:{hello}"

[[route]]
host = "localhost"
path = "/sleep"
app = "sleeper"

[[route]]
host = "localhost"
path = "/spin"
app = "spinner"

[[route]]
host = "localhost"
path = "/hello"
app = "hello"
"#,
        data = dir.path("data").display(),
        sleeper = wat_guest("hostile_sleep").display(),
        spinner = wat_guest("loop").display(),
        hello = wat_guest("hello").display(),
    );
    std::fs::write(&cfg, config).expect("write config");
    let node = Daemon::serve(&cfg);
    assert_eq!(curl(&node.url("/hello"), LOCAL).status, 200);

    for what in ["/sleep", "/spin"] {
        let url = node.url(what);
        let load = std::thread::spawn(move || curl_many(&url, Some("localhost"), 16, 16));
        // Wait until A's 16 requests are all admitted (its active instances), not a fixed time.
        crate::serve::wait_for_metric(&node, "outpost_active_instances{tenant=\"a\"}", 16.0);
        let full = curl(&node.url(what), LOCAL);
        assert_eq!(full.status, 503, "A is at its limit");
        let mut worst = Duration::ZERO;
        for _ in 0..10 {
            let hello = curl(&node.url("/hello"), LOCAL);
            assert_eq!(hello.status, 200, "{what}: B is served");
            worst = worst.max(hello.elapsed);
        }
        // Loose: without fairness B waits for A's 3 s guests to end.
        assert!(
            worst < Duration::from_millis(1000),
            "{what}: B's slowest hello took {worst:?}"
        );
        let replies = load.join().expect("load");
        assert_eq!(replies.len(), 16);
        // Sleepers all wait out their deadline together (none holds a CPU slot); spinners run
        // two at a time (A's slots) and the rest are refused once they waited as long as a
        // guest may run.
        let expected: &[u16] = if what == "/sleep" {
            &[504]
        } else {
            &[503, 504]
        };
        assert!(
            replies.iter().all(|(s, _)| expected.contains(s)),
            "{what}: {replies:?}"
        );
    }
}
