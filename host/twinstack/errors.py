"""Errors of the TwinStack host library and the board's errno numbers.

The board reports socket errors as MicroPython errno values (``py/mperrno.h``: the Linux
numbers). They are mapped to this host's ``errno`` values by name, like mpremote's
``mp_errno.py``, so the right ``OSError`` subclass (``ConnectionRefusedError``, ...) comes out
on any platform.
"""

from __future__ import annotations

import errno
import os

from .proto import i2o

# MicroPython errno numbers (py/mperrno.h) -> names.
_BOARD_ERRNO = {
    1: "EPERM", 2: "ENOENT", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM",
    13: "EACCES", 17: "EEXIST", 19: "ENODEV", 21: "EISDIR", 22: "EINVAL", 32: "EPIPE",
    90: "EMSGSIZE", 95: "EOPNOTSUPP", 98: "EADDRINUSE", 99: "EADDRNOTAVAIL",
    101: "ENETUNREACH", 103: "ECONNABORTED", 104: "ECONNRESET", 105: "ENOBUFS",
    106: "EISCONN", 107: "ENOTCONN", 110: "ETIMEDOUT", 111: "ECONNREFUSED",
    113: "EHOSTUNREACH", 114: "EALREADY", 115: "EINPROGRESS",
}

# DetailedStatus values that are not errno values.
_DETAIL_TEXT = {
    i2o.DS_BAD_KEY: (errno.EINVAL, "the board does not know that parameter"),
    i2o.DS_INSUFFICIENT_RESOURCES: (errno.ENOBUFS, "the board is out of resources"),
    i2o.DS_UNKNOWN_FUNCTION: (errno.EOPNOTSUPP, "the board does not know that function"),
    i2o.DS_UNKNOWN_TARGET: (errno.EOPNOTSUPP, "no such target on the IOP"),
    i2o.DS_BAD_HANDLE: (errno.EBADF, "unknown or stale board socket handle"),
    i2o.DS_BAD_LENGTH: (errno.EINVAL, "the board found the message too short"),
}

_FAIL_TEXT = {
    i2o.FAIL_BAD_MFA: "message frame address out of range",
    i2o.FAIL_MFA_IN_USE: "message frame address already in use",
    i2o.FAIL_BAD_IOP: "no such IOP",
    i2o.FAIL_FRAME_TOO_LARGE: "message frame too large",
    i2o.FAIL_BAD_HEADER: "bad message header",
    i2o.FAIL_NOT_READY: "the board is not brought up (no INIT)",
}


class VersionMismatch(ConnectionError):
    """The board speaks another version of the I2O message set; nothing was changed."""


def host_errno(board_errno: int) -> int:
    """This host's errno value for a board errno value (unknown ones pass through)."""
    name = _BOARD_ERRNO.get(board_errno)
    return getattr(errno, name, board_errno) if name else board_errno


def oserror(err: int, text: str | None = None) -> OSError:
    """``OSError(err, text)``: CPython picks the subclass (ConnectionRefusedError, ...)."""
    return OSError(err, text or os.strerror(err))


def status_error(req_status: int, detail: int, what: str = "") -> OSError | None:
    """The exception for a reply status word, or None for success."""
    if req_status == i2o.RS_SUCCESS and detail == i2o.DS_SUCCESS:
        return None
    board = i2o.status_errno(detail)
    prefix = f"{what}: " if what else ""
    if board:
        err = host_errno(board)
        return oserror(err, prefix + os.strerror(err))
    if detail in _DETAIL_TEXT:
        err, text = _DETAIL_TEXT[detail]
        return oserror(err, prefix + text)
    return oserror(errno.EIO, f"{prefix}board status 0x{req_status:02x}/0x{detail:04x}")


def fail_error(reason: int, what: str = "") -> OSError:
    """The exception for a FAIL reply (the messaging unit refused the frame)."""
    text = _FAIL_TEXT.get(reason, f"reason 0x{reason:02x}")
    prefix = f"{what}: " if what else ""
    return oserror(errno.EIO, f"{prefix}the board refused the message ({text})")
