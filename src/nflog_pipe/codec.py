"""Payload codecs of compressed frames, and decompression bounded by the
announced size.

A frame header carries the codec number (``docs/frame-format.md``):

=====  ======  =====================================================
  0    none    the payload is the record area itself
  1    zlib    zlib stream (RFC 1950, with its Adler-32 check); the default
  2    zstd    one Zstandard frame with its content size and checksum
=====  ======  =====================================================

zlib is in the standard library and always available; zstd needs the
``zstandard`` package (a dependency of this project, ``python3-zstandard`` in
Debian).  Payloads come from the network, so :func:`decompress` never
produces more than the ``raw_len`` the frame announced, and accepts a
payload only when it expands to exactly that many bytes with nothing left
over.
"""

from __future__ import annotations

import zlib

from .errors import PipeError

try:
    import zstandard
except ImportError:  # the codec is then refused with a clear message
    zstandard = None

NONE = 0
ZLIB = 1
ZSTD = 2

NAMES = {NONE: "none", ZLIB: "zlib", ZSTD: "zstd"}
BY_NAME = {v: k for k, v in NAMES.items()}
#: levels accepted per codec, and the level used when none is given
LEVELS = {ZLIB: (1, 9), ZSTD: (1, 19)}
DEFAULT_LEVEL = {ZLIB: 6, ZSTD: 3}


class CodecError(PipeError, ValueError):
    """A payload that must be rejected.  ``kind``: ``codec`` (unknown or not
    available here) or ``decompress`` (does not expand to the announced size)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message, kind)


def available(codec: int) -> bool:
    return codec == ZLIB or codec == ZSTD and zstandard is not None


def parse_name(text: str) -> int:
    """A codec name from an option value (``zlib``, ``zstd``)."""
    codec = BY_NAME.get(text)
    if codec in (None, NONE):
        raise ValueError(f"unknown codec {text!r} (zlib or zstd)")
    return codec


def check(codec: int, level: int | None) -> int:
    """The level to use with ``codec`` (its default when ``level`` is None);
    ValueError when the codec is unknown, unavailable or the level out of range."""
    if codec not in LEVELS:
        raise ValueError(f"unknown codec {codec}")
    if not available(codec):
        raise ValueError(f"codec {NAMES[codec]} needs the zstandard package "
                         "(pip install zstandard, or Debian's python3-zstandard)")
    if level is None:
        return DEFAULT_LEVEL[codec]
    lo, hi = LEVELS[codec]
    if not lo <= level <= hi:
        raise ValueError(f"{NAMES[codec]} level {level} is out of range ({lo} to {hi})")
    return level


class Compressor:
    """Compresses whole record areas with one codec and level (reusing its
    context between calls)."""

    def __init__(self, codec: int = ZLIB, level: int | None = None):
        self.level = check(codec, level)
        self.codec = codec
        if codec == ZSTD:
            self._z = zstandard.ZstdCompressor(level=self.level, write_checksum=True,
                                               write_content_size=True)

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if self.codec == ZLIB:
            return zlib.compress(data, self.level)
        return self._z.compress(data)

    @property
    def name(self) -> str:
        return NAMES[self.codec]


def compress(codec: int, data: bytes | bytearray | memoryview, level: int | None = None) -> bytes:
    """One-off compression (tests, ``frame.encode``)."""
    return Compressor(codec, level).compress(data)


_zstd_d = None


def _zstd_decompressor():
    global _zstd_d
    if _zstd_d is None:
        _zstd_d = zstandard.ZstdDecompressor()
    return _zstd_d


def decompress(codec: int, payload: bytes | memoryview, raw_len: int) -> bytes:
    """Expand ``payload`` to exactly ``raw_len`` bytes or raise CodecError.

    Never allocates or produces more than ``raw_len`` bytes of output,
    whatever the payload claims: zlib output is capped at ``raw_len``; a zstd
    frame must announce exactly ``raw_len`` as its content size and is then
    decoded in one shot into a buffer of that size (no separate window,
    whatever window size its header asks for)."""
    if codec == ZLIB:
        d = zlib.decompressobj()
        try:
            # max_length 0 would mean "no limit" (found by tests/fuzz)
            out = d.decompress(payload, max(raw_len, 1))
        except zlib.error as e:
            raise CodecError("decompress", f"zlib payload does not decompress: {e}") from None
        if len(out) != raw_len or d.unconsumed_tail or not d.eof or d.unused_data:
            raise CodecError("decompress",
                             "zlib payload does not expand to exactly the announced size")
        return out
    if codec == ZSTD:
        if zstandard is None:
            raise CodecError("codec", "zstd frame, but the zstandard package is not installed")
        try:
            size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as e:
            raise CodecError("decompress", f"zstd payload has no valid frame header: {e}") from None
        if size != raw_len:
            # also -1: a frame without its content size is not one we write
            raise CodecError("decompress", f"zstd frame announces {size} bytes, the frame "
                             f"header {raw_len}")
        if raw_len > 32768 * len(payload):
            # no zstd frame expands more (an RLE block: 4 bytes -> 128 KiB): a
            # lying content size must not make us allocate it (found by tests/fuzz)
            raise CodecError("decompress", f"a {len(payload)}-byte zstd payload cannot "
                             f"expand to {raw_len} bytes")
        try:
            if raw_len:
                out = _zstd_decompressor().decompress(payload, max_output_size=raw_len,
                                                      allow_extra_data=False)
            else:
                # the one-shot call returns b"" for a zero content size without
                # decoding or checking anything (found by tests/fuzz)
                d = _zstd_decompressor().decompressobj()
                out = d.decompress(payload)  # the decoder holds it to the content size
                if not d.eof or d.unused_data:
                    raise CodecError("decompress", "zstd payload is not one complete frame")
        except zstandard.ZstdError as e:
            raise CodecError("decompress", f"zstd payload does not decompress: {e}") from None
        if len(out) != raw_len:
            raise CodecError("decompress",
                             "zstd payload does not expand to exactly the announced size")
        return out
    raise CodecError("codec", f"unknown codec {codec}")
