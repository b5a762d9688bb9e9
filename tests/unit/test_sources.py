"""Unit tests of image decoding/normalisation and of listing and loading every kind of source.

Real files in tmp_path, written with Pillow, NumPy, pandas and pyarrow; no mocks.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from genpar_models.config import DataConfig
from genpar_models.data.images import array_to_uint8, decode_image, normalise_array, to_array
from genpar_models.data.sources import Partition, describe_source, load_partition, plan_partitions
from genpar_models.data.sources.builtin import mnist5k_path
from genpar_models.errors import DataError
from tests.helpers import python_c

NORM = {"resize": "center_crop", "alpha_background": "black"}


def convert(img: Image.Image, channels: int = 1, size: int = 4, **kw: str) -> np.ndarray:
    return to_array(img, channels=channels, size=size, **{**NORM, **kw})


def reopen(img: Image.Image, path: Path, **save: object) -> Image.Image:
    img.save(path, **save)
    return decode_image(path, max_pixels=10_000)


def load_all(cfg: DataConfig) -> tuple[list[Partition], list[str]]:
    """Every partition of cfg, plus all ids in order."""
    _, specs = plan_partitions(cfg)
    parts = [load_partition(spec, cfg) for spec in specs]
    return parts, [i for p in parts for i in p.ids]


# ---------------------------------------------------------------- modes and values


def test_bilevel_gray_and_rgb_modes() -> None:
    assert (convert(Image.new("1", (4, 4), 1)) == 255).all()
    assert (convert(Image.new("L", (4, 4), 100)) == 100).all()
    rgb = convert(Image.new("RGB", (4, 4), (10, 20, 30)), channels=3)
    assert rgb.shape == (3, 4, 4) and rgb[:, 0, 0].tolist() == [10, 20, 30]
    # ITU-R 601-2 luma, as Pillow's "L": 255 * 299 / 1000 = 76.2 -> 76
    assert convert(Image.new("RGB", (4, 4), (255, 0, 0)))[0, 0, 0] == 76
    assert (convert(Image.new("L", (4, 4), 7), channels=3) == 7).all()  # replicated


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    assert convert(pal, channels=3)[:, 0, 0].tolist() == [255, 0, 0]
    clear = reopen(pal, tmp_path / "p.png", transparency=1)
    assert clear.mode == "P" and "transparency" in clear.info
    assert (convert(clear, channels=3) == 0).all()
    assert (convert(clear, channels=3, alpha_background="white") == 255).all()


def test_alpha_is_composited_onto_the_background(tmp_path: Path) -> None:
    clear_white = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert (convert(clear_white, channels=3) == 0).all()
    assert (convert(clear_white, channels=3, alpha_background="white") == 255).all()
    assert (convert(Image.new("RGBA", (4, 4), (255, 255, 255, 255))) == 255).all()
    assert (convert(Image.new("RGBA", (4, 4), (255, 255, 255, 128)), channels=3) == 128).all()
    assert (convert(Image.new("LA", (4, 4), (200, 0)), alpha_background="white") == 255).all()
    trns = reopen(Image.new("L", (4, 4), 200), tmp_path / "l.png", transparency=200)
    assert (convert(trns) == 0).all()


def test_cmyk_and_ycbcr_become_rgb() -> None:
    assert (convert(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), channels=3) == 255).all()
    gray = convert(Image.new("YCbCr", (4, 4), (128, 128, 128)), channels=3)
    assert np.abs(gray.astype(int) - 128).max() <= 1


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"])
def test_16_and_32_bit_images_are_scaled_not_clipped(dtype: str, tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32768, 65535]] * 4).astype(dtype)
    img = Image.fromarray(values)
    assert img.mode == {"<u2": "I;16", ">u2": "I;16B", "<i4": "I"}[dtype]
    out = convert(img)[0]
    assert out[0].tolist() == [0, 4, 128, 255]  # Pillow's own convert("L") gives 255 for 1000
    if dtype == "<u2":  # a real 16-bit PNG opens as I;16
        again = reopen(img, tmp_path / "deep.png")
        assert again.mode == "I;16" and convert(again)[0, 0].tolist() == [0, 4, 128, 255]


def test_float_images_assume_unit_or_byte_range() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, 1.0]] * 4, dtype=np.float32))
    assert unit.mode == "F" and convert(unit)[0, 0].tolist() == [0, 128, 255, 255]
    byte = Image.fromarray(np.array([[0.0, 100.0, 200.0, 255.0]] * 4, dtype=np.float32))
    assert convert(byte)[0, 0].tolist() == [0, 100, 200, 255]
    with pytest.raises(DataError, match="NaN"):
        convert(Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)))


# ---------------------------------------------------------------- geometry and resampling


def stripes() -> Image.Image:
    """12 wide, 4 high: columns 0-3 = 250, 4-7 = 100, 8-11 = 50."""
    return Image.fromarray(
        np.repeat(np.array([[250] * 4 + [100] * 4 + [50] * 4]), 4, axis=0).astype(np.uint8)
    )


def test_center_crop_keeps_the_middle_square() -> None:
    assert (convert(stripes(), size=8, resize="center_crop") == 100).all()


@pytest.mark.parametrize("background, fill", [("black", 0), ("white", 255)])
def test_pad_letterboxes_onto_the_background(background: str, fill: int) -> None:
    out = convert(stripes(), size=12, resize="pad", alpha_background=background)[0]
    assert (out[:4] == fill).all() and (out[8:] == fill).all()
    assert (out[4:8] == np.asarray(stripes())).all()  # 12x12: no resize after padding


def test_stretch_squeezes_the_whole_image() -> None:
    out = convert(stripes(), size=6, resize="stretch")[0]
    assert out.shape == (6, 6) and (out[:, 0] == 250).all() and (out[:, -1] == 50).all()
    assert to_array(
        Image.new("L", (4, 100)), channels=3, size=16, **{**NORM, "resize": "stretch"}
    ).shape == (3, 16, 16)


def test_box_when_shrinking_and_bicubic_when_enlarging() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8))
    box = np.asarray(img.resize((8, 8), Image.Resampling.BOX))
    cubic = np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC))
    assert (convert(img, size=8)[0] == box).all()
    assert (convert(img, size=32)[0] == cubic).all()
    checker = Image.fromarray((np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8))
    assert set(np.unique(convert(checker, size=8))) <= {127, 128}  # averaged, no aliasing


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels_in=st.sampled_from([1, 3, 4]),
    channels=st.sampled_from([1, 3]),
    resize=st.sampled_from(["center_crop", "pad", "stretch"]),
)
def test_normalise_array_shape_and_constant_images(
    height: int, width: int, channels_in: int, channels: int, resize: str
) -> None:
    sample = np.full((height, width, channels_in), 255, dtype=np.uint8)
    out = normalise_array(
        sample, channels=channels, size=8, resize=resize, alpha_background="white"
    )
    assert out.shape == (channels, 8, 8) and out.dtype == np.uint8
    assert (out == 255).all()  # white, opaque, on white: stays white whatever the geometry


def test_array_to_uint8_validates_and_scales() -> None:
    assert array_to_uint8(np.array([0.0, 0.5, 1.0]), pixel_max=1.0, sample_id="s").tolist() == [
        0,
        128,
        255,
    ]
    assert array_to_uint8(np.array([1]), pixel_max=2, sample_id="s").tolist() == [128]  # 127.5
    with pytest.raises(DataError, match=r"x\[3\].*nan.*\[0, 1\]"):
        array_to_uint8(np.array([0.1, np.nan]), pixel_max=1.0, sample_id="x[3]")
    with pytest.raises(DataError, match=r"x\[4\]: value 300 .*\[0, 255\]"):
        array_to_uint8(np.array([[1, 300]]), pixel_max=255, sample_id="x[4]")


# ---------------------------------------------------------------- broken files


def png_bytes(size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(
        buf, "PNG"
    )
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height: a decompression bomb's header."""
    data = bytearray(png_bytes((8, 8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BROKEN = {
    "half.png": (png_bytes()[:-300], "truncated or corrupt image data"),
    "half.jpg": (jpeg_bytes()[:400], "truncated or corrupt"),
    "empty.png": (b"", "empty file"),
    "notes.png": (b"this is text, not a picture\n", "not an image Pillow can read"),
    "bomb.png": (bomb_png(20_000, 20_000), "400,000,000 pixels, above data.max_image_pixels"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_data_error_naming_the_file(name: str, tmp_path: Path) -> None:
    content, reason = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        decode_image(path, max_pixels=25_000_000)
    assert str(err.value).startswith(str(path)) and reason in str(err.value)


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes((100, 50)))
    with pytest.raises(
        DataError,
        match=r"big.png: image is 100x50 = 5,000 pixels, above "
        r"data.max_image_pixels=4,999",
    ):
        decode_image(path, max_pixels=4_999)
    assert decode_image(path, max_pixels=5_000).size == (100, 50)


def test_broken_files_in_a_folder_become_bad_entries(tmp_path: Path) -> None:
    for name, (content, _) in BROKEN.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "good.png").write_bytes(png_bytes())
    cfg = DataConfig(source="folder", path=str(tmp_path), channels=3)
    (part,) = load_all(cfg)[0]
    assert part.ids == ["good.png"] and part.images.shape == (1, 3, 8, 8)
    assert sorted(i for i, _ in part.bad) == sorted(BROKEN)
    for sample, reason in part.bad:
        assert reason.startswith(str(tmp_path / sample)) and BROKEN[sample][1] in reason


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (8, 4)).save(tmp_path / "turned.jpg", exif=exif)
    assert decode_image(tmp_path / "turned.jpg", max_pixels=100).size == (4, 8)


ORIENTED = [  # (suffix, save keywords): every way Pillow reads an orientation from a file
    ("jpg", {"exif": "exif"}),
    ("png", {"exif": "exif"}),
    ("webp", {"exif": "exif", "lossless": True}),
    ("tiff", {"exif": "exif"}),
    ("jpg", {"xmp": "xmp"}),
    ("webp", {"xmp": "xmp", "lossless": True}),
    ("png", {"pnginfo": "raw"}),
    ("png", {}),
    ("jpg", {}),
    ("tiff", {}),
    ("gif", {}),
    ("bmp", {}),
]


@pytest.mark.parametrize(("suffix", "how"), ORIENTED, ids=lambda v: str(v))
def test_orientation_shortcut_matches_exif_transpose(
    tmp_path: Path, suffix: str, how: dict
) -> None:
    """decode_image skips exif_transpose when no orientation can be present; the result must
    be what Pillow's own exif_transpose gives, for every format and tag carrier."""
    from PIL import ImageOps, PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    raw = PngImagePlugin.PngInfo()
    data = exif.tobytes()
    raw.add_text("Raw profile type exif", f"\nexif\n{len(data):8}\n{data.hex()}\n")
    values = {"exif": exif, "xmp": xmp, "raw": raw}
    kwargs = {k: values.get(v, v) if isinstance(v, str) else v for k, v in how.items()}
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(np.arange(96, dtype=np.uint8).reshape(4, 8, 3)).save(path, **kwargs)
    with Image.open(path) as reference:
        reference.load()
        ImageOps.exif_transpose(reference, in_place=True)
        expected = np.asarray(reference.convert("RGB"))
    got = decode_image(path, max_pixels=1000)
    assert np.array_equal(np.asarray(got.convert("RGB")), expected)
    if how:  # every carrier above holds orientation 6: the image is turned
        assert got.size == (4, 8)


# ---------------------------------------------------------------- the libspng fast path


def _pixels(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    """Smooth gradient plus noise: compresses like a photo, exercises every PNG filter."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) * 3
    ramp = ramp.reshape(shape[:2] + (1,) * (len(shape) - 2))
    return ((ramp + rng.integers(0, 40, shape)) % 256).astype(np.uint8)


def _png_image(kind: str) -> Image.Image:
    """The image saved for one PNG flavour of test_png_fast_path_equals_pillow."""
    if kind in ("L", "RGB", "RGBA", "LA"):
        shape = {"L": (37, 53), "RGB": (37, 53, 3), "RGBA": (37, 53, 4), "LA": (37, 53, 2)}[kind]
        return Image.fromarray(_pixels(shape), kind)
    if kind == "I;16":
        return Image.fromarray(_pixels((20, 30)).astype(np.uint16) * 257)
    if kind == "1":
        return Image.fromarray(_pixels((20, 30)) > 128)
    return Image.fromarray(_pixels((20, 30, 3))).quantize(16)  # "P"


# (flavour, save keywords, whether libspng decodes it): everything else must go to Pillow
PNG_FLAVOURS = [
    ("L", {}, True),
    ("RGB", {}, True),
    ("RGBA", {}, True),
    ("RGB", {"compress_level": 0}, True),
    ("RGB", {"compress_level": 9, "optimize": True}, True),
    ("RGB", {"pnginfo": "text", "dpi": (72, 72), "icc_profile": b"\0" * 128}, True),
    ("L", {"transparency": 7}, False),
    ("RGB", {"transparency": (1, 2, 3)}, False),
    ("LA", {}, False),
    ("I;16", {}, False),
    ("1", {}, False),
    ("L", {"bits": 4}, False),
    ("P", {}, False),
    ("P", {"transparency": 0}, False),
    ("RGB", {"save_all": True, "append_images": "frame"}, False),  # APNG
]


@pytest.mark.parametrize(("kind", "save", "fast"), PNG_FLAVOURS, ids=lambda v: str(v))
def test_png_fast_path_equals_pillow(kind: str, save: dict, fast: bool, tmp_path: Path) -> None:
    """libspng decodes exactly the PNGs it reproduces byte for byte; the rest keep Pillow."""
    from PIL import PngImagePlugin

    from genpar_models.data import png

    img = _png_image(kind)
    if save.get("pnginfo") == "text":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "made by a test")
        save = {**save, "pnginfo": info}
    if save.get("append_images") == "frame":
        save = {**save, "append_images": [Image.fromarray(255 - np.asarray(img))]}
    path = tmp_path / "x.png"
    img.save(path, **save)
    with Image.open(path) as reference:
        reference.load()
        expected_mode, expected = reference.mode, np.asarray(reference)
        expected_info = dict(reference.info)
    with open(path, "rb") as fp, Image.open(fp) as header:
        assert (png.decode_plain(fp, header) is not None) == fast
    got = decode_image(path, max_pixels=10_000)
    assert got.mode == expected_mode and np.array_equal(np.asarray(got), expected)
    assert {k: got.info.get(k) for k in expected_info} == expected_info
    assert np.array_equal(convert(got, channels=3, size=16), convert(reference, 3, 16))


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["L", "RGB", "RGBA"]),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    level=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_png_fast_path_is_pixel_identical(
    mode: str, height: int, width: int, level: int, seed: int
) -> None:
    from genpar_models.data import png

    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    buf = io.BytesIO()
    Image.fromarray(_pixels((height, width, *channels), seed), mode).save(
        buf, "PNG", compress_level=level
    )
    buf.seek(0)
    with Image.open(buf) as header:
        got = png.decode_plain(buf, header)
        header.load()
        assert got is not None and np.array_equal(np.asarray(got), np.asarray(header))


def test_png_with_several_idat_chunks(tmp_path: Path) -> None:
    """Pillow writes IDAT in 64 KiB chunks: a large noisy image has several of them."""
    from genpar_models.data import png

    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (300, 300, 3), np.uint8)).save(path)
    assert path.read_bytes().count(b"IDAT") > 1
    with open(path, "rb") as fp, Image.open(fp) as header:
        assert png.decode_plain(fp, header) is not None
        header.load()
        expected = np.asarray(header)
    assert np.array_equal(np.asarray(decode_image(path, max_pixels=10**5)), expected)


def _chunk_at(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset of the chunk's data, its length) for the first chunk of that kind."""
    at = data.index(kind)
    return at + 4, struct.unpack(">I", data[at - 4 : at])[0]


def test_damaged_pngs_behave_as_pillow_says(tmp_path: Path) -> None:
    """libspng ignores CRCs, so a damaged chunk sends the file to Pillow: refused where Pillow
    refuses it (with Pillow's reason), decoded where Pillow decodes it."""
    good = _png_bytes_rgb()
    start, length = _chunk_at(good, b"IDAT")
    flipped_data = bytearray(good)
    flipped_data[start + length // 2] ^= 0x01  # the pixels are damaged, the CRC says so
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(flipped_data))
    with pytest.raises(DataError, match=r"damaged.png: truncated or corrupt image data"):
        decode_image(path, max_pixels=10_000)
    flipped_crc = bytearray(good)
    flipped_crc[start + length] ^= 0xFF  # only the IDAT CRC: Pillow never checks that one
    path.write_bytes(bytes(flipped_crc))
    with Image.open(io.BytesIO(good)) as reference:
        expected = np.asarray(reference)
    assert np.array_equal(np.asarray(decode_image(path, max_pixels=10_000)), expected)
    for cut in (len(good) - 12, len(good) // 2, 60):  # no IEND; half the pixels; header only
        path.write_bytes(good[:cut])
        try:
            with Image.open(io.BytesIO(good[:cut])) as im:
                im.load()
                pillow = np.asarray(im)
        except Exception:
            with pytest.raises(DataError, match=r"damaged.png: truncated or corrupt image"):
                decode_image(path, max_pixels=10_000)
        else:
            assert np.array_equal(np.asarray(decode_image(path, max_pixels=10_000)), pillow)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


_XMP_ROTATED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"'
    b"/></rdf:RDF></x:xmpmeta>"
)


@pytest.mark.parametrize("after", ["eXIf", "XMP iTXt", "tEXt"])
def test_chunks_after_the_pixels_go_to_pillow(after: str, tmp_path: Path) -> None:
    """A chunk between the image data and IEND reaches Pillow's info only when it loads: an
    orientation there (eXIf, XMP) must rotate the image as Pillow's path does, and a text chunk
    must appear in info, so such a PNG is not libspng's."""
    from PIL import ImageOps

    from genpar_models.data import png

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a 40x30 image displays as 30x40
    extra = {
        "eXIf": _chunk(b"eXIf", exif.tobytes()[6:]),  # without the "Exif\0\0" prefix, as saved
        "XMP iTXt": _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + _XMP_ROTATED),
        "tEXt": _chunk(b"tEXt", b"Comment\x00written after the pixels"),
    }[after]
    good = png_bytes((40, 30))
    path = tmp_path / "after.png"
    path.write_bytes(good[:-12] + extra + good[-12:])  # before IEND (its 12 bytes)
    with Image.open(path) as reference:
        reference.load()
        expected = ImageOps.exif_transpose(reference)  # its info without the orientation tag
    with open(path, "rb") as fp, Image.open(fp) as header:
        assert png.decode_plain(fp, header) is None
    got = decode_image(path, max_pixels=10_000)
    assert got.size == expected.size == ((30, 40) if after != "tEXt" else (40, 30))
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert {k: got.info.get(k) for k in expected.info} == expected.info


def _png_bytes_rgb() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels((40, 40, 3))).save(buf, "PNG")
    return buf.getvalue()


def test_interlaced_png_headers_go_to_pillow() -> None:
    from genpar_models.data import png

    data = bytearray(_png_bytes_rgb())
    data[28] = 1  # IHDR interlace method: Adam7
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with Image.open(io.BytesIO(bytes(data))) as header:
        assert header.info.get("interlace") == 1 and not png._is_plain(header)


# ---------------------------------------------------------------- folders


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (10, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def test_class_subfolders_become_labels(tmp_path: Path) -> None:
    for rel in ["dog/b.png", "cat/b.png", ".git/x.png", "cat/.hidden.png"]:
        write_png(tmp_path / rel)
    Image.new("RGB", (6, 6)).save(tmp_path / "cat/a.JPG", "JPEG")
    (tmp_path / "cat/.DS_Store").write_text("junk")
    (tmp_path / "README.txt").write_text("not an image")
    info = describe_source(DataConfig(source="folder", path=str(tmp_path)))
    assert info.class_names == ("cat", "dog") and info.num_items == 3
    assert info.ignored_files == ("README.txt",) and info.uri == str(tmp_path.resolve())
    (part,) = load_all(DataConfig(source="folder", path=str(tmp_path)))[0]
    assert part.ids == ["cat/a.JPG", "cat/b.png", "dog/b.png"]
    assert part.labels.tolist() == [0, 0, 1] and part.labels.dtype == np.int64


def test_root_only_images_are_unlabelled_and_one_class_is_allowed(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "flat" / f"{i}.png")
        write_png(tmp_path / "one" / "only" / f"{i}.png")
    (flat,) = load_all(DataConfig(source="folder", path=str(tmp_path / "flat")))[0]
    assert flat.labels.tolist() == [-1, -1, -1]
    (one,) = load_all(DataConfig(source="folder", path=str(tmp_path / "one")))[0]
    assert one.labels.tolist() == [0, 0, 0]


def test_mixed_empty_and_missing_folders_are_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "mixed" / "stray.png")
    write_png(tmp_path / "mixed" / "cat" / "a.png")
    with pytest.raises(DataError, match="stray.png.*move the root-level images"):
        describe_source(DataConfig(source="folder", path=str(tmp_path / "mixed")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty: no images found"):
        describe_source(DataConfig(source="folder", path=str(tmp_path / "empty")))
    for kind in ["folder", "array", "table"]:
        with pytest.raises(DataError, match=r"data.path .*nowhere.* does not exist"):
            describe_source(DataConfig(source=kind, path=str(tmp_path / "nowhere")))


def test_folder_fingerprint_partitions_and_max_samples(tmp_path: Path) -> None:
    files = [write_png(tmp_path / f"{i:02d}.png", value=i) for i in range(40)]
    cfg = DataConfig(source="folder", path=str(tmp_path), shard_size=16)
    first = describe_source(cfg).fingerprint
    assert describe_source(cfg).fingerprint == first
    parts, ids = load_all(cfg)
    assert [len(p.ids) for p in parts] == [16, 16, 8] and ids == [f.name for f in files]
    assert [int(p.images[0, 0, 0, 0]) for p in parts] == [0, 16, 32]
    os.utime(files[3], ns=(1, 1))  # touched: a new fingerprint
    assert describe_source(cfg).fingerprint != first
    capped = DataConfig(source="folder", path=str(tmp_path), shard_size=16, max_samples=18)
    _, specs = plan_partitions(capped)
    assert [len(s.items) for s in specs] == [16, 2] and specs[1].items[-1] == "17.png"


# ---------------------------------------------------------------- arrays


def images_nhwc(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npy_layouts(layout: str, tmp_path: Path) -> None:
    data = images_nhwc()
    stored = {"NHW": data[..., 0], "NHWC": data, "NCHW": data.transpose(0, 3, 1, 2)}[layout]
    np.save(tmp_path / "x.npy", stored)
    cfg = DataConfig(source="array", path=str(tmp_path / "x.npy"), channels=3, image_size=16)
    (part,) = load_all(cfg)[0]
    assert part.images.shape == (5, 3, 16, 16) and part.ids[4] == "x.npy[4]"
    assert (part.labels == -1).all()
    same = DataConfig(source="array", path=str(tmp_path / "x.npy"), channels=3, image_size=8)
    expected = data if layout != "NHW" else np.repeat(data[..., :1], 3, axis=-1)
    assert (load_all(same)[0][0].images == expected.transpose(0, 3, 1, 2)).all()


def test_npz_default_and_explicit_keys(tmp_path: Path) -> None:
    data, labels = images_nhwc()[..., 0], np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "d.npz", x=data, y=labels)
    (part,) = load_all(DataConfig(source="array", path=str(tmp_path / "d.npz")))[0]
    assert part.labels.tolist() == labels.tolist()
    np.savez_compressed(tmp_path / "e.npz", pics=data, target=labels[::-1])
    cfg = DataConfig(
        source="array", path=str(tmp_path / "e.npz"), images_key="pics", labels_key="target"
    )
    assert load_all(cfg)[0][0].labels.tolist() == labels[::-1].tolist()
    assert describe_source(cfg).class_names == ("0", "1", "2")
    with pytest.raises(DataError, match=r"no images array.*\['pics', 'target'\]"):
        describe_source(DataConfig(source="array", path=str(tmp_path / "e.npz")))


def test_object_arrays_are_refused_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object .pickled. array.*refused"):
        describe_source(DataConfig(source="array", path=str(tmp_path / "o.npz")))
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object))
    with pytest.raises(DataError, match="o.npy.*refused"):
        describe_source(DataConfig(source="array", path=str(tmp_path / "o.npy")))


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 6, 2), (5, 2, 6, 6, 1)])
def test_wrong_shapes_and_dtypes_are_refused(shape: tuple[int, ...], tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match=rf"w.npy: images have shape \({shape[0]}, .*accepted"):
        describe_source(DataConfig(source="array", path=str(tmp_path / "w.npy")))
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 4), dtype=complex))
    with pytest.raises(DataError, match="c.npy: images have dtype complex128"):
        describe_source(DataConfig(source="array", path=str(tmp_path / "c.npy")))


