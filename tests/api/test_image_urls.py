"""Spec: image_url parts -> images with the UI's caps. data: URLs are decoded (their size checked before decoding);
http(s) URLs are refused unless the server allows fetching them, and then fetched with the same caps."""

import base64
import contextlib
import http.server
import io
import threading
from urllib.parse import quote_from_bytes

import numpy as np
import pytest
from PIL import Image

from cobra_app.api.image_urls import image_data_url, read_image_url
from cobra_app.images import ImageLimits, ImageRejected

LIMITS = ImageLimits(max_bytes=20_000, max_pixels=1_000_000)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def refusal(url: str, allow_remote: bool = False, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageRejected) as info:
        read_image_url(url, limits, allow_remote)
    return info.value.user_message


def noise(size: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_data_urls_give_the_image_as_a_file_would(image):
    assert np.array_equal(np.asarray(read_image_url(image_data_url(image), LIMITS, False)), np.asarray(image))
    jpeg = read_image_url(image_data_url(image, "JPEG"), LIMITS, False)
    assert jpeg.size == image.size and jpeg.mode == "RGB"
    wrapped = image_data_url(image).replace("base64,", "base64,\n")  # line breaks inside base64 are tolerated
    assert read_image_url(wrapped, LIMITS, False).size == image.size
    percent = "data:image/png," + quote_from_bytes(png_bytes(image))  # not base64
    assert read_image_url(percent, LIMITS, False).size == image.size
    untyped = "data:;base64," + base64.b64encode(png_bytes(image)).decode()
    assert read_image_url(untyped, LIMITS, False).size == image.size


def test_data_urls_that_are_not_images_or_over_the_caps_are_refused(image):
    assert "holds text/plain, not an image" in refusal("data:text/plain;base64,aGVsbG8=")
    assert refusal("data:image/png;base64,aGVsbG8=").startswith("This file is not an image Cobra can read")
    assert "not valid base64" in refusal("data:image/png;base64,@@@@")
    assert "malformed" in refusal("data:image/png;base64")
    assert refusal("data:image/png;base64,") == "The image file is empty. Please upload another image."
    big = image_data_url(noise(100))  # ~30 kB of PNG
    assert refusal(big).endswith("the limit is 20 kB. Please upload a smaller image.")
    huge = image_data_url(Image.new("1", (2000, 1000)))  # small file, 2 megapixels
    assert refusal(huge).startswith("The image is 2000x1000 pixels; the limit is 1 megapixels.")


def test_the_byte_cap_is_checked_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(base64, "b64decode", no_decoding)
    assert "the limit is 20 kB" in refusal("data:image/png;base64," + "A" * 40_000)


@contextlib.contextmanager
def image_server(files: dict[str, bytes]):
    """A loopback HTTP server: GET /name -> files[name] (404 otherwise); yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name for it
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_http_urls_are_refused_unless_allowed_then_fetched_with_the_caps(image, monkeypatch):
    for proxy in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with image_server({"a.png": png_bytes(image), "big.png": png_bytes(noise(100))}) as base:
        assert "does not fetch images from URLs" in refusal(f"{base}/a.png")
        assert "--allow-image-urls" in refusal(f"{base}/a.png")
        fetched = read_image_url(f"{base}/a.png", LIMITS, True)
        assert np.array_equal(np.asarray(fetched), np.asarray(image))
        assert "the limit is 20 kB" in refusal(f"{base}/big.png", allow_remote=True)
        assert "answered HTTP 404" in refusal(f"{base}/missing.png", allow_remote=True)
    assert "could not be fetched" in refusal(f"{base}/a.png", allow_remote=True)  # the server is gone


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "just-a-name.png"])
def test_other_urls_are_refused(url):
    assert refusal(url, allow_remote=True) == ("An image_url must be a data: URL (data:image/png;base64,...) or an "
                                               "http(s) URL.")
