"""What a call leaves behind is freed by reference counting alone, without the cyclic garbage
collector: a leg that was answered, received audio from its phone, sat in a room with another
and was released is gone the moment the last reference to it is dropped (with the collector
off). A leg left in a reference cycle - its sockets holding its bound receivers - is freed only
by a full collection, whose pauses grow with everything a busy server keeps."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from sipbridge.media import codecs
from sipbridge.server.media.service import MediaService
from sipbridge.telephony.media import MediaPolicy
from tests.harness import eventually
from tests.server.media_phone import HOST, FakePhone
from tests.server.test_call_media import free_ports

pytestmark = pytest.mark.timeout(15)


async def test_a_released_leg_is_freed_without_the_cyclic_gc() -> None:
    svc = MediaService(HOST, free_ports(8))
    phones = [FakePhone(), FakePhone()]
    digits: list[str] = []
    try:
        legs = []
        for phone in phones:
            answer, leg = svc.negotiate(phone.offer(), MediaPolicy(), on_dtmf=digits.append)
            phone.accept(answer)
            svc.start(leg, timeout=5.0, on_timeout=lambda: None)
            svc.attach(leg, "room")
            legs.append(leg)
        silence = codecs.ulaw_encode_array(np.zeros(160, dtype=np.int16))
        for _ in range(5):
            phones[0].send_rtp(silence)
        await eventually(lambda: legs[0].stats.packets_in >= 5, "audio from the phone")
        first = legs.pop(0)
        gc.disable()
        try:
            svc.release(first)
            # Nothing but `first` (and getrefcount's own argument) refers to it any more:
            # dropping `first` frees it by reference counting. (Counted, not watched through a
            # weak reference: a compiled CallMedia takes none.)
            assert sys.getrefcount(first) == 2, gc.get_referrers(first)
        finally:
            gc.enable()
    finally:
        svc.close()
        for phone in phones:
            phone.close()