def test_bad_values_make_bad_samples(tmp_path: Path) -> None:
    data = np.full((4, 8, 8), 0.5, dtype=np.float32)
    data[1, 2, 3] = np.nan
    data[3, 0, 0] = 1.5
    np.save(tmp_path / "f.npy", data)
    cfg = DataConfig(source="array", path=str(tmp_path / "f.npy"))
    assert describe_source(cfg).pixel_max == 1.0
    (part,) = load_all(cfg)[0]
    assert part.ids == ["f.npy[0]", "f.npy[2]"] and (part.images == 128).all()
    assert [i for i, _ in part.bad] == ["f.npy[1]", "f.npy[3]"]
    assert "nan at index (2, 3)" in part.bad[0][1] and "1.5" in part.bad[1][1]


def test_labels_are_validated(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    cases = {
        "big.npy": (np.array([0, 1, 5, 2]), r"label 5 at row 2 is outside \[0, 3\)"),
        "neg.npy": (np.array([0, -1, 0, 0]), "label -1 at row 1"),
        "short.npy": (np.array([0, 1]), r"shape \(2,\); expected \(4,\)"),
        "float.npy": (np.array([0.0, 1, 2, 1]), "dtype float64; expected integers"),
    }
    for name, (labels, message) in cases.items():
        np.save(tmp_path / name, labels)
        cfg = DataConfig(
            source="array",
            path=str(tmp_path / "x.npy"),
            num_classes=3,
            labels_path=str(tmp_path / name),
        )
        with pytest.raises(DataError, match=message):
            describe_source(cfg)
    np.save(tmp_path / "ok.npy", np.array([2, 1, 0, 1]))
    ok = DataConfig(
        source="array", path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "ok.npy")
    )
    assert load_all(ok)[0][0].labels.tolist() == [2, 1, 0, 1]


