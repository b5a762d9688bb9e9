"""Decoding and normalising single images: file -> Pillow image -> (C, H, W) uint8.

Every source ends here, so files, arrays and tables get identical treatment: first the pixel data
is brought to 8 bits per channel (16/32-bit and float modes are *scaled*, not clipped), then alpha
is composited onto ``data.alpha_background``, then the channel count is matched (ITU-R 601-2 luma
for RGB -> gray, replication for gray -> RGB), then the image is made square (centre crop, pad or
stretch) and resized with BOX (area averaging, antialiased) along an axis that shrinks and BICUBIC
along one that grows. Failures are `DataError`s whose message says what was wrong.
"""

from __future__ import annotations

import io
import os
import re
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from genpar_models.data import png
from genpar_models.errors import DataError

# Never hand out a partially decoded image: a truncated file must fail in decode_image. This is
# Pillow's default; it is set here explicitly because it is a process-wide switch.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_BACKGROUND = {"black": 0, "white": 255}
_ALPHA_MODES = {"LA": "L", "RGBA": "RGB"}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_READ_WHOLE = 32 * 2**20  # files up to this size are read at once (a larger one streams)
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def decode_image(path: str | os.PathLike[str], *, max_pixels: int) -> Image.Image:
    """Open and fully decode one image file (first frame; EXIF orientation applied).

    The size is checked from the header, before any pixel is decoded, so a decompression bomb
    costs almost nothing to refuse.

    Raises:
        DataError: message starting with the path: unreadable or empty file, not an image
            Pillow can read, too many pixels, or truncated/corrupt image data.
    """
    path = os.fspath(path)
    try:
        fp = open(path, "rb")  # noqa: SIM115 - the with below closes it
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from e
    with fp:
        size = os.fstat(fp.fileno()).st_size
        if size == 0:
            raise DataError(f"{path}: empty file (0 bytes), not an image")
        source: BinaryIO = fp
        if size <= _READ_WHOLE:  # one read syscall instead of Pillow's several small ones
            try:
                source = io.BytesIO(fp.read())
            except OSError as e:
                raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from e
        img = _open_header(source, path, max_pixels)
        width, height = img.size
        if width * height > max_pixels:
            raise DataError(
                f"{path}: image is {width}x{height} = {width * height:,} pixels, "
                f"above data.max_image_pixels={max_pixels:,}"
            )
        if not _may_carry_orientation(img):
            plain = png.decode_plain(source, img)  # libspng where it equals Pillow, else None
            if plain is not None:
                return plain
        try:
            img.load()  # the whole decode happens here: truncated data fails now, not later
            if _may_carry_orientation(img):
                ImageOps.exif_transpose(img, in_place=True)
        except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, ...
            raise DataError(f"{path}: truncated or corrupt image data ({e})") from e
    return img


def _may_carry_orientation(img: Image.Image) -> bool:
    """Whether Pillow's getexif() could find an orientation: it reads only info["exif"], a PNG
    "Raw profile type exif" text, XMP in info, or a TIFF's own tags (Pillow 13, Image.getexif).
    An image without any of them displays as stored, and exif_transpose would only build an
    empty Exif to learn that: 18.6 of 244 us per 64x64 PNG in decode_image (benchmarks/README.md).
    tests/unit/test_sources.py compares both paths on every format that can carry one."""
    tiff = isinstance(img, TiffImagePlugin.TiffImageFile)  # its tags hold the orientation
    return tiff or any(k in img.info for k in _ORIENTATION_SOURCES)


def _open_header(fp: BinaryIO, path: str, max_pixels: int) -> Image.Image:
    """Image.open reads only the header; map its failures to DataErrors naming the file."""
    try:
        return Image.open(fp)
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not an image Pillow can read") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {_bomb_message(str(e), max_pixels)}") from e
    except Exception as e:  # any plugin error while parsing the header: add the path
        raise DataError(f"{path}: truncated or corrupt image header ({e})") from e


