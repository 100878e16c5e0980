# The I2O message layer between the host (the OSM) and the board's IOPs (one per net kernel).
#
# One definition for both sides, like linkframe.py: the firmware imports it as
# netkernel.proto.i2o, the host package as twinstack.proto.i2o. MicroPython and CPython.
#
# The messaging unit over USB (DESIGN.md "The I2O queues over USB")
# ----------------------------------------------------------------
# There is no shared memory, so an MFA is the index of a frame slot in the receiver's pool
# and the free queues are credits. Four link kinds (linkframe.KIND_I2O_*) stand for the four
# ports of an I2O messaging unit; every number in them is little-endian:
#
#   KIND_I2O_POST   host -> board  iop(1) mfa(2) message        write MFA to IOP's inbound port
#   KIND_I2O_FREE   board -> host  iop(1) count(1) mfa(2)*count inbound MFAs free again (batch)
#   KIND_I2O_REPLY  board -> host  mfa(2) message               a message in host frame <mfa>
#   KIND_I2O_FLUSH  host -> board  count(1) mfa(2)*count        outbound frames back to the
#                                                              board's outbound free queue
#   KIND_I2O_INIT   host -> board  INIT_FMT                     bring-up (and reset)
#   KIND_I2O_INIT_REPLY board -> host INIT_REPLY_FMT            the board's answer
#   KIND_I2O_READY  board -> host  epoch(4)                     sent once at boot: a host that
#                                                              was attached knows the board reset
#
# Rules both sides keep:
# - The host posts to IOP k only with an MFA of IOP k that the board gave it (INIT_REPLY gives
#   0..inbound_depth-1 of every IOP; KIND_I2O_FREE gives them back after use). The board
#   refuses a POST whose MFA is out of range or already in use with a FAIL reply (below),
#   and never returns that MFA for it: an in-use one comes back once, for its first message.
# - The board sends a message only in an outbound frame the host granted (INIT: frames
#   0..outbound_frames-1; KIND_I2O_FLUSH returns them). Neither side can overrun the other.
# - No MFA is ever lost: a message the receiver cannot use is answered (FAIL or an error
#   status) and its MFA returned; a host that took an MFA and has nothing to send posts a
#   UTIL_NOP in it (the board returns the MFA and sends no reply).
# - INIT resets the board: every socket is aborted, every inbound MFA is free again, the
#   outbound free queue becomes the new grant. A version mismatch is refused (status
#   INIT_BAD_VERSION with the board's version) and changes nothing.
#
# Message frames (reference/i2o.md §3), 32-bit little-endian words:
#   w0  VersionOffset(8) = VERSION | MsgFlags(8) | MessageSize(16, words, header included)
#   w1  TargetAddress(12) | InitiatorAddress(12) | Function(8)
#   w2  InitiatorContext: the OSM's socket handle (or 0)
#   w3  TransactionContext: the OSM's request number (or 0 for unsolicited messages)
#   w4… payload. Byte counts in payloads are explicit: MessageSize is rounded up to words.
# Replies set FLAG_REPLY, echo w2 and w3, and have the status word at w4:
#   DetailedStatus(16) | reserved(8) | ReqStatus(8); reply payload from w5.
# A FAIL reply (FLAG_REPLY | FLAG_FAIL) answers a frame the messaging unit could not accept:
#   w4 status (ReqStatus ERROR_NO_DATA, DetailedStatus = the FAIL_* reason),
#   w5 preserved MFA (iop << 16 | mfa), w6.. the first words of the refused frame (up to
#   FAIL_COPY_WORDS), so the host finds the request by its contexts.
# Contexts are opaque to the board: it copies the 8 bytes, never makes ints of them.
#
# Addresses: the IOP executive is TID 0, the host TID 1, each IOP's socket ISM TID_SOCKET.
# Socket ISM handles are 16 bits: slot (low 8) | generation (high 8), so a stale handle is
# refused with DS_BAD_HANDLE instead of reaching another socket.
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

VERSION = const(0x01)            # I2O 1.5 in the low nibble; SGL offset 0
PROTOCOL_VERSION = const(1)      # the TwinStack message set (INIT checks it)
HEADER_WORDS = const(4)
HEADER_BYTES = const(16)
REPLY_WORDS = const(5)           # header + status
REPLY_BYTES = const(20)
FAIL_COPY_WORDS = const(4)       # words of a refused frame a FAIL reply carries back
EMPTY = const(0xFFFF)            # "no frame" (an empty 16-bit port)

# MsgFlags (reference/i2o.md §3)
FLAG_STATIC = const(0x01)
FLAG_MULTIPLE = const(0x10)      # more reply frames follow for the same request
FLAG_FAIL = const(0x20)
FLAG_LAST = const(0x40)          # the last frame of a multi-frame reply
FLAG_REPLY = const(0x80)