def test_array_fingerprint_follows_the_bytes(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    cfg = DataConfig(source="array", path=str(tmp_path / "x.npy"), max_samples=3)
    info = describe_source(cfg)
    assert describe_source(cfg) == info and info.num_items == 3
    np.save(tmp_path / "x.npy", np.ones((4, 8, 8), np.uint8))
    assert describe_source(cfg).fingerprint != info.fingerprint


# ---------------------------------------------------------------- tables


def pixel_frame(rows: int = 40, pixels: int = 64, label: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        rng.integers(0, 256, (rows, pixels)), columns=[f"p{i}" for i in range(pixels)]
    )
    if label:
        frame.insert(0, "label", np.arange(rows) % 3)
    return frame


def test_csv_and_parquet_with_labels(tmp_path: Path) -> None:
    frame = pixel_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "t.parquet", row_group_size=7)
    for name in ["t.csv", "t.parquet"]:
        cfg = DataConfig(source="table", path=str(tmp_path / name), image_size=8, shard_size=16)
        _, specs = plan_partitions(cfg)
        assert [(s.start, s.stop) for s in specs] == [(0, 16), (16, 32), (32, 40)]
        parts, ids = load_all(cfg)
        assert ids == [f"{name}:row{i}" for i in range(40)]
        assert np.concatenate([p.labels for p in parts]).tolist() == frame.label.tolist()
        got = np.concatenate([p.images for p in parts])  # 8x8: no resize, values come through
        assert (got.reshape(40, 64) == frame.iloc[:, 1:].to_numpy()).all()


