"""Who may send markers over TCP and UDP, how many connections and how fast (no sockets).

A sender is its IP address (the port is not part of it: a program that
reconnects is the same sender). The service asks :class:`SenderPolicy`
before it accepts a connection or reads a datagram's markers; the policy
answers with the name of the counter a refusal goes to, or None.
"""

from __future__ import annotations

import collections
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Senders whose token buckets are kept at most; full (idle) buckets go first.
MAX_BUCKETS = 4096
#: Default of MUSHU_MARKERS_RATE_EXEMPT: this host.
LOOPBACK = "127.0.0.0/8,::1"


def sender_address(host: str) -> IPAddress:
    """The IP address of a peer as the socket reports it; IPv4-mapped IPv6 becomes IPv4.

    Raises
    ------
    ValueError
        If ``host`` is not an IP address.
    """
    address = ipaddress.ip_address(host.partition("%")[0])  # drop an IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AddressList:
    """A set of IP networks given as ``"10.0.0.5, 192.168.1.0/24, ::1"``.

    Parameters
    ----------
    spec : str
        Comma-separated addresses or CIDR networks, IPv4 or IPv6; an empty
        string is the empty list.
    setting : str
        Name of the setting the list comes from, for error messages.

    Raises
    ------
    ValueError
        Naming the setting and the entry that is not an address or network.
    """

    def __init__(self, spec: str = "", setting: str = "address list"):
        self.networks = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{setting}: {entry!r} is not an IP address or network "
                                 f"(e.g. 10.0.0.5, 192.168.1.0/24, fd00::/8)") from None

    def __bool__(self):
        return bool(self.networks)

    def __contains__(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)

    def __str__(self):
        return ",".join(map(str, self.networks))


class TokenBuckets:
    """A token bucket per sender: ``rate`` markers per second, at most ``burst`` at once.

    A rate of 0 means no limit. Bucket memory is bounded by ``max_buckets``:
    buckets that have filled up again are dropped first (a full bucket is the
    same as none), then the oldest.
    """

    def __init__(self, rate: float, burst: int, max_buckets: int = MAX_BUCKETS):
        if rate < 0 or burst < 1:
            raise ValueError(f"marker rate limit needs rate >= 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._buckets: collections.OrderedDict[IPAddress, list] = collections.OrderedDict()  # [tokens, t_ns]

    def __len__(self):
        return len(self._buckets)

    def take(self, sender: IPAddress, t_ns: int) -> bool:
        """Take one token for ``sender`` at ``t_ns``; False if it has none left."""
        if not self.rate:
            return True
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self.sweep(t_ns)
                while len(self._buckets) >= self.max_buckets:
                    self._buckets.popitem(last=False)
            bucket = self._buckets[sender] = [float(self.burst), t_ns]
        else:
            bucket[0] = min(self.burst, bucket[0] + max(0, t_ns - bucket[1]) * self.rate / 1e9)
            bucket[1] = t_ns
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def sweep(self, now_ns: int):
        """Drop the buckets that are full again by ``now_ns``."""
        for sender, (tokens, t_ns) in list(self._buckets.items()):
            if tokens + max(0, now_ns - t_ns) * self.rate / 1e9 >= self.burst:
                del self._buckets[sender]


class SenderPolicy:
    """The marker port's rules for senders.

    Parameters
    ----------
    allow : AddressList
        Senders allowed; empty allows everyone.
    max_connections, max_connections_per_sender : int
        Open TCP connections at most, in all and from one sender.
    rate, burst : float, int
        Markers per second per sender (0: no limit) and how many may come at once.
    rate_exempt : AddressList
        Senders the rate limit does not apply to (by default this host).
    """

    def __init__(self, allow: AddressList | None = None, max_connections: int = 256,
                 max_connections_per_sender: int = 64, rate: float = 1000.0, burst: int = 1000,
                 rate_exempt: AddressList | None = None):
        if max_connections < 1 or max_connections_per_sender < 1:
            raise ValueError(f"connection limits must be at least 1, got {max_connections} in all and "
                             f"{max_connections_per_sender} per sender")
        self.allow = allow if allow is not None else AddressList()
        self.max_connections = max_connections
        self.max_connections_per_sender = max_connections_per_sender
        self.buckets = TokenBuckets(rate, burst)
        self.rate_exempt = rate_exempt if rate_exempt is not None else AddressList(LOOPBACK)
        self.open: collections.Counter[IPAddress] = collections.Counter()

    @property
    def connections(self) -> int:
        return sum(self.open.values())

    def allowed(self, sender: IPAddress) -> bool:
        return not self.allow or sender in self.allow

    def refuse_connection(self, sender: IPAddress) -> str | None:
        """The counter a new connection from ``sender`` is refused under, or None to accept it."""
        if not self.allowed(sender):
            return "refused_address"
        if self.connections >= self.max_connections:
            return "connections_refused"
        if self.open[sender] >= self.max_connections_per_sender:
            return "connections_refused_sender"
        return None

    def opened(self, sender: IPAddress):
        self.open[sender] += 1

    def closed(self, sender: IPAddress):
        self.open[sender] -= 1
        if self.open[sender] <= 0:
            del self.open[sender]

    def take(self, sender: IPAddress, t_ns: int) -> bool:
        """Whether ``sender`` may send one more marker at ``t_ns`` (its rate limit)."""
        return sender in self.rate_exempt or self.buckets.take(sender, t_ns)

    def describe(self) -> dict:
        """The limits, for ``status``."""
        return {"allow": str(self.allow), "max_connections": self.max_connections,
                "max_connections_per_sender": self.max_connections_per_sender,
                "rate": self.buckets.rate, "burst": self.buckets.burst, "rate_exempt": str(self.rate_exempt),
                "rate_senders": len(self.buckets)}
