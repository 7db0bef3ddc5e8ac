"""sipbridge: phone calls as participants in real-time rooms, speaking LiveKit's protocols."""

__version__ = "0.1.0"
