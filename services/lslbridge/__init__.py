"""mushu LSL bridge: a mushu data stream and its markers as Lab Streaming Layer outlets.

``bridge`` holds :class:`~mushu_lslbridge.bridge.LSLBridge` (subscribe,
refetch, stamp, push), ``service`` the console script ``mushu-lsl-bridge``.
Needs pylsl (``pip install mushu[lsl]``).
"""
