"""Live frames over Redis: pub/sub pushes each frame to every process of
the app, a hash keeps each sender's latest for a reader that resyncs (after
a gap, a reconnection, or a Redis restart that lost the hash: the senders
write it again within a second).

Keys: the hash and the channel are both ``aegis:live:<live_group>``; the
hash expires :data:`~aegis_mw.core.live_board.FORGET_AFTER` after the last
frame of any sender, so an app that is gone leaves nothing behind.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ..core.live_board import FORGET_AFTER

#: Seconds a connection attempt or a reply may take.
TIMEOUT_SECONDS = 2.0


class RedisTransport:
    """One process's connections: a client for the hash and the publishing,
    and a pub/sub connection subscribed to the app's channel."""

    kind = "redis"
    pushes_every_frame = True

    def __init__(self, url: str, group: str) -> None:
        self.key = f"aegis:live:{group}"
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS,
            client_name="aegis_mw-live",
        )  # fmt: skip
        self.pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(self.key)  # connects now: a failure is the link's to retry
        except BaseException:
            self.close()
            raise

    def send(self, sender: str, frame: bytes) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, sender, frame)
        pipe.expire(self.key, int(FORGET_AFTER))
        pipe.publish(self.key, frame)
        pipe.execute()

    def receive(self, timeout: float) -> list[bytes]:
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            # Once one came, take what else is there without waiting.
            wait = 0.0 if frames else max(0.0, deadline - time.monotonic())
            message = self.pubsub.get_message(timeout=wait)
            if message is None:
                if frames or time.monotonic() >= deadline:
                    return frames
                continue
            if message.get("type") == "message":
                frames.append(message["data"])

    def stored(self) -> list[bytes]:
        return list(self.client.hgetall(self.key).values())

    def forget(self, senders: list[str]) -> None:
        self.client.hdel(self.key, *senders)

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            self.client.close()
