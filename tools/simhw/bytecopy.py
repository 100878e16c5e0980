"""copy_bytes(): one buffer's bytes into another without allocating (the emulated chip's
SPI and receive paths)."""

try:
    import micropython

    @micropython.viper
    def copy_bytes(dst, dst_off: int, src, src_off: int, n: int):
        """dst[dst_off:dst_off+n] = src[src_off:src_off+n], without allocating.

        Slice assignment would create a temporary view per call; this keeps the SPI and
        receive paths allocation-free (tests run them with the heap locked). Four bytes
        at a time: the emulator runs on the host, whose CPU reads unaligned words.
        """
        d = ptr8(dst)  # noqa: F821 (viper built-ins)
        s = ptr8(src)  # noqa: F821
        words = n >> 2
        dw = ptr32(int(d) + dst_off)  # noqa: F821
        sw = ptr32(int(s) + src_off)  # noqa: F821
        i = 0
        while i < words:
            dw[i] = sw[i]
            i += 1
        i = words << 2
        while i < n:
            d[dst_off + i] = s[src_off + i]
            i += 1

except ImportError:  # CPython

    def copy_bytes(dst, dst_off, src, src_off, n):
        dst[dst_off : dst_off + n] = memoryview(src)[src_off : src_off + n]
