from sipbridge.media.leg import RtpLeg

def relay_datagram(
    leg: RtpLeg, buf: bytearray, view: memoryview, addr: tuple[str, int], now: float, /
) -> bool: ...
