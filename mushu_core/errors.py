"""Exceptions and warnings of mushu: the client raises them, and the services' drivers raise :class:`EndOfData`."""


class MushuError(Exception):
    """Base class of mushu's own errors."""


class ServiceUnavailable(MushuError, ConnectionError):
    """A service did not answer at its endpoint within the timeout."""


class RemoteError(MushuError):
    """A service refused a request with an error that has no builtin equivalent.

    Attributes
    ----------
    type_name : str
        The exception type the service reported.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class SecurityError(ServiceUnavailable):
    """A CURVE handshake with a service failed: this client is not listed, has the
    wrong server key, or only one side uses CURVE (``docs/security.md``)."""


class Forbidden(MushuError, PermissionError):
    """The service refused a control request: the client's role may not run it."""


class UnknownAmp(MushuError, KeyError, ValueError):
    """No driver of the name asked for: a :class:`KeyError` as in libmushu, and a :class:`ValueError`.

    The message lists the known amps.
    """

    def __str__(self):  # KeyError's own shows the message quoted, as if it were the key
        return str(self.args[0]) if self.args else ""


class AmpError(MushuError):
    """The amplifier driver failed; acquisition has stopped."""


class GapWarning(UserWarning):
    """Samples were lost and could not be refetched from the history."""


class RecordingError(MushuError):
    """The recording failed; the files written so far stay readable."""


class RecordingWarning(UserWarning):
    """The recording in progress has a problem (it will raise at stop())."""


class ServiceWarning(UserWarning):
    """A service stopped answering; mushu waits for it to return."""


class EndOfData(MushuError, EOFError):
    """The amplifier's data ended (e.g. a replay reached its end); every sample was returned."""
