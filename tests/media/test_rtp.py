"""RTP and RTCP packets (RFC 3550 s5.1, s6.4-6.6): byte vectors, round trips, malformed input.

The vectors are written by hand from the RFC 3550 bit layouts, each field commented; the fuzz
tests hold `parse_rtp` and `parse_rtcp` to "returns or raises MediaError" on any bytes.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import (
    RTCP_BYE,
    SDES_CNAME,
    Goodbye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpHeaderExtension,
    RtpPacket,
    SdesChunk,
    SdesItem,
    SenderInfo,
    SenderReport,
    SourceDescription,
    UnknownRtcpPacket,
    build_compound_report,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
    serialize_rtcp,
)

# --- RTP vectors -------------------------------------------------------------------------------

# RFC 3550 s5.1, the plain telephony packet
SIMPLE_RTP = bytes.fromhex(
    "80"  # V=2 P=0 X=0 CC=0
    "00"  # M=0 PT=0 (PCMU)
    "1234"  # sequence number 4660
    "000000a0"  # timestamp 160
    "deadbeef"  # SSRC
    "ffffffff"  # payload: four PCMU silence octets
)

# Every optional part at once
FULL_RTP = bytes.fromhex(
    "b2"  # V=2 P=1 X=1 CC=2
    "88"  # M=1 PT=8 (PCMA)
    "0001"  # sequence number 1
    "00000001"  # timestamp 1
    "11223344"  # SSRC
    "00000001"  # CSRC 1
    "00000002"  # CSRC 2
    "bede"  # extension profile 0xBEDE (RFC 8285 one-byte header)
    "0001"  # extension length: 1 word
    "10aa0000"  # extension data
    "0102"  # payload
    "000003"  # padding: 3 octets, the last one counts them
)


def test_parse_simple_rtp() -> None:
    packet = parse_rtp(SIMPLE_RTP)
    assert packet == RtpPacket(
        payload_type=0,
        sequence_number=0x1234,
        timestamp=160,
        ssrc=0xDEADBEEF,
        payload=b"\xff\xff\xff\xff",
    )
    assert packet.version == 2
    assert packet.serialize() == SIMPLE_RTP


def test_parse_full_rtp() -> None:
    packet = parse_rtp(FULL_RTP)
    assert packet == RtpPacket(
        payload_type=8,
        sequence_number=1,
        timestamp=1,
        ssrc=0x11223344,
        payload=b"\x01\x02",
        marker=True,
        csrc=(1, 2),
        extension=RtpHeaderExtension(profile=0xBEDE, data=bytes.fromhex("10aa0000")),
        padding=3,
    )
    assert packet.serialize() == FULL_RTP


def test_rtp_header_only_and_empty_extension() -> None:
    header_only = bytes.fromhex("80 7f ffff ffffffff 00000000")  # PT 127, max seq and timestamp
    packet = parse_rtp(header_only)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp) == (
        127,
        0xFFFF,
        0xFFFFFFFF,
    )
    assert packet.payload == b""
    assert packet.serialize() == header_only
    with_empty_extension = bytes.fromhex("90 00 0000 00000000 00000000 1000 0000")  # X=1, 0 words
    packet = parse_rtp(with_empty_extension)
    assert packet.extension == RtpHeaderExtension(profile=0x1000, data=b"")
    assert packet.serialize() == with_empty_extension


def test_rtp_padding_that_fills_the_payload() -> None:
    # P=1 and one padding octet, nothing else
    packet = parse_rtp(bytes.fromhex("a0 00 0000 00000000 00000000 01"))
    assert (packet.padding, packet.payload) == (1, b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "shorter", id="empty"),
        pytest.param(SIMPLE_RTP[:11], "shorter", id="eleven-octets"),
        pytest.param(b"\x40" + SIMPLE_RTP[1:], "version 1", id="version-1"),
        pytest.param(b"\x00" + SIMPLE_RTP[1:], "version 0", id="version-0"),
        pytest.param(b"\xc0" + SIMPLE_RTP[1:], "version 3", id="version-3"),
        pytest.param(b"\x8f" + SIMPLE_RTP[1:], "CSRC count 15", id="csrc-beyond"),
        pytest.param(b"\x81" + SIMPLE_RTP[1:12], "CSRC count 1", id="csrc-one-missing"),
        pytest.param(b"\x90" + SIMPLE_RTP[1:12], "extension", id="extension-header-missing"),
        pytest.param(
            bytes.fromhex("90 00 0000 00000000 00000000 bede 0002 00000000"),
            "extension of 2 words",
            id="extension-length-beyond",
        ),
        pytest.param(b"\xa0" + SIMPLE_RTP[1:-1] + b"\x00", "padding of 0", id="padding-zero"),
        pytest.param(b"\xa0" + SIMPLE_RTP[1:-1] + b"\x05", "padding of 5", id="padding-beyond"),
        pytest.param(
            bytes.fromhex("b1 00 0000 00000000 00000000 00000001 1000 0000 02"),
            "padding of 2",
            id="padding-into-extension",
        ),
    ],
)
def test_malformed_rtp(data: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        parse_rtp(data)


@pytest.mark.parametrize("payload_type", [72, 73, 74, 75, 76])
@pytest.mark.parametrize("marker", [0x00, 0x80])
def test_rtcp_payload_types_are_not_rtp(payload_type: int, marker: int) -> None:
    data = bytes((0x80, marker | payload_type)) + SIMPLE_RTP[2:]
    with pytest.raises(MediaError, match="RTCP"):
        parse_rtp(data)


@pytest.mark.parametrize("payload_type", [71, 77])
def test_payload_types_beside_rtcp_are_rtp(payload_type: int) -> None:
    assert parse_rtp(bytes((0x80, payload_type)) + SIMPLE_RTP[2:]).payload_type == payload_type


def test_is_rtcp() -> None:
    assert is_rtcp(bytes.fromhex("80c8"))  # SR
    assert is_rtcp(bytes.fromhex("81ca0003"))  # SDES
    assert is_rtcp(bytes.fromhex("80c0"))  # 192, lowest of the RFC 5761 range
    assert is_rtcp(bytes.fromhex("80df"))  # 223, highest
    assert not is_rtcp(SIMPLE_RTP)
    assert not is_rtcp(FULL_RTP)  # M=1 PT=8 is 0x88
    assert not is_rtcp(bytes.fromhex("80e0"))  # M=1 PT=96, dynamic
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"payload_type": 128}, "payload type 128"),
        ({"payload_type": -1}, "payload type -1"),
        ({"payload_type": 72}, "RFC 5761"),
        ({"csrc": tuple(range(16))}, "16 CSRCs"),
        ({"padding": 256}, "padding"),
        ({"padding": -1}, "padding"),
        ({"extension": RtpHeaderExtension(profile=1, data=b"abc")}, "multiple of 4"),
        ({"extension": RtpHeaderExtension(profile=0x10000)}, "out of range"),
        ({"sequence_number": 0x10000}, "out of range"),
        ({"timestamp": -1}, "out of range"),
        ({"ssrc": 1 << 32}, "out of range"),
        ({"csrc": (1 << 32,)}, "out of range"),
    ],
)
def test_rtp_fields_that_do_not_fit(changes: dict[str, object], message: str) -> None:
    packet = dataclasses.replace(parse_rtp(SIMPLE_RTP), **changes)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match=message):
        packet.serialize()


# --- RTCP vectors ------------------------------------------------------------------------------

SR = bytes.fromhex(
    "81"  # V=2 P=0 RC=1
    "c8"  # PT=200 SR
    "000c"  # length: 12 words after this one (24 sender info + 24 report block)
    "11223344"  # SSRC of sender
    "00000001"  # NTP timestamp, most significant word
    "00000002"  # NTP timestamp, least significant word
    "000000a0"  # RTP timestamp 160
    "0000000a"  # sender's packet count 10
    "00000640"  # sender's octet count 1600
    "55667788"  # report block: SSRC_1
    "40"  # fraction lost 64/256
    "ffffff"  # cumulative number of packets lost: -1 (24-bit signed)
    "00010005"  # extended highest sequence number: cycle 1, seq 5
    "00000010"  # interarrival jitter 16
    "00010000"  # last SR (LSR)
    "00020000"  # delay since last SR (DLSR): 2 s in 1/65536 s
)

SR_PACKET = SenderReport(
    ssrc=0x11223344,
    sender_info=SenderInfo(
        ntp_timestamp=0x0000000100000002, rtp_timestamp=160, packet_count=10, octet_count=1600
    ),
    reports=(
        ReportBlock(
            ssrc=0x55667788,
            fraction_lost=64,
            cumulative_lost=-1,
            highest_sequence=0x00010005,
            jitter=16,
            last_sr=0x00010000,
            delay_since_last_sr=0x00020000,
        ),
    ),
)

RR = bytes.fromhex(
    "80"  # V=2 P=0 RC=0
    "c9"  # PT=201 RR
    "0001"  # length: 1 word
    "11223344"  # SSRC of packet sender
)

SDES = bytes.fromhex(
    "81"  # V=2 P=0 SC=1
    "ca"  # PT=202 SDES
    "0003"  # length: 3 words
    "11223344"  # chunk SSRC
    "01"  # item CNAME
    "05"  # length 5
    "616c696365"  # "alice"
    "00"  # null item ends the list, and the chunk is already at a 32-bit boundary
)

BYE = bytes.fromhex(
    "81"  # V=2 P=0 SC=1
    "cb"  # PT=203 BYE
    "0002"  # length: 2 words
    "11223344"  # SSRC
    "03"  # reason length 3
    "627965"  # "bye"
)

APP = bytes.fromhex(
    "80"  # V=2 P=0 subtype=0
    "cc"  # PT=204 APP
    "0002"  # length: 2 words
    "11223344"  # SSRC
    "74657374"  # name "test"
)


def test_parse_sender_report() -> None:
    assert parse_rtcp(SR) == [SR_PACKET]
    assert SR_PACKET.serialize() == SR
    assert SR_PACKET.sender_info.ntp_middle == 0x00010000


def test_parse_receiver_report_without_blocks() -> None:
    assert parse_rtcp(RR) == [ReceiverReport(ssrc=0x11223344)]
    assert ReceiverReport(ssrc=0x11223344).serialize() == RR


def test_parse_sdes() -> None:
    [sdes] = parse_rtcp(SDES)
    assert sdes == SourceDescription(
        chunks=(SdesChunk(ssrc=0x11223344, items=(SdesItem(type=SDES_CNAME, value=b"alice"),)),)
    )
    assert isinstance(sdes, SourceDescription)
    assert sdes.chunks[0].cname == "alice"
    assert sdes.serialize() == SDES


def test_parse_bye() -> None:
    assert parse_rtcp(BYE) == [Goodbye(ssrcs=(0x11223344,), reason=b"bye")]
    assert Goodbye(ssrcs=(0x11223344,), reason=b"bye").serialize() == BYE


def test_parse_unknown_kept_raw() -> None:
    app = UnknownRtcpPacket(packet_type=204, count=0, body=bytes.fromhex("1122334474657374"))
    assert parse_rtcp(APP) == [app]
    assert app.serialize() == APP


def test_parse_compound() -> None:
    compound = SR + SDES + BYE + APP
    packets = parse_rtcp(compound)
    assert [type(packet) for packet in packets] == [
        SenderReport,
        SourceDescription,
        Goodbye,
        UnknownRtcpPacket,
    ]
    assert serialize_rtcp(packets) == compound


def test_sdes_chunks_with_padding_and_several_items() -> None:
    data = bytes.fromhex(
        "82"  # V=2 P=0 SC=2
        "ca"  # SDES
        "0004"  # 4 words
        "00000001"  # chunk 1 SSRC
        "0101"  # CNAME, 1 octet
        "61"  # "a"
        "00"  # null item, which brings the chunk to the 32-bit boundary
        "00000002"  # chunk 2 SSRC
        "0201"  # NAME, 1 octet
        "62"  # "b"
        "00"  # null item, at the boundary
    )
    chunk_1 = SdesChunk(ssrc=1, items=(SdesItem(type=1, value=b"a"),))
    chunk_2 = SdesChunk(ssrc=2, items=(SdesItem(type=2, value=b"b"),))
    assert parse_rtcp(data) == [SourceDescription(chunks=(chunk_1, chunk_2))]
    assert chunk_2.cname is None
    assert SourceDescription(chunks=(chunk_1, chunk_2)).serialize() == data
    # a chunk ending on the boundary still gets its null item, then three more null octets
    chunk_3 = SdesChunk(ssrc=3, items=(SdesItem(type=1, value=b"ab"),))
    assert chunk_3.serialize() == bytes.fromhex("00000003 0102 6162 00000000")


def test_bye_without_reason_and_with_padding() -> None:
    data = bytes.fromhex("82 cb 0002 00000001 00000002")  # SC=2, no reason
    assert parse_rtcp(data) == [Goodbye(ssrcs=(1, 2))]
    assert Goodbye(ssrcs=(1, 2)).serialize() == data
    padded_reason = bytes.fromhex("81 cb 0003 00000001 05 6869676831 0000")  # reason "high1"
    assert parse_rtcp(padded_reason) == [Goodbye(ssrcs=(1,), reason=b"high1")]
    assert Goodbye(ssrcs=(1,), reason=b"high1").serialize() == padded_reason


def test_rtcp_padding_bit() -> None:
    # RR with P=1: one word of padding whose last octet counts 4
    data = bytes.fromhex("a0 c9 0002 11223344 00000004")
    assert parse_rtcp(data) == [ReceiverReport(ssrc=0x11223344)]


def test_report_extension_is_kept_and_padded() -> None:
    rr = ReceiverReport(ssrc=1, extension=b"xyz")
    wire = rr.serialize()
    assert wire == bytes.fromhex("a0 c9 0002 00000001 78797a 01")  # P=1, one padding octet
    assert parse_rtcp(wire) == [rr]


def test_cumulative_lost_extremes() -> None:
    for lost in (-0x800000, -1, 0, 1, 0x7FFFFF):
        block = ReportBlock(ssrc=1, cumulative_lost=lost)
        rr = ReceiverReport(ssrc=2, reports=(block,))
        assert parse_rtcp(rr.serialize()) == [rr]
    assert ReportBlock(ssrc=1, cumulative_lost=-0x800000).serialize()[4:8] == b"\x00\x80\x00\x00"


def test_build_compound_report_sr() -> None:
    info = SR_PACKET.sender_info
    data = build_compound_report(
        ssrc=0x11223344, cname="alice", reports=SR_PACKET.reports, sender_info=info
    )
    assert data == SR + SDES


def test_build_compound_report_rr_splits_past_31_blocks() -> None:
    reports = [ReportBlock(ssrc=n) for n in range(40)]
    packets = parse_rtcp(build_compound_report(ssrc=7, cname="bob@host", reports=reports))
    assert packets == [
        ReceiverReport(ssrc=7, reports=tuple(reports[:31])),
        ReceiverReport(ssrc=7, reports=tuple(reports[31:])),
        SourceDescription(
            chunks=(SdesChunk(ssrc=7, items=(SdesItem(type=1, value=b"bob@host"),)),)
        ),
    ]
    assert parse_rtcp(build_compound_report(ssrc=7, cname="x")) == [
        ReceiverReport(ssrc=7),
        SourceDescription(chunks=(SdesChunk(ssrc=7, items=(SdesItem(type=1, value=b"x"),)),)),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(RR[:3], "header", id="three-octets"),
        pytest.param(RR + b"\x80", "header", id="trailing-octet"),
        pytest.param(b"\x40" + RR[1:], "version 1", id="version-1"),
        pytest.param(RR + b"\x00" + RR[1:], "version 0", id="second-packet-version-0"),
        pytest.param(RR[:7], "runs past", id="length-beyond"),
        pytest.param(SR + SDES[:-1], "runs past", id="truncated-compound"),
        pytest.param(bytes.fromhex("a0c90000"), "padding of 0", id="padding-empty-body"),
        pytest.param(bytes.fromhex("a0c90001 11223300"), "padding of 0", id="padding-zero"),
        pytest.param(bytes.fromhex("a0c90001 11223305"), "padding of 5", id="padding-beyond"),
        pytest.param(bytes.fromhex("81c90001 11223344"), "RR with 1", id="rr-count-beyond"),
        pytest.param(b"\x82" + SR[1:], "SR with 2", id="sr-count-beyond"),
        pytest.param(bytes.fromhex("80c80001 11223344"), "SR with 0", id="sr-too-short"),
        pytest.param(bytes.fromhex("80c90000"), "RR with 0", id="rr-without-ssrc"),
        pytest.param(b"\x82" + SDES[1:], "chunk runs past", id="sdes-count-beyond"),
        pytest.param(
            bytes.fromhex("81ca0002 11223344 01050000"), "item runs past", id="sdes-item-beyond"
        ),
        pytest.param(
            bytes.fromhex("81ca0002 11223344 01020000"), "null item", id="sdes-no-terminator"
        ),
        pytest.param(
            bytes.fromhex("a1ca0002 11223344 00000002"), "chunk padding", id="sdes-pad-beyond"
        ),
        pytest.param(
            bytes.fromhex("81ca0003 11223344 00000000 00000000"),
            "after the last",
            id="sdes-trailing",
        ),
        pytest.param(
            bytes.fromhex("a1ca0002 11223344 01000003"), "item runs past", id="sdes-item-cut"
        ),
        pytest.param(bytes.fromhex("82cb0001 11223344"), "BYE with 2", id="bye-count-beyond"),
        pytest.param(
            bytes.fromhex("81cb0002 11223344 05627965"), "reason runs past", id="bye-reason-beyond"
        ),
    ],
)
def test_malformed_rtcp(data: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        parse_rtcp(data)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (ReceiverReport(ssrc=1, reports=(ReportBlock(ssrc=1),) * 32), "32 report blocks"),
        (ReceiverReport(ssrc=1 << 32), "SSRC out of range"),
        (ReceiverReport(ssrc=1, reports=(ReportBlock(ssrc=1, fraction_lost=256),)), "fraction"),
        (ReceiverReport(ssrc=1, reports=(ReportBlock(ssrc=1, cumulative_lost=1 << 23),)), "24"),
        (ReceiverReport(ssrc=1, reports=(ReportBlock(ssrc=1, jitter=-1),)), "out of range"),
        (ReceiverReport(ssrc=1, extension=bytes(4 * 0x10000)), "16-bit length"),
        (
            dataclasses.replace(
                SR_PACKET, sender_info=dataclasses.replace(SR_PACKET.sender_info, packet_count=-1)
            ),
            "out of range",
        ),
        (SourceDescription(chunks=(SdesChunk(ssrc=1),) * 32), "count 32"),
        (SourceDescription(chunks=(SdesChunk(ssrc=-1),)), "SSRC out of range"),
        (
            SourceDescription(chunks=(SdesChunk(ssrc=1, items=(SdesItem(type=0, value=b""),)),)),
            "item type 0",
        ),
        (
            SourceDescription(
                chunks=(SdesChunk(ssrc=1, items=(SdesItem(type=1, value=bytes(256)),)),)
            ),
            "255 octets",
        ),
        (Goodbye(ssrcs=tuple(range(32))), "32 SSRCs"),
        (Goodbye(ssrcs=(-1,)), "SSRC out of range"),
        (Goodbye(ssrcs=(1,), reason=bytes(256)), "255 octets"),
        (UnknownRtcpPacket(packet_type=256, count=0, body=b""), "packet type 256"),
        (UnknownRtcpPacket(packet_type=204, count=32, body=b""), "count 32"),
    ],
)
def test_rtcp_fields_that_do_not_fit(packet: RtcpPacket, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        packet.serialize()


def test_media_error_is_a_value_error() -> None:
    assert issubclass(MediaError, ValueError)
    assert parse_rtcp(SR)[0].serialize() == SR  # and the RTCP_ constants are the wire values
    assert parse_rtcp(BYE)[0].serialize()[1] == RTCP_BYE


# --- property tests ----------------------------------------------------------------------------

FUZZ = settings(max_examples=300, database=None, deadline=None)

u32 = st.integers(0, 0xFFFFFFFF)


@FUZZ
@given(st.binary(max_size=200))
def test_parse_rtp_returns_or_raises_media_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except MediaError:
        return
    # whatever parses serializes back to bytes that parse to the same packet
    assert parse_rtp(packet.serialize()) == packet


@FUZZ
@given(st.binary(max_size=200))
def test_parse_rtcp_returns_or_raises_media_error(data: bytes) -> None:
    try:
        packets = parse_rtcp(data)
    except MediaError:
        return
    assert parse_rtcp(serialize_rtcp(packets)) == packets


@FUZZ
@given(
    # a plausible header (V=2, payload type outside the RTCP range) so fuzzing reaches the options
    st.sampled_from([0x80, 0x90, 0xA0, 0xB0]).flatmap(
        lambda first: st.tuples(st.integers(0, 15), st.binary(max_size=120)).map(
            lambda rest: bytes((first | rest[0], 0)) + bytes(10) + rest[1]
        )
    )
)
def test_parse_rtp_with_valid_version(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except MediaError:
        return
    assert parse_rtp(packet.serialize()) == packet


@FUZZ
@given(
    st.sampled_from([200, 201, 202, 203, 204]),
    st.integers(0, 31),
    st.integers(0, 12),
    st.binary(max_size=120),
)
def test_parse_rtcp_with_valid_header(
    packet_type: int, count: int, words: int, tail: bytes
) -> None:
    data = bytes((0x80 | count, packet_type)) + words.to_bytes(2, "big") + tail
    try:
        packets = parse_rtcp(data)
    except MediaError:
        return
    assert parse_rtcp(serialize_rtcp(packets)) == packets


@FUZZ
@given(
    payload_type=st.integers(0, 127).filter(lambda pt: not 72 <= pt <= 76),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        RtpHeaderExtension,
        profile=st.integers(0, 0xFFFF),
        data=st.integers(0, 4).flatmap(
            lambda words: st.binary(min_size=4 * words, max_size=4 * words)
        ),
    ),
    padding=st.integers(0, 255),
)
def test_rtp_round_trip(
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool,
    csrc: tuple[int, ...],
    extension: RtpHeaderExtension | None,
    padding: int,
) -> None:
    packet = RtpPacket(
        payload_type=payload_type,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
        csrc=csrc,
        extension=extension,
        padding=padding,
    )
    assert parse_rtp(packet.serialize()) == packet


report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    last_sr=u32,
    delay_since_last_sr=u32,
)


@FUZZ
@given(
    ssrc=u32,
    cname=st.text(max_size=60),
    reports=st.lists(report_blocks, max_size=40),
    sender_info=st.none()
    | st.builds(
        SenderInfo,
        ntp_timestamp=st.integers(0, (1 << 64) - 1),
        rtp_timestamp=u32,
        packet_count=u32,
        octet_count=u32,
    ),
)
def test_compound_round_trip(
    ssrc: int, cname: str, reports: list[ReportBlock], sender_info: SenderInfo | None
) -> None:
    data = build_compound_report(ssrc=ssrc, cname=cname, reports=reports, sender_info=sender_info)
    packets = parse_rtcp(data)
    assert serialize_rtcp(packets) == data
    head = packets[0]
    assert isinstance(head, SenderReport if sender_info else ReceiverReport)
    parsed_reports = [
        block
        for packet in packets
        if isinstance(packet, SenderReport | ReceiverReport)
        for block in packet.reports
    ]
    assert parsed_reports == reports
    last = packets[-1]
    assert isinstance(last, SourceDescription)
    assert last.chunks[0].cname == cname
