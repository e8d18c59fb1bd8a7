"""mushu client: libmushu's API over the mushu services.

>>> import mushu_client
>>> amp = mushu_client.get_amp("sinusamp")
>>> amp.configure(f=10, fs=1000, channels=8)
>>> amp.start()
>>> data, markers = amp.get_data()   # (time, channels), [(ms, label), ...]
>>> amp.stop()

Imports only pyzmq, msgpack and numpy, so it runs wherever they do.
"""

__version__ = "0.1.0"

from .amp import Amp, get_amp, get_available_amps  # noqa: E402
from .errors import (AmpError, EndOfData, Forbidden, GapWarning, MushuError, RecordingError,  # noqa: E402
                     RecordingWarning, RemoteError, SecurityError, ServiceUnavailable, ServiceWarning)
from .recording import Recording, load  # noqa: E402
from .sender import MarkerSender, send_marker  # noqa: E402

__all__ = ["Amp", "get_amp", "get_available_amps", "load", "Recording", "MushuError", "ServiceUnavailable",
           "RemoteError", "SecurityError", "Forbidden", "AmpError", "EndOfData", "GapWarning", "RecordingError", "RecordingWarning", "ServiceWarning",
           "send_marker", "MarkerSender", "__version__"]
