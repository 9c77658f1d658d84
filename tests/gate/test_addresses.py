"""
Tests for L{qwen_twist.gate.addresses}: allow/deny lists and finding the client
behind trusted proxies without letting anyone spoof an address.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.addresses import AddressRules, NetworkSet, normalize, parse_address
from qwen_twist.config import AccessConfig


class NormalizeTests(SynchronousTestCase):
    """
    One spelling per address.
    """

    def test_ipv6_compressed(self) -> None:
        """
        IPv6 addresses are written in compressed lowercase form.
        """
        self.assertEqual(normalize("2001:DB8:0:0:0:0:0:1"), "2001:db8::1")

    def test_mapped_ipv4(self) -> None:
        """
        An IPv4 client seen through a dual-stack socket is its IPv4 address.
        """
        self.assertEqual(normalize("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(parse_address("::ffff:192.0.2.7").version, 4)

    def test_garbage(self) -> None:
        """
        Text that is not an address normalises to None.
        """
        for text in ["", "localhost", "192.0.2.300", "1.2.3.4/24", "::g"]:
            self.assertIsNone(normalize(text), text)


class NetworkSetTests(SynchronousTestCase):
    """
    Membership over several prefix lengths and both families.
    """

    def test_membership(self) -> None:
        """
        An address is in the set when any network contains it, whatever
        the prefix lengths mixed in the set.
        """
        networks = NetworkSet(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "198.51.100.0/24"])
        inside = ["10.255.1.2", "192.0.2.7", "2001:db8:ffff::1", "198.51.100.200"]
        outside = ["11.0.0.1", "192.0.2.8", "2001:db9::1", "198.51.101.1", "::1"]
        for text in inside:
            self.assertIn(parse_address(text), networks)
        for text in outside:
            self.assertNotIn(parse_address(text), networks)

    def test_host_bits_ignored(self) -> None:
        """
        A CIDR written with host bits set (10.1.2.3/8) means its network,
        as the config validator accepts it.
        """
        self.assertIn(parse_address("10.9.9.9"), NetworkSet(["10.1.2.3/8"]))

    def test_everything(self) -> None:
        """
        0.0.0.0/0 and ::/0 contain every address of their family only.
        """
        v4 = NetworkSet(["0.0.0.0/0"])
        self.assertIn(parse_address("203.0.113.1"), v4)
        self.assertNotIn(parse_address("2001:db8::1"), v4)
        self.assertIn(parse_address("2001:db8::1"), NetworkSet(["::/0"]))

    def test_mapped_rule(self) -> None:
        """
        A rule written as IPv4-mapped IPv6 matches the IPv4 addresses it
        maps, since addresses are compared after mapping.
        """
        networks = NetworkSet(["::ffff:10.0.0.0/104"])
        self.assertIn(parse_address("10.2.3.4"), networks)
        self.assertIn(parse_address("::ffff:10.2.3.4"), networks)
        self.assertNotIn(parse_address("11.2.3.4"), networks)

    def test_empty(self) -> None:
        """
        An empty set is false and contains nothing.
        """
        networks = NetworkSet([])
        self.assertFalse(networks)
        self.assertNotIn(parse_address("10.0.0.1"), networks)


class PermitsTests(SynchronousTestCase):
    """
    Allow and deny lists.
    """

    def test_empty_allow_is_everyone(self) -> None:
        """
        Without an allow list every parseable address may connect.
        """
        rules = AddressRules([], [], [])
        self.assertTrue(rules.permits("203.0.113.9"))
        self.assertTrue(rules.permits("2001:db8::9"))

    def test_allow_list(self) -> None:
        """
        With an allow list only addresses inside it may connect.
        """
        rules = AddressRules(["192.168.0.0/16", "2001:db8::/48"], [], [])
        self.assertTrue(rules.permits("192.168.4.4"))
        self.assertTrue(rules.permits("2001:db8:0:1::5"))
        self.assertFalse(rules.permits("10.0.0.1"))
        self.assertFalse(rules.permits("2001:db8:1::5"))

    def test_deny_wins(self) -> None:
        """
        A denied address is refused even inside an allowed network, and
        the deny list works without an allow list too.
        """
        rules = AddressRules(["192.168.0.0/16"], ["192.168.66.0/24"], [])
        self.assertFalse(rules.permits("192.168.66.1"))
        self.assertTrue(rules.permits("192.168.67.1"))
        rules = AddressRules([], ["203.0.113.0/24"], [])
        self.assertFalse(rules.permits("203.0.113.5"))
        self.assertTrue(rules.permits("203.0.114.5"))

    def test_mapped_ipv4(self) -> None:
        """
        An IPv4 client reported as ::ffff:a.b.c.d by a dual-stack socket
        gets the IPv4 rules: allowed by an IPv4 allow entry, refused by an
        IPv4 deny entry.
        """
        rules = AddressRules(["192.0.2.0/24"], ["192.0.2.66"], [])
        self.assertTrue(rules.permits("::ffff:192.0.2.1"))
        self.assertFalse(rules.permits("::ffff:192.0.2.66"))
        self.assertFalse(rules.permits("::ffff:198.51.100.1"))

    def test_unparseable_refused(self) -> None:
        """
        Something that is not an address is never permitted.
        """
        rules = AddressRules([], [], [])
        for text in ["", "unix", "example.com", "1.2.3"]:
            self.assertFalse(rules.permits(text), text)

    def test_from_config(self) -> None:
        """
        The rules are built from the access section.
        """
        rules = AddressRules.from_config(
            AccessConfig(allow=("10.0.0.0/8",), deny=("10.0.0.1",), trusted_proxies=("127.0.0.1",))
        )
        self.assertTrue(rules.permits("10.0.0.2"))
        self.assertFalse(rules.permits("10.0.0.1"))
        self.assertFalse(rules.permits("11.0.0.1"))
        self.assertEqual(rules.client_ip("127.0.0.1", "10.0.0.5", None), "10.0.0.5")


class ClientIPTests(SynchronousTestCase):
    """
    X-Forwarded-For and X-Real-IP, believed only from trusted proxies.
    """

    def setUp(self) -> None:
        self.rules = AddressRules([], [], ["10.0.0.0/8", "fd00::/8"])

    def test_untrusted_peer_headers_ignored(self) -> None:
        """
        A client that is not a trusted proxy cannot choose its address with
        X-Forwarded-For or X-Real-IP.
        """
        self.assertEqual(
            self.rules.client_ip("203.0.113.5", "198.51.100.1", "198.51.100.2"), "203.0.113.5"
        )

    def test_no_trusted_proxies(self) -> None:
        """
        Without trusted proxies the headers are never used, even from
        private addresses.
        """
        rules = AddressRules([], [], [])
        self.assertEqual(rules.client_ip("10.0.0.1", "198.51.100.1", "198.51.100.2"), "10.0.0.1")

    def test_single_proxy(self) -> None:
        """
        Behind one trusted proxy the client is the address it appended.
        """
        self.assertEqual(self.rules.client_ip("10.0.0.1", "198.51.100.1", None), "198.51.100.1")

    def test_rightmost_untrusted_hop(self) -> None:
        """
        Through several trusted proxies, the client is the rightmost hop
        that is not a proxy; what the client put further left is ignored.
        """
        forwarded = "1.1.1.1, 198.51.100.1, 10.0.0.3, 10.0.0.2"
        self.assertEqual(self.rules.client_ip("10.0.0.1", forwarded, None), "198.51.100.1")

    def test_spoofed_leftmost_entry(self) -> None:
        """
        A client that sends its own X-Forwarded-For through a proxy does
        not get the address it invented.
        """
        self.assertEqual(
            self.rules.client_ip("10.0.0.1", "127.0.0.1, 203.0.113.9", None), "203.0.113.9"
        )

    def test_joined_headers(self) -> None:
        """
        Several X-Forwarded-For headers joined with commas are one list;
        empty entries are skipped.
        """
        self.assertEqual(
            self.rules.client_ip("10.0.0.1", "6.6.6.6, 198.51.100.4,, 10.0.0.9, ", None),
            "198.51.100.4",
        )

    def test_all_hops_trusted(self) -> None:
        """
        When every hop is a trusted proxy the request came from the proxies'
        own network: the leftmost hop.
        """
        self.assertEqual(self.rules.client_ip("10.0.0.1", "10.0.0.7, 10.0.0.2", None), "10.0.0.7")

    def test_malformed_hop_stops_walk(self) -> None:
        """
        A hop that is not an address ends the walk at the proxy next to it:
        the entries to its left are vouched for by no one, so a client
        cannot slip an address past a proxy that writes "unknown".
        """
        self.assertEqual(
            self.rules.client_ip("10.0.0.1", "198.51.100.1, unknown, 10.0.0.2", None), "10.0.0.2"
        )
        self.assertEqual(self.rules.client_ip("10.0.0.1", "198.51.100.1, %%%", None), "10.0.0.1")

    def test_hops_with_ports(self) -> None:
        """
        Entries with a port (1.2.3.4:5678, [v6]:port) or quotes give their
        address.
        """
        self.assertEqual(self.rules.client_ip("10.0.0.1", "198.51.100.1:4711", None), "198.51.100.1")
        self.assertEqual(
            self.rules.client_ip("10.0.0.1", "[2001:db8::5]:443", None), "2001:db8::5"
        )
        self.assertEqual(self.rules.client_ip("10.0.0.1", '"2001:db8::6"', None), "2001:db8::6")

    def test_ipv6(self) -> None:
        """
        IPv6 proxies and clients work the same way and are normalised.
        """
        self.assertEqual(
            self.rules.client_ip("fd00::1", "2001:DB8:0::7, fd00::2", None), "2001:db8::7"
        )

    def test_mapped_peer_and_hops(self) -> None:
        """
        A proxy seen as IPv4-mapped IPv6 is still trusted, and mapped hops
        come out as IPv4.
        """
        self.assertEqual(
            self.rules.client_ip("::ffff:10.0.0.1", "::ffff:198.51.100.3", None), "198.51.100.3"
        )
        self.assertEqual(self.rules.client_ip("::ffff:203.0.113.1", "1.1.1.1", None), "203.0.113.1")

    def test_real_ip_fallback(self) -> None:
        """
        X-Real-IP is used from a trusted proxy when X-Forwarded-For is
        absent or empty, and ignored when malformed.
        """
        self.assertEqual(self.rules.client_ip("10.0.0.1", None, "198.51.100.8"), "198.51.100.8")
        self.assertEqual(self.rules.client_ip("10.0.0.1", " , ", " 198.51.100.8 "), "198.51.100.8")
        self.assertEqual(self.rules.client_ip("10.0.0.1", None, "bogus"), "10.0.0.1")
        self.assertEqual(
            self.rules.client_ip("10.0.0.1", "198.51.100.1", "198.51.100.8"), "198.51.100.1"
        )

    def test_no_headers(self) -> None:
        """
        A trusted proxy sending no forwarding headers is the client.
        """
        self.assertEqual(self.rules.client_ip("10.0.0.1", None, None), "10.0.0.1")
        self.assertEqual(self.rules.client_ip("10.0.0.1", "", ""), "10.0.0.1")

    def test_peer_normalised(self) -> None:
        """
        The peer itself comes back normalised, and a peer that is not an
        address (a UNIX socket) comes back unchanged.
        """
        self.assertEqual(self.rules.client_ip("2001:DB8::1", None, None), "2001:db8::1")
        self.assertEqual(self.rules.client_ip("::ffff:203.0.113.1", None, None), "203.0.113.1")
        self.assertEqual(self.rules.client_ip("unix", "1.1.1.1", None), "unix")

    def test_never_raises(self) -> None:
        """
        Arbitrary header text never raises and yields an address.
        """
        junk = ["[", "]", "[::1", "1.2.3.4:", ":80", "a:b:c", "\x00", "1.2.3.4:99999999999",
                "[fe80::1%eth0]:1", "\u0661.2.3.4", "::ffff:", "," * 1000]
        for text in junk:
            result = self.rules.client_ip("10.0.0.1", text, text)
            self.assertIsNotNone(normalize(result), (text, result))
