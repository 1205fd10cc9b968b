//! Destination address policy shared by the health and webhook backends,
//! plus the small message helpers both use (duration formatting, URL
//! redaction, URL-free error descriptions).
//!
//! Before any request, the URL's host is resolved here (or taken as is when
//! it is an IP literal) and every resulting address is classified:
//!
//! * always refused: unspecified (`0.0.0.0/8`, `::`), link-local
//!   (`169.254.0.0/16`, `fe80::/10`), multicast, broadcast, and the known
//!   cloud metadata endpoints (`169.254.169.254`, `169.254.170.2`,
//!   `fd00:ec2::254`, `100.100.100.200`);
//! * refused unless the target sets `allow_private`: loopback (`127.0.0.0/8`,
//!   `::1`), RFC 1918 (`10/8`, `172.16/12`, `192.168/16`), shared address
//!   space (`100.64/10`), unique-local (`fc00::/7`) and site-local
//!   (`fec0::/10`) IPv6;
//! * everything else is allowed.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4
//! address they carry. A name is refused if *any* of its addresses is
//! refused, and the caller pins the connection to exactly the checked
//! addresses (`reqwest::ClientBuilder::resolve_to_addrs`), so a DNS answer
//! that changes between the check and the connect cannot redirect it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Why a destination was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddrError {
    /// Refused by policy: the request must not be attempted (→ `Denied`).
    Refused(String),
    /// The URL itself is unusable (→ `Invalid`).
    BadUrl(String),
    /// The name could not be resolved (an unreachable target, not a policy
    /// decision).
    Lookup(String),
}

/// What kind of address an IP is, for the policy above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Never contacted; the string says why.
    Forbidden(&'static str),
    /// Loopback or private range: needs `allow_private`.
    Private,
    /// Anything else.
    Public,
}

/// Known cloud instance-metadata addresses (most are link-local anyway; the
/// ones that are not would otherwise pass as private or public).
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// Classifies one address.
pub(crate) fn classify(ip: IpAddr) -> Class {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if METADATA_V4.contains(&ip) {
        Class::Forbidden("cloud metadata address")
    } else if o[0] == 0 {
        Class::Forbidden("unspecified address")
    } else if ip.is_link_local() {
        Class::Forbidden("link-local address")
    } else if ip.is_multicast() {
        Class::Forbidden("multicast address")
    } else if ip.is_broadcast() {
        Class::Forbidden("broadcast address")
    } else if ip.is_loopback() || ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Class::Private
    } else {
        Class::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let seg0 = ip.segments()[0];
    if METADATA_V6.contains(&ip) {
        Class::Forbidden("cloud metadata address")
    } else if ip.is_unspecified() {
        Class::Forbidden("unspecified address")
    } else if (seg0 & 0xffc0) == 0xfe80 {
        Class::Forbidden("link-local address")
    } else if ip.is_multicast() {
        Class::Forbidden("multicast address")
    } else if ip.is_loopback() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfec0 {
        Class::Private
    } else {
        Class::Public
    }
}

/// Checks one address against the policy.
pub(crate) fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), AddrError> {
    match classify(ip) {
        Class::Forbidden(why) => Err(AddrError::Refused(format!("{ip} is a {why}"))),
        Class::Private if !allow_private => Err(AddrError::Refused(format!(
            "{ip} is a loopback or private address and allow_private is not set"
        ))),
        Class::Private | Class::Public => Ok(()),
    }
}

/// The checked destination of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The host name to pin, `None` for IP-literal URLs (nothing to resolve).
    pub domain: Option<String>,
    /// The addresses that passed the check (port from the URL).
    pub addrs: Vec<SocketAddr>,
}

impl Checked {
    /// Applies the pin to a client builder: the client will connect only to
    /// the checked addresses.
    pub fn pin(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match &self.domain {
            Some(domain) => builder.resolve_to_addrs(domain, &self.addrs),
            None => builder,
        }
    }
}

