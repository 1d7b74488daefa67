"""Realtime: the ``/ws/metrics`` protocol (see ``docs/realtime-protocol.md``).

The parts that do not depend on a server are standard library only: the
message protocol (:mod:`.protocol`), the limits a connection is held to
(:mod:`.limits`) and its flow control by acknowledgement (:mod:`.flow`). The
hub (:mod:`.hub`), which builds and shares the frames, runs on anyio.
"""
