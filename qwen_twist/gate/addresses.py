# -*- test-case-name: tests.gate.test_addresses -*-
"""
Address rules: who may connect, and who the client really is behind a proxy.

Why here and not in the web layer: the allow/deny lists are applied to the
TCP peer at accept time (L{qwen_twist.gate.peerfilter}), before any TLS work, so
a refused address costs one C{accept()} and nothing else.

X-Forwarded-For is only believed when the TCP peer is a configured trusted
proxy. Each proxy appends the address it received the request from, so the
list is trustworthy only from the right: walking leftwards, every hop that
is a trusted proxy vouches for the hop before it, and the first hop that is
not a trusted proxy is the client. Anything further left was written by that
client and is ignored; taking the leftmost entry, as naive code does, lets
anyone choose their own address. A malformed hop (C{unknown}, an obfuscated
identifier, garbage) ends the walk at the trusted proxy next to it: the
address cannot be known, and the hops to its left are vouched for by no
one. Empty entries (from joined headers) are skipped.

Addresses are normalised so that every table keyed by address (bans,
buckets) sees one spelling: the C{ipaddress} compressed form, with IPv4
mapped into IPv6 (C{::ffff:192.0.2.1}, what a dual-stack socket reports for
an IPv4 client) replaced by the IPv4 address itself.

Membership is a set lookup per distinct prefix length in the rules, not a
scan of every network, so a long deny list costs no more per connection
than a short one.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

if TYPE_CHECKING:
    from qwen_twist.config import AccessConfig

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def parse_address(text: str) -> Optional[Address]:
    """
    An address as the TCP layer reports it, IPv4-mapped IPv6 turned into
    IPv4; L{None} if C{text} is not an IP address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6:
        mapped = address.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return mapped
    return address


def normalize(text: str) -> Optional[str]:
    """
    The canonical spelling of an address (see the module docstring), or
    L{None} if C{text} is not one.
    """
    address = parse_address(text)
    return None if address is None else str(address)


def _parse_hop(text: str) -> Optional[Address]:
    """
    One X-Forwarded-For / X-Real-IP entry: a bare address, C{1.2.3.4:port}
    or C{[v6]:port} (some proxies include the port), surrounding quotes
    tolerated.
    """
    text = text.strip().strip('"')
    address = parse_address(text)
    if address is not None:
        return address
    if text.startswith("["):
        end = text.find("]")
        if end > 0:
            return parse_address(text[1:end])
        return None
    host, sep, port = text.rpartition(":")
    if sep and "." in host and ":" not in host and port.isdigit():
        return parse_address(host)
    return None


def _network(text: str) -> Network:
    network = ipaddress.ip_network(text, strict=False)
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_MAPPED):  # type: ignore[arg-type]
        # ::ffff:10.0.0.0/104 means 10.0.0.0/8: addresses are compared
        # after mapping, so the rule must be too.
        mapped = network.network_address.ipv4_mapped  # type: ignore[union-attr]
        network = ipaddress.IPv4Network((int(mapped), network.prefixlen - 96))
    return network


class NetworkSet:
    """
    A set of IPv4 and IPv6 networks with a membership test costing one set
    lookup per distinct prefix length.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        by_length: Dict[Tuple[int, int], Set[int]] = {}
        for text in networks:
            network = _network(text)
            bits = network.max_prefixlen
            shift = bits - network.prefixlen
            by_length.setdefault((network.version, shift), set()).add(
                int(network.network_address) >> shift
            )
        self._tables: Dict[int, List[Tuple[int, Set[int]]]] = {4: [], 6: []}
        for (version, shift), prefixes in sorted(by_length.items()):
            self._tables[version].append((shift, prefixes))
        self._empty = not by_length

    def __bool__(self) -> bool:
        return not self._empty

    def __contains__(self, address: Address) -> bool:
        number = int(address)
        for shift, prefixes in self._tables[address.version]:
            if (number >> shift) in prefixes:
                return True
        return False


class AddressRules:
    """
    The C{access} section: allow and deny lists and trusted proxies.
    """

    def __init__(
        self, allow: Sequence[str], deny: Sequence[str], trusted_proxies: Sequence[str]
    ) -> None:
        """
        @param allow: CIDRs (or single addresses) allowed to connect; empty
            allows every address.
        @param deny: CIDRs refused even when allowed (deny wins).
        @param trusted_proxies: peers whose X-Forwarded-For / X-Real-IP is
            believed.
        """
        self.allow = NetworkSet(allow)
        self.deny = NetworkSet(deny)
        self.trusted_proxies = NetworkSet(trusted_proxies)

    @classmethod
    def from_config(cls, access: "AccessConfig") -> "AddressRules":
        return cls(access.allow, access.deny, access.trusted_proxies)

    def permits_address(self, address: Address) -> bool:
        """
        L{permits} for an already parsed (and mapped) address.
        """
        if self.deny and address in self.deny:
            return False
        return not self.allow or address in self.allow

    def permits(self, ip: str) -> bool:
        """
        Whether C{ip} may connect: not denied, and allowed (an empty allow
        list allows everyone). An unparseable address is refused.
        """
        address = parse_address(ip)
        return address is not None and self.permits_address(address)

    def client_ip(self, peer: str, forwarded_for: Optional[str], real_ip: Optional[str]) -> str:
        """
        The client's address, normalised.

        @param peer: the TCP peer's address.
        @param forwarded_for: the X-Forwarded-For value (several headers
            joined with commas), or L{None}.
        @param real_ip: the X-Real-IP value, or L{None}; used only when
            X-Forwarded-For has no entries.
        @return: C{peer} unless it is a trusted proxy; otherwise the
            rightmost hop of X-Forwarded-For that is not a trusted proxy (see
            the module docstring). Never raises.
        """
        address = parse_address(peer)
        if address is None:
            return peer
        trusted = self.trusted_proxies
        if not trusted or address not in trusted:
            return str(address)
        if forwarded_for:
            nearest = address
            seen = False
            for entry in reversed(forwarded_for.split(",")):
                if not entry or entry.isspace():
                    continue
                seen = True
                hop = _parse_hop(entry)
                if hop is None:
                    return str(nearest)
                if hop not in trusted:
                    return str(hop)
                nearest = hop
            if seen:
                # Every hop is a trusted proxy: the request started at the
                # leftmost, inside the proxies' own network.
                return str(nearest)
        if real_ip:
            hop = _parse_hop(real_ip)
            if hop is not None:
                return str(hop)
        return str(address)
