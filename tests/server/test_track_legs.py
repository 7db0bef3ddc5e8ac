"""`MediaService.track_legs` (server/media/track_legs.py): a leg's tracks found by the leg, so a
call's end forgets them without a pass over every call's tracks (issue 18)."""

from __future__ import annotations

from sipbridge.media import codecs
from sipbridge.media.room_audio import AudioLeg
from sipbridge.server.media.track_legs import TrackLegs


def test_a_legs_tracks_follow_every_change() -> None:
    phone, browser = AudioLeg(codecs.PCMU_SPEC), AudioLeg(codecs.PCMU_SPEC)
    legs = TrackLegs()
    legs["TR_a"] = phone
    legs["TR_b"] = phone
    legs["TR_c"] = browser
    legs["TR_b"] = browser  # the track given by another leg now
    assert legs.sids_of(phone) == ["TR_a"]
    assert legs.sids_of(browser) == ["TR_c", "TR_b"]
    del legs["TR_a"]
    assert legs.sids_of(phone) == [] and "TR_a" not in legs
    assert legs.pop("TR_c") is browser and legs.pop("TR_gone", None) is None
    assert legs.sids_of(browser) == ["TR_b"] and dict(legs) == {"TR_b": browser}
    legs.clear()
    assert legs.sids_of(browser) == [] and not legs