def test_parquet_written_by_pandas_with_an_index(tmp_path: Path) -> None:
    frame = pixel_frame().iloc[[*range(0, 30, 2), 31, 33, 35, 36, 39]]  # kept as a column
    frame.to_parquet(tmp_path / "i.parquet")
    parts, ids = load_all(DataConfig(source="table", path=str(tmp_path / "i.parquet")))
    assert len(ids) == 20 and parts[0].labels.tolist() == frame.label.tolist()


def test_rgb_table_is_channels_last(tmp_path: Path) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3))
    pd.DataFrame(rgb.reshape(2, -1)).rename(columns=str).to_csv(tmp_path / "c.csv", index=False)
    cfg = DataConfig(source="table", path=str(tmp_path / "c.csv"), channels=3, image_size=8)
    (part,) = load_all(cfg)[0]
    assert (part.images == rgb.transpose(0, 3, 1, 2)).all() and (part.labels == -1).all()


def test_missing_label_column(tmp_path: Path) -> None:
    pixel_frame(label=False).to_csv(tmp_path / "u.csv", index=False)
    info = describe_source(DataConfig(source="table", path=str(tmp_path / "u.csv")))
    assert info.class_names == () and info.num_items == 40
    cfg = DataConfig(source="table", path=str(tmp_path / "u.csv"), label_column="digit")
    with pytest.raises(DataError, match="u.csv: no label column 'digit'"):
        describe_source(cfg)


