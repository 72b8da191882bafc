//! Who the client is behind a reverse proxy or load balancer: with [`crate::Config::trusted_proxies`],
//! a request whose peer is a trusted proxy is taken to come from the address that proxy put in
//! `Forwarded: for=` (RFC 7239) or, failing that, `X-Forwarded-For`. The headers are read from the
//! right (the address the nearest proxy saw) past every trusted proxy, so a client cannot pass
//! itself off as someone else by sending its own header: only what trusted proxies appended is
//! believed. A peer that is not a trusted proxy is the client, whatever its headers say.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address: `peer`, or what trusted proxies say about the client of `peer`.
pub(crate) fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<SocketAddr> {
    let peer = peer?;
    if !is_trusted(peer.ip(), trusted) {
        return Some(peer);
    }
    let hops = forwarded_for(headers).or_else(|| x_forwarded_for(headers));
    let Some(hops) = hops else {
        return Some(peer);
    };
    // From the nearest hop outwards: the first address that is not a trusted proxy is the
    // client. If every hop is trusted, the farthest one is.
    let mut client = None;
    for hop in hops.iter().rev() {
        client = Some(*hop);
        if !is_trusted(*hop, trusted) {
            break;
        }
    }
    Some(client.map_or(peer, |ip| SocketAddr::new(ip, 0)))
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` addresses of every `Forwarded` header, in order; `None` when there is none, or
/// when one cannot be read (a hop written as `unknown` or an obfuscated name ends the chain
/// there: nothing before it can be attributed).
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let value = value.to_str().ok()?;
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((key, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if key.trim().eq_ignore_ascii_case("for") {
                    hops.push(parse_node(value.trim().trim_matches('"'))?);
                }
            }
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// The addresses of every `X-Forwarded-For` header, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(parse_node(hop.trim())?);
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:5678`, `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(
            client_address(addr("1.2.3.4:80"), &h, &nets(&["10.0.0.0/8"])),
            addr("1.2.3.4:80")
        );
        assert_eq!(
            client_address(addr("1.2.3.4:80"), &h, &[]),
            addr("1.2.3.4:80")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_spoofed_hops_before_it_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client sent "6.6.6.6" itself; the proxy appended the address it saw.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5")]);
        assert_eq!(
            client_address(addr("10.0.0.1:80"), &h, &trusted),
            addr("5.5.5.5:0")
        );
        // Two trusted proxies in a row.
        let h = headers(&[("x-forwarded-for", "5.5.5.5, 10.0.0.7")]);
        assert_eq!(
            client_address(addr("10.0.0.1:80"), &h, &trusted),
            addr("5.5.5.5:0")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(addr("10.0.0.1:80"), &HeaderMap::new(), &trusted),
            addr("10.0.0.1:80")
        );
    }

    #[test]
    fn forwarded_wins_and_its_forms_parse() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#,
            ),
            ("x-forwarded-for", "7.7.7.7"),
        ]);
        assert_eq!(
            client_address(addr("127.0.0.1:80"), &h, &trusted),
            addr("[2001:db8::1]:0")
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_address(addr("127.0.0.1:80"), &h, &trusted),
            addr("127.0.0.1:80"),
            "an unreadable chain is not believed"
        );
        let h = headers(&[("x-forwarded-for", "::ffff:5.5.5.5")]);
        assert_eq!(
            client_address(addr("127.0.0.1:80"), &h, &trusted),
            addr("5.5.5.5:0")
        );
    }
}
