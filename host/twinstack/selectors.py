"""Readiness of board sockets: :class:`TwinSelector`, a :class:`selectors.BaseSelector`.

Board sockets have no file descriptor, so the standard selectors cannot watch them. A
TwinSelector registers a watcher on each socket's OSM state; the OSM calls it whenever the
socket may have become readable or writable (data, a connection to accept, a free message
frame, a reply to a SEND, a reset), and ``select()`` wakes up and checks. Usage is the
standard one::

    sel = TwinSelector()
    sel.register(sock, EVENT_READ | EVENT_WRITE, data)
    for key, events in sel.select(timeout=1.0):
        ...

Readable: data or EOF to receive, a connection to accept, a datagram, or an error.
Writable: a SEND can be posted without waiting (fewer than the limit in flight and a free
message frame on the connection's IOP), or the next send would fail at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from selectors import EVENT_READ, EVENT_WRITE, BaseSelector, SelectorKey
from typing import Any

from .socket import Socket

__all__ = ["EVENT_READ", "EVENT_WRITE", "TwinSelector"]

_keys = itertools.count(1 << 20)   # pseudo file descriptors of SelectorKeys


class TwinSelector(BaseSelector):
    """A selector over :class:`twinstack.socket.Socket` objects (of one or more boards)."""

    def __init__(self) -> None:
        self._keys: dict[int, SelectorKey] = {}     # id(socket) -> key
        self._fds: dict[int, SelectorKey] = {}      # pseudo fd -> key
        self._cond = threading.Condition()
        self._gen = 0
        self._closed = False

    def _wake(self) -> None:
        # Runs in OSM threads with the board's lock held: only bump and notify.
        with self._cond:
            self._gen += 1
            self._cond.notify_all()

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        if not isinstance(fileobj, Socket):
            raise ValueError(f"TwinSelector watches twinstack sockets only, not {fileobj!r}")
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        if id(fileobj) in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        key = SelectorKey(fileobj, next(_keys), events, data)
        self._keys[id(fileobj)] = key
        self._fds[key.fd] = key
        with fileobj.board._lock:
            fileobj.endpoint.watchers.append(self._wake)
        self._wake()
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        key = self._keys.pop(id(fileobj), None)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        del self._fds[key.fd]
        with fileobj.board._lock:
            try:
                fileobj.endpoint.watchers.remove(self._wake)
            except ValueError:
                pass
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        key = self.get_key(fileobj)
        if events == key.events and data is key.data:
            return key
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_key(self, fileobj: Any) -> SelectorKey:
        try:
            return self._keys[id(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[int, SelectorKey]:
        return self._fds

    def _ready(self) -> list[tuple[SelectorKey, int]]:
        out = []
        for key in list(self._keys.values()):
            readable, writable = key.fileobj._readiness()
            events = (EVENT_READ if readable else 0) | (EVENT_WRITE if writable else 0)
            events &= key.events
            if events:
                out.append((key, events))
        return out

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            with self._cond:
                gen = self._gen
            ready = self._ready()
            if ready:
                return ready
            with self._cond:
                while self._gen == gen:
                    if deadline is None:
                        self._cond.wait(1.0)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    self._cond.wait(left)

    def close(self) -> None:
        for key in list(self._keys.values()):
            self.unregister(key.fileobj)
        self._closed = True