def test_table_structure_errors(tmp_path: Path) -> None:
    text = pixel_frame(rows=3)
    text["p5"] = ["1", "two", "3"]
    text.to_csv(tmp_path / "s.csv", index=False)
    pq.write_table(pa.Table.from_pandas(text), tmp_path / "s.parquet")
    for name in ["s.csv", "s.parquet"]:
        with pytest.raises(DataError, match=rf"{name}: column 'p5' is not numeric"):
            describe_source(DataConfig(source="table", path=str(tmp_path / name)))
    pixel_frame(pixels=15).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(DataError, match=r"n.csv: 15 pixel columns.*12 \(2x2 RGB\), 16 \(4x4\)"):
        describe_source(DataConfig(source="table", path=str(tmp_path / "n.csv")))
    pixel_frame(rows=5).to_csv(tmp_path / "r.csv", index=False)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    lines[3] += ",99"
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"r.csv: ragged.*line 4"):
        describe_source(DataConfig(source="table", path=str(tmp_path / "r.csv")))


def test_missing_pixels_and_short_rows_are_bad_samples(tmp_path: Path) -> None:
    frame = pixel_frame(rows=4).astype({"p3": float})
    frame.loc[1, "p3"] = np.nan
    frame.loc[2, "p0"] = 300
    frame.to_csv(tmp_path / "m.csv", index=False)
    with open(tmp_path / "m.csv", "a") as f:
        f.write("1,2,3\n")  # a short row
    (part,) = load_all(DataConfig(source="table", path=str(tmp_path / "m.csv"), image_size=8))[0]
    assert part.ids == ["m.csv:row0", "m.csv:row3"]
    assert [i for i, _ in part.bad] == ["m.csv:row1", "m.csv:row2", "m.csv:row4"]
    assert "missing value in pixel column 'p3'" in part.bad[0][1] and "300" in part.bad[1][1]