/// Resolves `url`'s host (within `lookup_timeout`) and checks every address.
pub(crate) async fn resolve_checked(
    url: &Url,
    allow_private: bool,
    lookup_timeout: Duration,
) -> Result<Checked, AddrError> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(AddrError::BadUrl(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| AddrError::BadUrl("no port".into()))?;
    let host = url
        .host()
        .ok_or_else(|| AddrError::BadUrl("no host".into()))?;
    let (domain, addrs) = match host {
        url::Host::Ipv4(ip) => (None, vec![SocketAddr::new(ip.into(), port)]),
        url::Host::Ipv6(ip) => (None, vec![SocketAddr::new(ip.into(), port)]),
        url::Host::Domain(name) => {
            let lookup = tokio::net::lookup_host((name, port));
            let addrs: Vec<SocketAddr> = match tokio::time::timeout(lookup_timeout, lookup).await {
                Ok(Ok(it)) => it.collect(),
                Ok(Err(e)) => {
                    return Err(AddrError::Lookup(format!("lookup of {name} failed: {e}")));
                }
                Err(_) => return Err(AddrError::Lookup(format!("lookup of {name} timed out"))),
            };
            if addrs.is_empty() {
                return Err(AddrError::Lookup(format!("{name} has no addresses")));
            }
            (Some(name.to_string()), addrs)
        }
    };
    for a in &addrs {
        check_ip(a.ip(), allow_private).map_err(|e| match (e, &domain) {
            (AddrError::Refused(why), Some(name)) => AddrError::Refused(format!("{name}: {why}")),
            (e, _) => e,
        })?;
    }
    Ok(Checked { domain, addrs })
}

/// Formats a duration for messages: `5s`, `250ms`, `3.2s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `scheme://host[:port]` of a URL: what may appear in messages and logs.
/// User info, path, query and fragment are dropped, since any of them may
/// carry a secret (Slack webhook URLs keep theirs in the path).
pub(crate) fn redact_url(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Describes a failed request without its URL: `connection refused`,
/// `timed out`, or a category plus the causes (hyper / io / TLS messages,
/// which do not carry the URL).
pub(crate) fn describe_error(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut causes = Vec::new();
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        let text = s.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        src = s.source();
    }
    let what = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Class {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classification() {
        for s in [
            "169.254.169.254",
            "169.254.1.1",
            "169.254.170.2",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(matches!(c(s), Class::Forbidden(_)), "{s}");
        }
        for s in [
            "127.0.0.1",
            "127.5.5.5",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fd12::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(c(s), Class::Private, "{s}");
        }
        for s in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1",
        ] {
            assert_eq!(c(s), Class::Public, "{s}");
        }
    }

    #[test]
    fn allow_private_gates_only_private() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(check_ip(lo, false).is_err());
        assert!(check_ip(lo, true).is_ok());
        let md: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(check_ip(md, true).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(3200)), "3.2s");
        let u = Url::parse("https://u:pw@hooks.example.com:8443/services/T0/B0/SECRET?token=x#f")
            .unwrap();
        assert_eq!(redact_url(&u), "https://hooks.example.com:8443");
        let u = Url::parse("http://[::1]/a?b").unwrap();
        assert_eq!(redact_url(&u), "http://[::1]");
    }

    #[tokio::test]
    async fn literal_and_scheme() {
        let t = Duration::from_secs(1);
        let u = Url::parse("http://[::1]:8080/x").unwrap();
        let ok = resolve_checked(&u, true, t).await.unwrap();
        assert_eq!(ok.domain, None);
        assert_eq!(ok.addrs, vec!["[::1]:8080".parse().unwrap()]);
        // Decimal IPv4 form is normalised by the URL parser and still caught.
        let u = Url::parse("http://2852039166/latest").unwrap();
        assert!(matches!(
            resolve_checked(&u, true, t).await,
            Err(AddrError::Refused(_))
        ));
        let u = Url::parse("ftp://example.com/").unwrap();
        assert!(matches!(
            resolve_checked(&u, true, t).await,
            Err(AddrError::BadUrl(_))
        ));
    }
}
