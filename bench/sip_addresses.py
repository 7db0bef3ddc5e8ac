"""The addresses of bench/inbound.py's INVITE parsed, in one process: what `parse_address` costs a
call (issue 18). Compare two trees under callgrind, where the noise does not reach:

    PYTHONPATH=<tree>/src valgrind --tool=callgrind \\
        --toggle-collect='CPyDef_sip___headers___parse_address' \\
        .venv/bin/python bench/sip_addresses.py --messages 3000

(the instructions collected over --messages: From, To and Contact read of each; the To is the
same on every call, so found in the cache). Without valgrind it prints the CPU microseconds a
message, parse included (noisy on a shared machine: alternate the trees).

Each message is what sipp sends from bench/sipp/uac_inbound_timed.xml: a quoted display name in
the From (`"Carol" <sip:...>;tag=...`), an addr-spec Contact, the carrier's X- headers, each call
its own number, tag, branch and Call-ID.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sipbridge._compiled as compiled
from bench.common import print_result
from sipbridge.sip.message import parse_message

SDP = (
    "v=0\r\no=carrier 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
)


def invite(n: int) -> bytes:
    head = (
        "INVITE sip:+15105550100@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1-0\r\n"
        f'From: "Carol" <sip:+1355{n}@127.0.0.1:5061>;tag=4242SIPpTag00{n}\r\n'
        "To: <sip:+15105550100@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: sip:+1355{n}@127.0.0.1:5061\r\n"
        "Max-Forwards: 70\r\n"
        "X-Twilio-AccountSid: AC0123456789abcdef0123456789abcdef\r\n"
        f"X-Twilio-CallSid: CA{n}0123456789abcdef0123456789ab\r\n"
        f"X-call_leg_id: leg-{n}\r\n"
        f"X-call_session_id: session-{n}\r\n"
        f"X-Amzn-ConnectContactId: contact-{n}\r\n"
        f"X-Customer-Id: cust-{n}\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return (head + SDP).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    count = min(max(args.messages, 1), 200_000)  # bounded
    datas = [invite(n) for n in range(100_000, 100_000 + count)]
    start = time.process_time()
    for data in datas:
        message = parse_message(data)
        message.from_  # noqa: B018 - the accessors parse and keep the address
        message.to  # noqa: B018
        message.contacts  # noqa: B018
    spent = time.process_time() - start
    print(f"{compiled.MODE}: {spent / count * 1e6:.2f} us CPU a message (parse, From, To, Contact)")
    print_result(
        {
            "bench": "sip_addresses",
            "mode": compiled.MODE,
            "messages": count,
            "us_per_message": round(spent / count * 1e6, 2),
        }
    )


if __name__ == "__main__":
    main()
