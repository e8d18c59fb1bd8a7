"""mushu's shared core: what the services and the client both run.

- :mod:`.wire`: the wire protocol (``docs/protocol.md``), the only implementation;
- :mod:`.bus`: reading the bus (SUB sockets, byte-bounded queues, local endpoints);
- :mod:`.control`: control requests with timeouts (the client side of every service);
- :mod:`.fetch`: fetching what a consumer missed from a service's history;
- :mod:`.follow`: following a stream without sockets (samples, sample clock, markers);
- :mod:`.recordings`: the recording format and its reader;
- :mod:`.config`, :mod:`.configfile`: settings; :mod:`.clock`: clocks and offsets;
- :mod:`.security`: CURVE keys and roles; :mod:`.process`: what every service process does;
- :mod:`.arrays`, :mod:`.errors`.

Importing it loads pyzmq, msgpack and numpy, nothing else.
"""

__version__ = "0.1.0"
