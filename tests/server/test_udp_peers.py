"""server/sip/transport.py: the Peer of each UDP source is made once and the set is bounded,
whatever a flood of sources sends."""

from __future__ import annotations

from sipbridge.server.sip.transport import SipService
from sipbridge.server.sip.udp import MAX_UDP_PEERS, _Udp


def test_peers_of_many_sources_stay_bounded_and_every_datagram_is_still_handled() -> None:
    service = SipService(lambda service, event: None, clock=lambda: 0.0, traces=None)
    udp = _Udp(service)
    sources = MAX_UDP_PEERS + 500
    for i in range(sources):
        udp.datagram_received(b"garbage\r\n\r\n", ("192.0.2.1", 1024 + i))
    assert len(udp._peers) <= MAX_UDP_PEERS
    assert service.endpoint.stats["received"] == sources
    assert service.endpoint.stats["malformed"] == sources
    # the same source again reuses its Peer
    udp.datagram_received(b"garbage\r\n\r\n", ("192.0.2.1", 1024 + sources - 1))
    peer = udp._peers[("192.0.2.1", 1024 + sources - 1)]
    assert peer.address == ("192.0.2.1", 1024 + sources - 1) and peer.transport == "udp"