# Addresses
TID_EXEC = const(0x000)
TID_HOST = const(0x001)
TID_SOCKET = const(0x010)

# Functions: I2O utility and executive codes keep their standard numbers.
F_UTIL_NOP = const(0x00)         # no reply; the MFA comes back
F_PARAMS_SET = const(0x05)       # payload: ASCII name=value ...; reply: status + ASCII
F_PARAMS_GET = const(0x06)       # reply: ASCII "name=value ..." (MULTIPLE/LAST frames)
F_EXEC_STATUS_GET = const(0xA0)  # reply: STATUS_FMT
F_EXEC_SYS_QUIESCE = const(0xC3) # this IOP aborts all its sockets; reply when done
F_EXEC_ADAPTER_RESET = const(0xBD)  # to any IOP: every IOP aborts all its sockets
# Socket ISM functions (TwinStack's own class; payload layouts below).
F_SOCK_LISTEN = const(0x60)
F_SOCK_CONNECT = const(0x61)
F_SOCK_SEND = const(0x62)
F_SOCK_CLOSE = const(0x63)       # graceful (FIN after queued data); the handle dies
F_SOCK_SHUTDOWN = const(0x64)
F_SOCK_ABORT = const(0x65)       # RST; the handle dies
F_SOCK_CONSUMED = const(0x66)    # no reply: the host read n bytes; n more may come
F_UDP_BIND = const(0x68)
F_UDP_SENDTO = const(0x69)       # no reply unless refused
F_UDP_CLOSE = const(0x6A)
# Unsolicited messages from a socket ISM (w3 = 0, w2 = the OSM handle they concern).
F_EV_ACCEPTED = const(0x70)
F_EV_DATA = const(0x71)
F_EV_CLOSED = const(0x72)        # the connection is gone: errno 0 = closed after FIN both
                                 # ways, else ECONNRESET / ETIMEDOUT / ...; the handle dies
F_EV_DATAGRAM = const(0x74)

# ReqStatus (bits 24-31 of the status word)
RS_SUCCESS = const(0x00)
RS_ERROR_NO_DATA = const(0x05)   # error, no data transfer
RS_PROCESS_ABORT = const(0x09)   # process abort, no data transfer
RS_TRANSACTION_ERROR = const(0x0B)
# DetailedStatus (bits 0-15): I2O's own codes where one fits, errno values for socket errors
# (OSM raises OSError(errno)), FAIL reasons for refused frames.
DS_SUCCESS = const(0x0000)
DS_BAD_KEY = const(0x0002)
DS_INSUFFICIENT_RESOURCES = const(0x0009)
DS_UNKNOWN_FUNCTION = const(0x0019)
DS_UNKNOWN_TARGET = const(0x001A)   # (TwinStack) no such TID on this IOP
DS_BAD_HANDLE = const(0x001B)       # (TwinStack) unknown or stale ISM handle
DS_BAD_LENGTH = const(0x001C)       # (TwinStack) payload shorter than the function needs
DS_ERRNO = const(0x1000)            # socket errors: DS_ERRNO + errno (ECONNREFUSED, ...)
FAIL_BAD_MFA = const(0x81)          # out of range
FAIL_MFA_IN_USE = const(0x82)       # duplicate: that slot holds a message not yet processed
FAIL_BAD_IOP = const(0x83)
FAIL_FRAME_TOO_LARGE = const(0x8C)
FAIL_BAD_HEADER = const(0x8D)       # version, size or short frame
FAIL_NOT_READY = const(0x8E)        # no bring-up yet (no INIT)

# Bring-up (link level, before any MFA exists).
INIT_FMT = "<HHHH"       # protocol version, outbound frames granted, outbound frame bytes,
                          # host rx credit hint (bytes per connection, 0 = board default)
INIT_REPLY_FMT = "<BBHBBHHHI"   # status, protocol version, i2o VERSION, IOPs, handle bits,
                          # inbound depth per IOP, frame bytes (both directions; <= granted),
                          # outbound frames used (<= granted), epoch (boot count / random)
INIT_OK = const(0)
INIT_BAD_VERSION = const(1)
INIT_BAD_GRANT = const(2)      # no frames, or frames too small for a message
STATUS_FMT = "<HBBHH"    # iop, state (2 = operational), sockets open, max sockets, free MFAs

