"""sipbridge: phone calls as participants in real-time rooms, speaking LiveKit's protocols."""

# First: whether the compiled core runs or its sources (`_compiled.py`), before any of it loads.
from sipbridge import _compiled as _compiled

__version__ = "0.1.0"
