"""An `image_url` content part -> the RGB image, with the UI's caps (`cobra_app.images`).

`data:` URLs (base64, or percent-encoded) are decoded here; their size is checked from the encoded length before
anything is decoded. http(s) URLs are fetched only when the server allows it (`--allow-image-urls`: anyone who can call
the API can then make the server fetch any address it can reach), streamed and cut off at the byte cap.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import unquote_to_bytes

import httpx
from PIL import Image

from cobra_app.images import ImageLimits, ImageRejected, check_file_size, open_image

DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3


def image_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """An image as a data: URL (what clients send; the inverse of `decode_data_url`)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def decode_data_url(url: str, limits: ImageLimits) -> bytes:
    """A data: URL's bytes; ImageRejected when it is not an image's or would exceed the byte cap."""
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise ImageRejected("This data: URL is malformed; send data:image/png;base64,<the file in base64>.")
    media_type = match["type"].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise ImageRejected(f"This data: URL holds {media_type}, not an image. Send a PNG, JPEG, WebP or GIF image.")
    data = match["data"]
    if ";base64" not in match["params"].lower():
        raw = unquote_to_bytes(data)
        check_file_size(len(raw), limits)
        return raw
    data = re.sub(r"\s+", "", data)
    check_file_size(len(data) * 3 // 4 - data[-2:].count("="), limits)  # the decoded size, before decoding
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected("The image's base64 data in this data: URL is not valid base64.", str(exc)) from exc


def fetch_image_bytes(url: str, limits: ImageLimits, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """GET an http(s) image, stopping as soon as it exceeds the byte cap."""
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ImageRejected(f"The image URL answered HTTP {response.status_code}; Cobra could not fetch it.")
            declared = response.headers.get("content-length", "")
            if declared.isdigit():
                check_file_size(int(declared), limits)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limits.max_bytes:
                    check_file_size(len(data), limits)
            return bytes(data)
    except httpx.HTTPError as exc:
        raise ImageRejected(f"The image URL could not be fetched ({type(exc).__name__}).", str(exc)) from exc


def read_image_url(url: str, limits: ImageLimits, allow_remote: bool) -> Image.Image:
    """An image_url part's URL -> an RGB image, or ImageRejected saying what to send instead."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return open_image(decode_data_url(url, limits), limits)
    if scheme in ("http", "https"):
        if not allow_remote:
            raise ImageRejected("This server does not fetch images from URLs. Send the image inline as a data: URL "
                                "(data:image/png;base64,...), or start the server with --allow-image-urls.")
        return open_image(fetch_image_bytes(url, limits), limits)
    raise ImageRejected("An image_url must be a data: URL (data:image/png;base64,...)"
                        + (" or an http(s) URL." if allow_remote else "."))