def _bomb_message(pillow_message: str, max_pixels: int) -> str:
    """Pillow refused the image in Image.open already (over 2x Image.MAX_IMAGE_PIXELS)."""
    found = _BOMB_PIXELS.search(pillow_message)
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image has {size}, above data.max_image_pixels={max_pixels:,} "
        f"(refused by Pillow's decompression-bomb check: {pillow_message})"
    )


def to_array(
    img: Image.Image, *, channels: int, size: int, resize: str, alpha_background: str
) -> np.ndarray:
    """Normalise a Pillow image of any mode to a (channels, size, size) uint8 array.

    Raises:
        DataError: the mode cannot be converted, or float/int data holds NaN or infinities.
    """
    background = _BACKGROUND[alpha_background]
    img = _to_8bit(img)
    if img.mode in _ALPHA_MODES:
        img = _composite(img, background)
    if channels == 1 and img.mode != "L":
        img = img.convert("L")  # ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")  # gray -> RGB replicates the channel
    img = _make_square(img, size=size, resize=resize, background=background)
    arr = np.asarray(img, dtype=np.uint8)
    # (H, W) -> (1, H, W); (H, W, 3) -> (3, H, W)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> one of L, LA, RGB, RGBA with 8 bits per channel."""
    mode = img.mode
    if mode in ("L", "RGB"):
        # A tRNS chunk (one transparent colour) becomes a real alpha channel: LA or RGBA.
        return img.convert(mode + "A") if "transparency" in img.info else img
    if mode in ("LA", "RGBA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if alpha else "RGB")
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return img.convert(mode.upper())
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_numeric(np.asarray(img), mode))
    try:
        return img.convert("RGB")  # CMYK, YCbCr, RGBX, HSV, LAB, ...
    except ValueError as e:
        raise DataError(f"image mode {mode!r} cannot be converted to RGB ({e})") from e


