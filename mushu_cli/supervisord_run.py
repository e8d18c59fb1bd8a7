"""supervisord as ``mushu up`` runs it: supervisor's own, with a main loop that turns at least every 0.1 s.

supervisord's main loop sleeps in ``poll()`` for up to a second, and it
starts a program that died again only on its next turn: up to a second lost
before a crashed service even begins to start. Here the sleep is capped at
:data:`POLL_S`, so a service killed by anything is back in about its own
start-up time. The turn costs a few tens of microseconds.

Run by path (``python .../supervisord_run.py -c CONF``), not with ``-m``, so
that supervisord does not import mushu_client (and numpy) for nothing.
"""

import sys

#: Longest sleep of supervisord's main loop, in seconds (supervisor's own: 1).
POLL_S = 0.1


def main(argv=None):
    """Run supervisord with ``argv`` (e.g. ``["-c", "supervisord.conf"]``) and the shorter loop."""
    from supervisor import poller, supervisord

    class Poller(poller.Poller):
        def poll(self, timeout):
            return super().poll(min(timeout, POLL_S))

    poller.Poller = Poller  # supervisord creates its poller as poller.Poller(options)
    supervisord.main(argv)


if __name__ == "__main__":
    del sys.path[0]  # this file's folder: mushu's command modules, nothing supervisor should import
    main(sys.argv[1:])
