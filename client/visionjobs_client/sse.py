"""A small server-sent events parser (the WHATWG event-stream format)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: Optional[str] = None
    retry: Optional[int] = None


class SSEDecoder:
    """Feed lines (without their line ending); get an ``Event`` at each blank line."""

    def __init__(self) -> None:
        self._event, self._data, self._id, self._retry = "", [], None, None

    def feed(self, line: str) -> Optional[Event]:
        if line == "":
            if not self._data and not self._event and self._id is None:
                return None
            ev = Event(event=self._event or "message", data="\n".join(self._data), id=self._id, retry=self._retry)
            self._event, self._data, self._id, self._retry = "", [], None, None
            return ev
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


def parse(lines: Iterable[str]) -> Iterator[Event]:
    decoder = SSEDecoder()
    for line in lines:
        ev = decoder.feed(line.rstrip("\r\n"))
        if ev is not None:
            yield ev