def test_float_csv_defaults_to_unit_range(tmp_path: Path) -> None:
    pd.DataFrame(np.full((2, 64), 0.5)).rename(columns=str).to_csv(tmp_path / "f.csv", index=False)
    cfg = DataConfig(source="table", path=str(tmp_path / "f.csv"))
    assert describe_source(cfg).pixel_max == 1.0
    assert (load_all(cfg)[0][0].images == 128).all()


# ---------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name, count, side", [("digits", 1797, 8), ("mnist5k", 5000, 28)])
def test_builtins_cover_every_sample_once_in_order(name: str, count: int, side: int) -> None:
    cfg = DataConfig(source=name, image_size=side, shard_size=700)
    info, specs = plan_partitions(cfg)
    assert info.num_items == count and info.class_names == tuple("0123456789")
    assert describe_source(cfg).fingerprint == info.fingerprint
    parts, ids = load_all(cfg)
    assert ids == [f"{name}[{i}]" for i in range(count)]
    assert all(len(p.ids) <= 700 for p in parts) and [p.index for p in parts] == list(
        range(len(specs))
    )
    labels = np.concatenate([p.labels for p in parts])
    assert sorted(set(labels.tolist())) == list(range(10)) and labels.dtype == np.int64
    images = np.concatenate([p.images for p in parts])
    assert images.shape == (count, 1, side, side) and images.max() == 255
    first = images[0, 0]
    if name == "digits":
        from sklearn.datasets import load_digits

        assert (first == np.rint(load_digits().images[0] * 255 / 16)).all()
    else:
        with gzip.open(mnist5k_path(), "rt") as f:
            row = [int(v) for v in f.readline().split(",")]
        assert (first.ravel() == row[:784]).all() and labels[0] == row[784]


