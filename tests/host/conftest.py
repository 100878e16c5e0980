"""Fixtures of the host tests: a strict fake board and a board brought up on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import twinstack

from tests.host.fakeboard import FakeBoard


@pytest.fixture
def fake() -> Iterator[FakeBoard]:
    f = FakeBoard()
    yield f
    f.close()


@pytest.fixture
def board(fake: FakeBoard) -> Iterator[twinstack.Board]:
    b = twinstack.connect(fake.url, timeout=3.0)
    yield b
    b.close()
    assert fake.violations == []


def wait_for(pred: Callable[[], object], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll until pred() is true (tests of asynchronous effects on the fake board)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
