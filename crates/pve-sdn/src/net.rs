//! IPv4 networks (`a.b.c.d/len`), parsed strictly like Python's `ip_network(strict=True)`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: address with all host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: u32,
    prefix: u8,
}

/// Why a string is not an IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetParseError {
    /// Not `address/prefix` with an IPv4 address.
    Syntax,
    /// An IPv6 network (not supported).
    Ipv6,
    /// Prefix above 32.
    Prefix,
    /// Host bits set (`192.168.1.5/24`); carries the network meant.
    HostBits(Ipv4Net),
}

impl Ipv4Net {
    /// A network from an address and prefix, host bits cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
        let prefix = prefix.min(32);
        Ipv4Net {
            addr: u32::from(addr) & mask(prefix),
            prefix,
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | !mask(self.prefix))
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.addr
    }

    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        self.addr & mask(p) == other.addr & mask(p)
    }

    /// The `n`-th address of the network (`net.host(1)` is `.1` of a `/24`).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.wrapping_add(n))
    }

    /// The `/len` subnets of this network, in address order (empty if `len` is shorter).
    pub fn subnets(&self, len: u8) -> impl Iterator<Item = Ipv4Net> + '_ {
        let count: u64 = if len < self.prefix || len > 32 {
            0
        } else {
            1u64 << (len - self.prefix)
        };
        let step: u64 = 1u64 << (32 - u32::from(len.min(32)));
        (0..count).map(move |i| Ipv4Net {
            addr: (u64::from(self.addr) + i * step) as u32,
            prefix: len,
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.trim().split_once('/').ok_or(NetParseError::Syntax)?;
        let addr: Ipv4Addr = match a.parse() {
            Ok(a) => a,
            Err(_) if a.parse::<std::net::Ipv6Addr>().is_ok() => return Err(NetParseError::Ipv6),
            Err(_) => return Err(NetParseError::Syntax),
        };
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NetParseError::Syntax);
        }
        let prefix: u8 = p.parse().map_err(|_| NetParseError::Prefix)?;
        if prefix > 32 {
            return Err(NetParseError::Prefix);
        }
        let net = Ipv4Net::new(addr, prefix);
        if net.network() != addr {
            return Err(NetParseError::HostBits(net));
        }
        Ok(net)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_relations() {
        let n: Ipv4Net = "192.168.5.0/24".parse().unwrap();
        assert_eq!(n.broadcast(), Ipv4Addr::new(192, 168, 5, 255));
        assert!(n.contains(Ipv4Addr::new(192, 168, 5, 7)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 6, 7)));
        let big: Ipv4Net = "192.168.0.0/16".parse().unwrap();
        assert!(big.overlaps(&n) && n.overlaps(&big));
        assert!(!n.overlaps(&"192.168.6.0/24".parse().unwrap()));
        assert_eq!(big.subnets(24).count(), 256);
        assert_eq!(
            big.subnets(24).nth(3).unwrap().to_string(),
            "192.168.3.0/24"
        );
        assert_eq!(
            "192.168.5.1/24".parse::<Ipv4Net>(),
            Err(NetParseError::HostBits(n))
        );
        assert_eq!("fd00::/64".parse::<Ipv4Net>(), Err(NetParseError::Ipv6));
        assert_eq!("10.0.0.0/33".parse::<Ipv4Net>(), Err(NetParseError::Prefix));
        assert_eq!("10.0.0.0".parse::<Ipv4Net>(), Err(NetParseError::Syntax));
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Net>().unwrap().subnets(1).count(),
            2
        );
    }
}
