"""The gateway's gRPC channels to the Flywheel services, one per address for the whole process.

The web console and the files / fine-tuning API both call the trainer and dataset-svc; they share
this holder, so one gateway process keeps one channel per service. A ``grpc.aio`` channel belongs
to the event loop it was made on, so the holder drops its channels (without awaiting them: that
loop is gone) when it is first used from another loop, as happens between test clients. Every
channel sends the service token (``flywheel_common.auth``).
"""

from __future__ import annotations

import asyncio

import grpc

from flywheel_common import auth


class ServiceChannels:
    """Lazily opened ``grpc.aio`` channels keyed by ``host:port``."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, address: str) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._channels, self._loop = {}, loop
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = auth.channel(address)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
