"""mushu amp service: runs one amplifier driver and publishes its sample blocks.

``core`` holds the state and rules (no sockets), ``service`` the process
around it, ``drivers`` the registry and the drivers.
"""