def test_digits_are_load_digits_read_without_importing_scikit_learn() -> None:
    """genpar reads load_digits' bundled CSV itself (importing scikit-learn was 1.2-1.4 s of
    every digits run): the same images, labels and fingerprint, so the same shard keys."""
    import hashlib
    import importlib.metadata

    code = (
        "import sys; from genpar_models.data.sources.builtin import builtin_arrays; "
        "images, labels, fp = builtin_arrays('digits'); "
        "print(images.shape, int(labels.sum()), fp, 'sklearn' in sys.modules)"
    )
    out = python_c(code)  # a fresh interpreter: nothing imported scikit-learn before
    from sklearn.datasets import load_digits

    bunch = load_digits()
    content = hashlib.sha256(bunch.images.tobytes() + bunch.target.tobytes()).hexdigest()
    version = importlib.metadata.version("scikit-learn")
    fingerprint = hashlib.sha256(f"digits\n{version}\n{content}".encode()).hexdigest()
    assert out.stdout.split() == [
        "(1797,",
        "8,",
        "8)",
        str(bunch.target.sum()),
        fingerprint,
        "False",
    ]
    from genpar_models.data.sources.builtin import builtin_arrays

    images, labels, _ = builtin_arrays("digits")
    assert (labels == bunch.target).all() and (images == np.rint(bunch.images * 255 / 16)).all()


def test_builtin_max_samples_and_resizing() -> None:
    cfg = DataConfig(source="digits", image_size=16, channels=3, shard_size=16, max_samples=40)
    parts, ids = load_all(cfg)
    assert len(ids) == 40 and [len(p.ids) for p in parts] == [16, 16, 8]
    assert parts[0].images.shape == (16, 3, 16, 16)


def test_module_imports_stay_light() -> None:
    code = (
        "import sys, genpar_models.data.sources as s; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'dask', 'distributed', 'prefect'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