def _scale_numeric(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer and float pixels -> uint8, scaled by the nominal range (never clipped
    the way Pillow's convert('L') does).

    I;16*: [0, 65535]. I (int32): [0, 65535] when every value fits (how 16-bit data usually
    arrives in this mode), else [0, 2**31 - 1] with negatives set to 0. F: [0, 1] when the
    maximum is <= 1, else [0, 255]; values outside are clipped.
    """
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"image mode {mode!r} holds NaN or infinite values")
    if mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif mode.startswith("I;16") or (values.min(initial=0) >= 0 and values.max(initial=0) < 2**16):
        top = 65535.0
    else:
        top = 2.0**31 - 1
    scaled = np.clip(values, 0.0, top) * 255.0 / top
    return np.rint(scaled).astype(np.uint8)  # round half to even


def _composite(img: Image.Image, background: int) -> Image.Image:
    """Blend LA/RGBA onto a flat background, exactly in integers (rounded half up)."""
    arr = np.asarray(img).astype(np.uint32)
    colour, alpha = arr[..., :-1], arr[..., -1:]
    blended = (colour * alpha + background * (255 - alpha) + 127) // 255
    out = blended.astype(np.uint8)
    return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)


def _make_square(img: Image.Image, *, size: int, resize: str, background: int) -> Image.Image:
    width, height = img.size
    if resize == "center_crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif resize == "pad" and width != height:
        side = max(width, height)
        fill = background if img.mode == "L" else (background,) * 3
        canvas = Image.new(img.mode, (side, side), fill)
        canvas.paste(img, ((side - width) // 2, (side - height) // 2))
        img = canvas
    elif resize not in ("center_crop", "pad", "stretch"):
        raise ValueError(f"resize must be center_crop, pad or stretch, got {resize!r}")
    return _resize(img, size)


def _resize(img: Image.Image, size: int) -> Image.Image:
    """BOX along an axis that shrinks, BICUBIC along one that grows (one pass each if mixed)."""
    width, height = img.size
    filter_w = Image.Resampling.BOX if size < width else Image.Resampling.BICUBIC
    filter_h = Image.Resampling.BOX if size < height else Image.Resampling.BICUBIC
    if (width, height) == (size, size):
        return img
    if width == size or height == size or filter_w == filter_h:
        # One call: Pillow skips the pass of an axis whose size does not change.
        return img.resize((size, size), filter_h if width == size else filter_w)
    return img.resize((size, height), filter_w).resize((size, size), filter_h)


def array_to_uint8(sample: np.ndarray, *, pixel_max: float, sample_id: str) -> np.ndarray:
    """Validate one sample of array/table data and scale [0, pixel_max] to uint8.

    Scaling is ``rint(value * 255 / pixel_max)`` (NumPy's round half to even); integer data with
    pixel_max=255 is passed through unchanged.

    Raises:
        DataError: naming sample_id, the first bad value, its index and the expected range.
    """
    values = np.asarray(sample)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{sample_id}: dtype {values.dtype} is not numeric; expected numbers")
    expected = f"expected finite values in [0, {pixel_max:g}] (data.pixel_max)"
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise DataError(f"{sample_id}: value {values[where]} at index {where}; {expected}")
    outside = (values < 0) | (values > pixel_max)
    if outside.any():
        where = tuple(int(i) for i in np.argwhere(outside)[0])
        raise DataError(f"{sample_id}: value {values[where]} at index {where}; {expected}")
    return _scale(values, pixel_max)


def _scale(values: np.ndarray, pixel_max: float) -> np.ndarray:
    if values.dtype.kind in "iu" and pixel_max == 255:
        return values.astype(np.uint8)
    return np.rint(values.astype(np.float64) * 255.0 / pixel_max).astype(np.uint8)


def arrays_to_uint8(
    batch: np.ndarray, *, pixel_max: float, ids: list[str]
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """`array_to_uint8` over a batch (first axis = sample), vectorised.

    Returns:
        (uint8 data of the good samples, boolean mask of good samples, [(id, reason)] of bad).
    """
    values = np.asarray(batch)
    axes = tuple(range(1, values.ndim))
    ok = ((values >= 0) & (values <= pixel_max)).all(axis=axes)  # False for NaN too
    if values.dtype.kind == "f":
        ok &= np.isfinite(values).all(axis=axes)
    bad: list[tuple[str, str]] = []
    for row in np.flatnonzero(~ok):
        try:
            array_to_uint8(values[row], pixel_max=pixel_max, sample_id=ids[row])
        except DataError as e:
            bad.append((ids[row], str(e)))
    return _scale(values[ok], pixel_max), ok, bad


def normalise_array(
    sample_hwc_uint8: np.ndarray, *, channels: int, size: int, resize: str, alpha_background: str
) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 with C in 1/3/4 -> (channels, size, size) uint8, via `to_array`
    so arrays get exactly the resizing that image files get."""
    arr = np.ascontiguousarray(sample_hwc_uint8, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)  # (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return to_array(
        img, channels=channels, size=size, resize=resize, alpha_background=alpha_background
    )


def normalise_arrays(
    batch_nhwc_uint8: np.ndarray, *, channels: int, size: int, resize: str, alpha_background: str
) -> np.ndarray:
    """`normalise_array` over a batch -> (N, channels, size, size) uint8. Samples that already
    have the target shape skip Pillow (the result is identical)."""
    batch = np.asarray(batch_nhwc_uint8, dtype=np.uint8)
    if batch.ndim == 3:
        batch = batch[..., None]  # (N, H, W) -> (N, H, W, 1)
    if batch.shape[1:] == (size, size, channels):
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    out = np.empty((len(batch), channels, size, size), dtype=np.uint8)
    for i, sample in enumerate(batch):
        out[i] = normalise_array(
            sample, channels=channels, size=size, resize=resize, alpha_background=alpha_background
        )
    return out
