"""Spec: reading a user's image (UI uploads, API data: URLs, probe suites) - every kind becomes RGB as a viewer shows
it, and whatever is unreadable or over the caps is refused in plain words before any pixel is decoded. A file's path
and the file's bytes give the same image or the same refusal."""

import io

import numpy as np
import pytest
from PIL import Image

from cobra_app.images import ImageLimits, ImageRejected, open_image


@pytest.fixture(params=["path", "bytes"])
def read(request):
    """open_image on a file given as its path, or as its bytes."""
    if request.param == "path":
        return open_image
    return lambda path, *limits: open_image(path.read_bytes(), *limits)


def _save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_common_image_kinds_become_rgb(tmp_path, read):
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    assert read(_save(tmp_path, rgba, "t.png")).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert read(_save(tmp_path, cmyk, "c.jpg")).mode == "RGB"
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert read(_save(tmp_path, deep, "d.png")).getpixel((0, 0)) == (255, 255, 255)
    frames = [Image.new("RGB", (6, 6), c) for c in ("red", "blue")]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert read(gif).getpixel((0, 0))[0] > 200  # the first frame
    tall = Image.new("RGB", (10, 20), "white")
    exif = tall.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    assert read(_save(tmp_path, tall, "r.jpg", exif=exif)).size == (20, 10)
    assert read(_save(tmp_path, Image.new("L", (1, 1)), "one.png")).size == (1, 1)


def test_unreadable_or_oversized_images_are_refused_in_plain_words(tmp_path, read):
    def refusal(path):
        with pytest.raises(ImageRejected) as info:
            read(path, ImageLimits(max_bytes=10_000, max_pixels=1_000_000))
        return info.value.user_message

    (tmp_path / "empty.png").write_bytes(b"")
    assert refusal(tmp_path / "empty.png") == "The image file is empty. Please upload another image."
    (tmp_path / "junk.png").write_bytes(b"hello, not an image")
    assert refusal(tmp_path / "junk.png").startswith("This file is not an image Cobra can read")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:60])
    assert refusal(tmp_path / "cut.png").startswith("The image file is damaged or incomplete")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))
    assert refusal(_save(tmp_path, noisy, "big.png")).endswith("kB; the limit is 10 kB. Please upload a smaller image.")
    huge = _save(tmp_path, Image.new("1", (2000, 1000)), "huge.png")  # a small file of 2 MP
    assert refusal(huge) == "The image is 2000x1000 pixels; the limit is 1 megapixels. Please upload a smaller image."


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ImageRejected) as info:
        open_image(tmp_path / "gone.png")
    assert info.value.user_message == "The image could not be read. Please upload it again."
