"""Following a stream, without sockets: what every consumer (client, recorder, LSL bridge) does the same way.

- :mod:`.stream`: an amp's block stream (:class:`~.stream.BlockFollower`);
- :mod:`.markers`: a marker stream (:class:`~.markers.MarkerFollower`);
- :mod:`.timeline`: the stream's sample clock;
- :mod:`.placement`: markers placed on samples.
"""
