"""mushu viewer: a live (or recorded) stream in the browser.

``core`` computes frames, signal quality and who may do what; ``follower`` follows the bus in a thread of
its own; ``offline`` serves a finished recording; ``web`` is the aiohttp server of the page
(``static/``) and its WebSockets; ``service`` the console script ``mushu-viewer`` (``mushu view``).
Needs aiohttp (``pip install mushu[viewer]``).
"""
