//! Which addresses a backend may connect to: a pure decision over an address and what the
//! operator's configuration names, with no I/O, so it is tested without a socket.
//! A tenant chooses only a backend's name and a request path; where the connection goes is
//! the operator's, and a host name must not smuggle in the PoP's own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Loopback, link-local, private, shared (CGNAT), unspecified, multicast or broadcast,
    /// reached by a host name the configuration did not allow to resolve there.
    Private,
    /// One of outpost's own listeners (the admin listener above all).
    OwnListener,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Private => "the host name resolved to a loopback, link-local or private address, which the backend's configuration does not allow (allow_private = true)",
            Refusal::OwnListener => "the address is one of outpost's own listeners",
        }
    }
}

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible IPv6 address.
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    v6.to_ipv4_mapped().or_else(|| {
        let s = v6.segments();
        // ::a.b.c.d (deprecated IPv4-compatible), but not :: or ::1.
        (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1))
            .then(|| v6.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED))
    })
}

fn v4_is_internal(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || o[0] == 0
        // 100.64.0.0/10: shared address space (carrier-grade NAT).
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // 192.0.0.0/24: IETF protocol assignments.
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // 198.18.0.0/15: benchmarking.
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // 240.0.0.0/4: reserved.
        || o[0] >= 240
}

/// Whether an address belongs to a host's own or internal networks rather than the internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_internal(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(&v6) {
                return v4_is_internal(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fe80::/10 link-local, fc00::/7 unique local, fec0::/10 site-local.
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfec0
                // 64:ff9b::/96 NAT64 can reach any IPv4 address, internal ones too.
                || (s[0] == 0x64 && s[1] == 0xff9b)
        }
    }
}

/// Decide whether a backend may connect to `addr`.
/// `literal`: the address the backend's URL names as an IP literal (the operator chose it);
/// `allow_private`: the operator allows the host name to resolve to internal addresses;
/// `own`: the addresses outpost's listeners are bound to.
pub fn check(
    addr: SocketAddr,
    literal: Option<IpAddr>,
    allow_private: bool,
    own: &[SocketAddr],
) -> Result<(), Refusal> {
    let ip = canonical(addr.ip());
    let mine = own.iter().any(|l| {
        let lip = canonical(l.ip());
        l.port() == addr.port()
            && (lip == ip || (lip.is_unspecified() && (is_internal(ip) || ip.is_unspecified())))
    });
    if mine {
        return Err(Refusal::OwnListener);
    }
    let named = literal.is_some_and(|l| canonical(l) == ip);
    if is_internal(ip) && !named && !allow_private {
        return Err(Refusal::Private);
    }
    Ok(())
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "ff02::1",
        ] {
            assert!(
                is_internal(internal.parse().expect("ip")),
                "{internal} passed as public"
            );
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "192.0.2.1",
        ] {
            assert!(
                !is_internal(public.parse().expect("ip")),
                "{public} taken as internal"
            );
        }
    }

    #[test]
    fn names_may_not_resolve_inside_unless_allowed() {
        let lo = sa("127.0.0.1:8080");
        assert_eq!(check(lo, None, false, &[]), Err(Refusal::Private));
        assert_eq!(
            check(sa("[::ffff:127.0.0.1]:8080"), None, false, &[]),
            Err(Refusal::Private)
        );
        assert_eq!(
            check(sa("169.254.169.254:80"), None, false, &[]),
            Err(Refusal::Private)
        );
        assert!(check(lo, None, true, &[]).is_ok());
        assert!(check(sa("93.184.216.34:443"), None, false, &[]).is_ok());
    }

    #[test]
    fn a_literal_the_operator_named_is_allowed_and_nothing_else() {
        let named: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(check(sa("127.0.0.1:8080"), Some(named), false, &[]).is_ok());
        assert_eq!(
            check(sa("127.0.0.2:8080"), Some(named), false, &[]),
            Err(Refusal::Private)
        );
    }

    #[test]
    fn own_listeners_are_never_reached() {
        let named: IpAddr = "127.0.0.1".parse().expect("ip");
        let own = [sa("127.0.0.1:9901"), sa("0.0.0.0:443")];
        assert_eq!(
            check(sa("127.0.0.1:9901"), Some(named), true, &own),
            Err(Refusal::OwnListener)
        );
        assert_eq!(
            check(sa("127.0.0.1:443"), Some(named), true, &own),
            Err(Refusal::OwnListener)
        );
        assert!(check(sa("127.0.0.1:8080"), Some(named), false, &own).is_ok());
        // A public origin on the port outpost listens on everywhere is not outpost.
        assert!(check(sa("93.184.216.34:443"), None, false, &own).is_ok());
    }
}
