"""Realtime: the ``/ws/metrics`` protocol (see ``docs/realtime-protocol.md``).

This package holds the parts that do not depend on a server: the message
protocol (:mod:`.protocol`) and the limits a connection is held to
(:mod:`.limits`). Standard library only.
"""
