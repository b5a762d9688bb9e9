"""Fast decoding of plain 8-bit PNGs with libspng (pyspng), pixel-identical to Pillow.

Pillow's PNG decoder spends about 125 us of a 64x64 RGB PNG's 190 us in genpar's preprocessing;
libspng decodes the same file in about 72 us (benchmarks/README.md, "Where a preprocessed image's
time goes"). It is used only where its output is known to equal Pillow's byte for byte
(tests/unit/test_sources.py compares them): an 8-bit, non-interlaced, single-frame L, RGB or RGBA
PNG without a tRNS chunk or an orientation tag, whose chunk CRCs are all intact, with nothing
but image data between its first IDAT and IEND. libspng is run with CRC errors ignored (pyspng's
setting), so the CRCs are checked here first (about 3 us): a damaged file takes Pillow's path and
fails, or decodes, exactly as it did before. A chunk after the image data (real files carry an
eXIf or an XMP iTXt there) reaches Pillow's info only when it loads the pixels, after genpar's
orientation check on the header, so such a file takes Pillow's path too, which rotates it.
Everything else (palette, 1/2/4/16-bit, LA, APNG, tRNS, EXIF, any libspng error) returns None for
Pillow to decode.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import pyspng
from PIL import Image, PngImagePlugin

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD = struct.Struct(">I4s")
_MODES = ("L", "RGB", "RGBA")  # Pillow modes whose 8-bit rawmode libspng decodes to the same bytes


def decode_plain(fp: BinaryIO, header: Image.Image) -> Image.Image | None:
    """Decode the PNG in `fp` (whose header Pillow parsed into `header`) with libspng, or return
    None where only Pillow's result is the reference. Reads the whole file from its start. The
    caller has ruled out an orientation tag (images._may_carry_orientation)."""
    if not _is_plain(header):
        return None
    fp.seek(0)
    data = fp.read()
    if not _plain_chunks(data):
        return None
    try:
        pixels = pyspng.load(data, header.mode)
    except RuntimeError:  # truncated or corrupt: Pillow's load reports it in its own words
        return None
    if pixels.shape[:2] != (header.height, header.width):
        return None
    img = Image.frombytes(header.mode, header.size, pixels)  # a copy; 2 us under fromarray
    img.info.update(header.info)
    return img


def _is_plain(img: Image.Image) -> bool:
    if not isinstance(img, PngImagePlugin.PngImageFile) or img.mode not in _MODES:
        return False
    if len(img.tile) != 1 or getattr(img, "n_frames", 1) != 1:
        return False
    args = img.tile[0][3]  # (codec, extents, offset, args); args is the rawmode for PNG
    rawmode = args[0] if isinstance(args, tuple) else args
    info = img.info
    return (
        rawmode == img.mode  # "RGB;16B", "L;4", ... are other bit depths
        and not info.get("interlace")
        and "transparency" not in info
    )


def _plain_chunks(data: bytes) -> bool:
    """Every chunk up to IEND is complete and matches its CRC-32 (what Pillow would check), and
    none but IDAT follows the first IDAT (Pillow reads those into info at load: module doc)."""
    if not data.startswith(_SIGNATURE):
        return False
    view, end, i = memoryview(data), len(data), len(_SIGNATURE)
    in_data = False
    while i + 12 <= end:
        length, kind = _CHUNK_HEAD.unpack_from(data, i)
        crc_at = i + 8 + length
        if crc_at + 4 > end:
            return False
        if zlib.crc32(view[i + 4 : crc_at]) != int.from_bytes(view[crc_at : crc_at + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        if kind == b"IDAT":
            in_data = True
        elif in_data or kind == b"eXIf":  # after the pixels, or an orientation Pillow may read
            return False
        i = crc_at + 4
    return False
