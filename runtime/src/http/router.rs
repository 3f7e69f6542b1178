//! Routing, as a pure function of (host, path): exact host first, then the longest matching
//! `*.suffix` wildcard; within a host, the longest matching path prefix. No I/O, no tenants.

use std::borrow::Cow;
use std::collections::HashMap;

use edge_config::{HostPattern, PathPrefix};

/// Routes for one host pattern, longest prefix first.
struct Paths<T> {
    by_length: Vec<(PathPrefix, T)>,
}

impl<T> Paths<T> {
    fn new() -> Self {
        Self {
            by_length: Vec::new(),
        }
    }

    fn insert(&mut self, prefix: PathPrefix, target: T) {
        self.by_length.push((prefix, target));
        self.by_length
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.as_str().len()));
    }

    fn lookup(&self, path: &str) -> Option<(&PathPrefix, &T)> {
        self.by_length
            .iter()
            .find(|(p, _)| p.matches(path))
            .map(|(p, t)| (p, t))
    }
}

pub struct Router<T> {
    exact: HashMap<String, Paths<T>>,
    /// (suffix, routes), longest suffix first.
    wildcard: Vec<(String, Paths<T>)>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
        }
    }
}

/// The request host without port, lowercased (borrowed when it already is); `None` if it is not
/// a plausible host.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next()?
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

impl<T> Router<T> {
    pub fn insert(&mut self, host: &HostPattern, path: PathPrefix, target: T) {
        match host {
            HostPattern::Exact(h) => self
                .exact
                .entry(h.clone())
                .or_insert_with(Paths::new)
                .insert(path, target),
            HostPattern::Wildcard(suffix) => {
                match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, paths)) => paths.insert(path, target),
                    None => {
                        let mut paths = Paths::new();
                        paths.insert(path, target);
                        self.wildcard.push((suffix.clone(), paths));
                        self.wildcard
                            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                    }
                }
            }
        }
    }

    /// The target for a normalized host and a path, with the prefix that matched.
    pub fn lookup(&self, host: &str, path: &str) -> Option<(&PathPrefix, &T)> {
        if let Some(found) = self.exact.get(host).and_then(|p| p.lookup(path)) {
            return Some(found);
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| {
                host.strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            })
            .find_map(|(_, paths)| paths.lookup(path))
    }

    pub fn len(&self) -> usize {
        self.exact
            .values()
            .map(|p| p.by_length.len())
            .sum::<usize>()
            + self
                .wildcard
                .iter()
                .map(|(_, p)| p.by_length.len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        let host = |s| HostPattern::parse(s).expect("host");
        let path = |s| PathPrefix::parse(s).expect("path");
        r.insert(&host("shop.example.com"), path("/"), "shop");
        r.insert(&host("shop.example.com"), path("/api"), "shop-api");
        r.insert(&host("*.example.com"), path("/"), "wild");
        r.insert(&host("*.eu.example.com"), path("/"), "wild-eu");
        r
    }

    #[test]
    fn exact_then_wildcard_then_longest_prefix() {
        let r = router();
        assert_eq!(
            r.lookup("shop.example.com", "/").map(|x| *x.1),
            Some("shop")
        );
        assert_eq!(
            r.lookup("shop.example.com", "/api/v1").map(|x| *x.1),
            Some("shop-api")
        );
        assert_eq!(
            r.lookup("shop.example.com", "/apix").map(|x| *x.1),
            Some("shop")
        );
        assert_eq!(r.lookup("a.example.com", "/x").map(|x| *x.1), Some("wild"));
        assert_eq!(
            r.lookup("a.eu.example.com", "/x").map(|x| *x.1),
            Some("wild-eu")
        );
        assert_eq!(r.lookup("example.com", "/"), None);
        assert_eq!(r.lookup("other.test", "/"), None);
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Shop.Example.com:8443").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            normalize_host("shop.example.com.").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(normalize_host("").as_deref(), None);
    }
}
