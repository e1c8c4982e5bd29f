"""Validation of uploaded images: a byte limit, an allow-list of decoders chosen by content (never the
file name), a pixel limit read from the header before any pixel is decoded, decompression-bomb
warnings as errors, verify(), then a reload, the EXIF orientation applied, and a re-encode to PNG
from bare pixels (drops EXIF, GPS, ICC and text chunks and any trailing data)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from .errors import ApiError

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP"]


@dataclass(frozen=True)
class CleanImage:
    png: bytes
    sha256: str
    width: int
    height: int


def clean_image(data: bytes, field: str, max_pixels: int, max_bytes: int | None = None) -> CleanImage:
    if not data:
        raise ApiError(field, "empty file")
    if max_bytes is not None and len(data) > max_bytes:
        raise ApiError(field, f"file has {len(data)} bytes; the limit is {max_bytes}")
    # Our own pixel limit is checked from the header before any decoding (Image.MAX_IMAGE_PIXELS
    # is process-global, so it is not changed per request); PIL's bomb warnings become errors.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise ApiError(field, f"image has {width}x{height} pixels; the limit is {max_pixels}")
                probe.verify()
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                img.load()
                upright = ImageOps.exif_transpose(img)  # a phone's "rotate 90" tag becomes real pixels
                rgb = upright.convert("RGB")
            # Only the pixels go on: a fresh image carries no `info` (EXIF, ICC, comments) to save.
            rgb = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(field, "image is too large (decompression bomb)") from exc
    except Exception as exc:  # PIL raises many types for bad data; all mean the same to the client
        raise ApiError(field, f"not a readable {', '.join(ALLOWED_FORMATS)} image") from exc
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    png = out.getvalue()
    return CleanImage(png, hashlib.sha256(png).hexdigest(), rgb.width, rgb.height)
