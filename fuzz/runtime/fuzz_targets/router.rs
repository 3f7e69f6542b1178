//! Any route table and any request (host, path) into the router: the route it picks must
//! match the request, and no route that matches better may exist.
//! Input: lines; `route HOST PATH` lines build the table, every other line is `HOST PATH`.
#![no_main]
use edge_config::{HostPattern, PathPrefix};
use libfuzzer_sys::fuzz_target;
use outpost::http::router::{normalize_host, Router};

/// How well a route matches: exact host beats wildcard, then the longer wildcard suffix,
/// then the longer path prefix.
fn rank(host: &HostPattern, prefix: &PathPrefix) -> (bool, usize, usize) {
    match host {
        HostPattern::Exact(_) => (true, 0, prefix.as_str().len()),
        HostPattern::Wildcard(suffix) => (false, suffix.len(), prefix.as_str().len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut routes = Vec::new();
    let mut router = Router::default();
    let mut requests = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("route"), Some(host), Some(path)) => {
                if let (Ok(h), Ok(p)) = (HostPattern::parse(host), PathPrefix::parse(path)) {
                    router.insert(&h, p.clone(), routes.len());
                    routes.push((h, p));
                }
            }
            (Some(host), Some(path), None) => requests.push((host, path)),
            _ => {}
        }
    }
    assert_eq!(router.len(), routes.len());
    for (raw_host, path) in requests {
        let Some(host) = normalize_host(raw_host) else {
            continue;
        };
        let matching = routes
            .iter()
            .filter(|(h, p)| h.matches(&host) && p.matches(path));
        let best = matching.map(|(h, p)| rank(h, p)).max();
        match router.lookup(&host, path) {
            Some((prefix, &index)) => {
                let (h, p) = &routes[index];
                assert!(h.matches(&host), "{host} routed to {h}");
                assert!(p.matches(path), "{path} routed to {}", p.as_str());
                assert_eq!(prefix.as_str(), p.as_str());
                assert_eq!(
                    Some(rank(h, p)),
                    best,
                    "{host}{path}: a better route exists"
                );
            }
            None => assert_eq!(best, None, "{host}{path}: a matching route was missed"),
        }
    }
});
