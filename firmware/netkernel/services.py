# Built-in services: TCP and UDP echo (port 7), TCP discard (port 9), and a TCP test client.
#
# They exercise the stack without the host: the tests and benchmarks talk to them from the
# peer namespace. Echo reads only as much as it can send back, so a client that stops
# reading closes the board's window instead of filling its memory.
import time

from micropython import const

_ECHO_PORT = const(7)
_DISCARD_PORT = const(9)
_KIND_ECHO = const(0)
_KIND_DISCARD = const(1)
_DISCARD_ALL = const(0x7FFF)   # more than any receive ring holds
_CHUNK = const(1460)
_PATTERN_MOD = const(251)        # test data byte i is i % 251 (a prime: catches shifted data)
_TEST_TIMEOUT_MS = const(120000)
_TEST_MAX_BYTES = const(0x20000000)   # keeps pattern offsets small ints on the RP2040
_EINVAL = const(22)
_RESERVED_PORTS = const(1024)   # never echo to these: two echo services would ping-pong


class Services:
    def __init__(self, stack):
        self._stack = stack
        self._conns = []      # [socket, kind] pairs
        self._buf = bytearray(_CHUNK)
        self.tests = []       # running TcpTestClient objects
        self.echo_bytes = 0
        self.discard_bytes = 0
        self.udp_echoes = 0
        self.open()

    def open(self):
        """Serve: the listeners and the UDP port, all or none (a half-open service would
        keep its ports bound to an object nobody polls: connections accepted, never served,
        the ports taken)."""
        stack = self._stack
        handler = self._udp_echo
        self._echo = stack.tcp.listen(_ECHO_PORT)
        try:
            self._discard = stack.tcp.listen(_DISCARD_PORT)
            try:
                stack.udp.bind(_ECHO_PORT, handler)
            except BaseException:
                self._discard.close()
                raise
        except BaseException:
            self._echo.close()
            raise

    def close(self):
        """Stop serving: the listeners and the UDP port closed, connections reset."""
        self._echo.close()
        self._discard.close()
        self._stack.udp.unbind(_ECHO_PORT)
        for sock, _ in self._conns:
            sock.abort()
            sock.release()
        self._conns.clear()       # kept, as the whole object is (open() serves again)

    def _udp_echo(self, buf, off, n, src, src_off, src_port, dst_port, now):
        if src_port < _RESERVED_PORTS:
            return
        if self._stack.udp.sendto(buf, off, n, src, src_off, src_port, dst_port, now):
            self.udp_echoes += 1

    def poll(self, now):
        if self._echo.queue:
            self._accept(self._echo, _KIND_ECHO)
        if self._discard.queue:
            self._accept(self._discard, _KIND_DISCARD)
        conns = self._conns
        i = 0
        while i < len(conns):
            entry = conns[i]
            if self._serve(entry[0], entry[1]):
                i += 1
            else:
                conns.pop(i)
                entry[0].release()
        i = 0
        while i < len(self.tests):
            test = self.tests[i]
            if test.poll(now):
                i += 1
            else:
                self.tests.pop(i)
                test.report()     # after removal: a failing report cannot repeat forever

    def _accept(self, listener, kind):
        while True:
            sock = listener.accept()
            if sock is None:
                return
            try:
                self._conns.append([sock, kind])
            except MemoryError:
                sock.abort()      # never leave an accepted connection nobody serves
                sock.release()

    def _serve(self, sock, kind):
        """Move data for one connection; False once it is finished with."""
        if sock.error:
            return False
        if kind == _KIND_ECHO:
            room = sock.send_space()
            while room > 0:
                n = sock.recv_into(self._buf, 0, room if room < _CHUNK else _CHUNK)
                if n == 0:
                    break
                sock.send(self._buf, 0, n)
                self.echo_bytes += n
                room = sock.send_space()
        else:
            n = sock.recv_into(None, 0, _DISCARD_ALL)
            self.discard_bytes += n
        if sock.at_eof():
            sock.close()
            return False
        return True

    def start_test(self, dst, port, nbytes, now, on_done):
        """Open a connection to dst:port, send nbytes of test pattern, check what comes back
        (the peer is an echo server), close. ``on_done(status, sent, verified, ms)``."""
        if nbytes < 1 or nbytes > _TEST_MAX_BYTES:
            raise OSError(_EINVAL)
        self.tests.append(TcpTestClient(self._stack, dst, port, nbytes, now, on_done,
                                        self._buf))


class TcpTestClient:
    def __init__(self, stack, dst, port, nbytes, now, on_done, buf):
        """``buf``: a scratch buffer of _CHUNK bytes that is free while poll() runs (the
        services' own: a test started on a busy board found no 1,460 bytes in one piece)."""
        self._sock = stack.tcp.connect(dst, 0, port, now)
        self._total = nbytes
        self._sent = 0
        self._verified = 0
        self._started = now
        self._on_done = on_done
        self._buf = buf
        self._bad = False

    def poll(self, now):
        """Advance; False once finished (on_done has been called)."""
        if self._sock.error:
            return self._finish(self._sock.error, now)
        if time.ticks_diff(now, self._started) > _TEST_TIMEOUT_MS:
            self._sock.abort()
            return self._finish(110, now)   # ETIMEDOUT
        buf = self._buf
        while self._sent < self._total:
            n = self._total - self._sent
            if n > _CHUNK:
                n = _CHUNK
            base = self._sent
            for i in range(n):
                buf[i] = (base + i) % _PATTERN_MOD
            n = self._sock.send(buf, 0, n)
            if n == 0:
                break
            self._sent += n
        while True:
            n = self._sock.recv_into(buf, 0, _CHUNK)
            if n == 0:
                break
            base = self._verified
            for i in range(n):
                if buf[i] != (base + i) % _PATTERN_MOD:
                    self._bad = True
            self._verified += n
        if self._bad:
            self._sock.abort()
            return self._finish(5, now)     # EIO: data came back wrong
        if self._verified >= self._total:
            self._sock.close()
            return self._finish(0, now)
        return True

    def _finish(self, status, now):
        self._result = (status, self._sent, self._verified, time.ticks_diff(now, self._started))
        self._sock.release()
        return False

    def report(self):
        self._on_done(*self._result)
