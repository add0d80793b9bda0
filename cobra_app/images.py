"""Reading a user's image safely (UI uploads, API data: URLs, probe suites): size caps checked before decoding, then
decoded to the RGB image the model expects.

Every refusal is an `ImageRejected` whose `user_message` says in plain words what is wrong and what to do.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

WHITE = (255, 255, 255)


class ImageRejected(ValueError):
    def __init__(self, user_message: str, detail: str = ""):
        self.user_message = user_message
        super().__init__(detail or user_message)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 10**6
    max_pixels: int = 40 * 10**6


DEFAULT_LIMITS = ImageLimits()


def _megabytes(n: int) -> str:
    if n < 10**5:
        return f"{n / 1e3:.0f} kB"
    return f"{n / 1e6:.1f} MB" if n < 10**8 else f"{n / 1e6:.0f} MB"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white, 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_file_size(nbytes: int, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Refuse an image file of `nbytes` bytes (over the cap, or empty) before reading it."""
    if nbytes > limits.max_bytes:
        raise ImageRejected(f"The image file is {_megabytes(nbytes)}; the limit is {_megabytes(limits.max_bytes)}. "
                            "Please upload a smaller image.")
    if nbytes == 0:
        raise ImageRejected("The image file is empty. Please upload another image.")


def _open_file(source: str | os.PathLike | bytes, limits: ImageLimits) -> Image.Image:
    """A path or a file's bytes -> a lazily decoded PIL image (header read only), after the file-size cap."""
    if isinstance(source, bytes):
        nbytes, file = len(source), io.BytesIO(source)
    else:
        file = Path(source)
        try:
            nbytes = file.stat().st_size
        except OSError as exc:
            raise ImageRejected("The image could not be read. Please upload it again.", str(exc)) from exc
    check_file_size(nbytes, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("The image has too many pixels to be processed. Please upload a smaller image.",
                            str(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("This file is not an image Cobra can read (or it is damaged). Please upload a PNG, "
                            "JPEG, WebP or GIF image.", f"{type(exc).__name__}: {exc}") from exc


def open_image(source: str | os.PathLike | bytes | Image.Image, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """A file path, a file's bytes (an upload, a data: URL) or a PIL image -> an RGB PIL image, or ImageRejected with
    a readable reason.

    File size and pixel count are checked from the file's size and header before any pixel is decoded.
    Animated images give their first frame; EXIF orientation is applied."""
    image = source if isinstance(source, Image.Image) else _open_file(source, limits)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(f"The image is {width}x{height} pixels; the limit is {limits.max_pixels / 1e6:.0f} "
                            "megapixels. Please upload a smaller image.")
    if width < 1 or height < 1:
        raise ImageRejected("The image has no pixels. Please upload another image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(image, "is_animated", False):
                image.seek(0)
            image = ImageOps.exif_transpose(image) or image
            image.load()
            return _to_rgb(image)
    except Exception as exc:  # truncated data, broken EXIF, unsupported codec features: all "unreadable"
        raise ImageRejected("The image file is damaged or incomplete, so it cannot be read. Please upload it again "
                            "or try another image.", f"{type(exc).__name__}: {exc}") from exc
