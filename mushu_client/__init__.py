"""mushu client: libmushu's API over the mushu services.

>>> import mushu_client
>>> amp = mushu_client.get_amp("sinusamp")
>>> amp.configure(f=10, fs=1000, channels=8)
>>> amp.start()
>>> data, markers = amp.get_data()   # (time, channels), [(ms, label), ...]
>>> amp.stop()

Several devices at once (``[amp.NAME]`` in mushu.toml): :class:`Streams`
reads their amps together, every sample's time on this host's clock.

Imports only pyzmq, msgpack and numpy (and :mod:`mushu_core`, the wire and
bus it shares with the services), so it runs wherever they do: a stimulus PC
on Windows sends markers with it.
"""

from mushu_core import __version__
from mushu_core.errors import (AmpError, EndOfData, Forbidden, GapWarning, MushuError, RecordingError, RecordingWarning,
                               RemoteError, SecurityError, ServiceUnavailable, ServiceWarning, UnknownAmp)
from mushu_core.recordings import Recording, load

from .amp import Amp, get_amp, get_available_amps
from .sender import MarkerSender, send_marker
from .streams import StreamData, Streams

__all__ = ["Amp", "get_amp", "get_available_amps", "Streams", "StreamData", "load", "Recording", "MushuError",
           "ServiceUnavailable", "RemoteError", "SecurityError", "Forbidden", "AmpError", "EndOfData", "GapWarning", "RecordingError",
           "RecordingWarning", "ServiceWarning", "UnknownAmp",
           "send_marker", "MarkerSender", "__version__"]