# Payloads (after the 16-byte header; offsets are from the start of the message).
LISTEN_FMT = "<HHI"      # port, backlog, rx credit (bytes the host will buffer per connection)
LISTEN_REPLY_FMT = "<H"  # (after the status word) the ISM handle of the listener
CONNECT_FMT = "<4sHHI"   # ip, port, local port (0: the ISM picks one hashing to its core), credit
CONNECT_REPLY_FMT = "<HH"  # ISM handle, local port   (sent once established or failed)
SEND_FMT = "<HH"         # handle, byte count; the data follows
SEND_REPLY_FMT = "<HH"   # handle, bytes accepted  (the send completion)
HANDLE_FMT = "<HH"       # handle, argument (SHUTDOWN: how 0 RD / 1 WR / 2 RDWR; else 0)
CONSUMED_FMT = "<HHI"    # handle, 0, bytes the host application has read
UDP_BIND_FMT = "<HHI"    # port, 0, rx credit in datagram bytes
SENDTO_FMT = "<HH4sHH"   # handle, 0, destination ip, destination port, byte count; data follows
EV_ACCEPTED_FMT = "<HBB4sHH"  # new ISM handle, iop, 0, peer ip, peer port, local port
                              # (w2 = the OSM handle of the listener)
EV_DATA_FMT = "<HBBH"    # handle, iop, flags (EV_FIN: the peer sent FIN after this data),
                          # byte count; the data follows (several segments, batched)
EV_CLOSED_FMT = "<HBBH"  # handle, iop, 0, errno
EV_DATAGRAM_FMT = "<HBB4sHH"  # handle, iop, 0, source ip, source port, byte count; data follows
EV_FIN = const(0x01)

SHUT_RD = const(0)
SHUT_WR = const(1)
SHUT_RDWR = const(2)

PAYLOAD = const(16)      # where a request's payload starts
REPLY_PAYLOAD = const(20)  # where a reply's payload starts (after the status word)


def words(nbytes):
    """MessageSize in words for a message of nbytes (rounded up)."""
    return (nbytes + 3) >> 2


def put_header(buf, off, flags, size_words, target, initiator, function):
    """w0 and w1 of a message at buf[off:]; contexts (w2, w3) are written by the caller
    (put_contexts / copy_contexts) so the board never turns them into ints."""
    buf[off] = VERSION
    buf[off + 1] = flags
    buf[off + 2] = size_words & 0xFF
    buf[off + 3] = size_words >> 8
    buf[off + 4] = target & 0xFF
    buf[off + 5] = ((target >> 8) & 0x0F) | ((initiator & 0x0F) << 4)
    buf[off + 6] = (initiator >> 4) & 0xFF
    buf[off + 7] = function


def put_contexts(buf, off, ictx, tctx):
    struct.pack_into("<II", buf, off + 8, ictx, tctx)


def copy_contexts(dst, doff, src, soff):
    """Echo a request's initiator and transaction contexts (8 bytes) into a reply."""
    for i in range(8):
        dst[doff + 8 + i] = src[soff + 8 + i]


def put_status(buf, off, req_status, detail):
    """The reply status word (w4)."""
    buf[off + 16] = detail & 0xFF
    buf[off + 17] = (detail >> 8) & 0xFF
    buf[off + 18] = 0
    buf[off + 19] = req_status


def version(buf, off):
    return buf[off] & 0x0F


def flags(buf, off):
    return buf[off + 1]


def size_words(buf, off):
    return buf[off + 2] | (buf[off + 3] << 8)


def target(buf, off):
    return buf[off + 4] | ((buf[off + 5] & 0x0F) << 8)


def initiator(buf, off):
    return (buf[off + 5] >> 4) | (buf[off + 6] << 4)


def function(buf, off):
    return buf[off + 7]


def req_status(buf, off):
    return buf[off + 19]


def detail(buf, off):
    return buf[off + 16] | (buf[off + 17] << 8)


def get16(buf, off):
    return buf[off] | (buf[off + 1] << 8)


def put16(buf, off, v):
    buf[off] = v & 0xFF
    buf[off + 1] = (v >> 8) & 0xFF


def errno_status(err):
    """The DetailedStatus of a socket error."""
    return DS_ERRNO + err


def status_errno(detail_status):
    """The errno in a DetailedStatus, or 0 if it is not a socket error."""
    return detail_status - DS_ERRNO if detail_status >= DS_ERRNO else 0


MAX_FRAME_BYTES = const(2040)    # a message plus the KIND_I2O_REPLY envelope fits one link frame
EV_PAYLOAD = const(20)           # unsolicited events (EV_*) are replies too: FLAG_REPLY, w3 = 0,
                                 # status word (success) at w4, their payload from w5

# Added by the host side (OSM): UDP_BIND had no reply layout. After the status word: the
# ISM handle and the bound port (the port the ISM picked when the request asked for 0; the
# OSM then binds the same port on the other IOPs). The OSM also accepts the handle alone.
UDP_BIND_REPLY_FMT = "<HH"
