"""Responses that wait: they end when the client goes away (ASGI `http.disconnect`).

`client_gone(request, waiter)` watches the connection while a long-poll sleeps and wakes the
waiter with "gone" when the client hangs up. `EventStreamResponse` streams server-sent events
and listens for the disconnect itself, whatever the server's ASGI spec version, then releases
what the stream held (`on_close`).
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from service.waiters import Waiter


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@asynccontextmanager
async def client_gone(request: Request, waiter: Waiter):
    async def watch():
        await _disconnected(request.receive)
        waiter.wake("gone")

    task = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        task.cancel()


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[str], *, headers: dict[str, str], on_close: Callable[[], None]):
        super().__init__(frames, headers=headers, media_type=self.media_type)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        pump = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            self.on_close()
            await asyncio.gather(pump, gone, return_exceptions=True)
        error = None if pump.cancelled() else pump.exception()
        if error is not None and not isinstance(error, OSError):  # OSError: the client went away mid-write
            raise error
