"""mushu recorder service: writes recordings that wyrm and MNE-Python open as they are.

``files`` writes one recording's files, ``core`` decides what goes in them
(no sockets), ``service`` is the process around it. The file format is
described in :mod:`mushu_core.recordings`.
"""
