"""Spec (issue 8, image input and text/parameters): every kind of hostile or odd input, through the handler layer the
UI and the API call, is accepted as the user would expect or refused with a plain-words notice: never a traceback,
never a crash, nothing typed lost.

Choices made here:
- Images within the caps are accepted whatever their shape: a 1x1 image and a 4000x1 strip reach the model as they are
  (the model's image transform resizes them); only the caps (file size, pixel count) refuse by size.
- Unpaired surrogates (possible through the API's JSON) become U+FFFD; a pair sent as two code points is joined.
- C0/C1 control characters and DEL are removed (newline and tab kept, CR LF and CR read as newlines), in what the model
  reads and what the chat shows; format characters (zero-width space, BOM, bidi marks) are text and stay.
- Out-of-range numbers are clamped into range with an info note; non-numbers and non-finite values are refused.
"""

import dataclasses
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from cobra_app.prompting.tokenization import EOS
from cobra_app.ui.params import ParamValues
from tests.ui.conftest import MAX_BYTES
from tests.ui.support import DEMO_MODEL, last

GREEDY = ParamValues(max_new_tokens=4)


@pytest.fixture
def seen(ui, monkeypatch):
    """The PIL images the model's image encoder receives, in order."""
    images = []
    cobra = ui.manager.cobra
    real = cobra.encode_image

    def recording(image):
        images.append(image.copy())
        return real(image)

    monkeypatch.setattr(cobra, "encode_image", recording)
    return images


@pytest.fixture
def decodes(monkeypatch):
    """Counts pixel decodes of image files (PIL's ImageFile.load)."""
    calls = []
    real = ImageFile.ImageFile.load

    def counting(self):
        calls.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return calls


def no_tracebacks(notes):
    shown = notes.warnings + notes.infos
    assert all("Traceback" not in w and "Error" not in w and "error:" not in w for w in shown), shown


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, raw: bytes | None = None) -> bytes:
    """A grayscale 8-bit PNG of the given header size. `raw` None: a tiny IDAT (the header lies about the content);
    else the real scanlines, compressed (a genuine decompression bomb when they are all zeros)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64 if raw is None else raw, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def refused(ui, notes, path, sid=None):
    """Set the image; it must be refused: the previous image is shown again, and one notice says why."""
    sid = sid or ui.open_tab()
    before = len(notes.warnings)
    previous = ui._tab(sid).image_file
    _, _, shown = ui.set_image(str(path), sid)
    assert shown == (previous[0] if previous else None)
    assert len(notes.warnings) == before + 1
    no_tracebacks(notes)
    return notes.warnings[-1]


def accepted(ui, notes, seen, path) -> np.ndarray:
    """Set the image and ask about it; it must be accepted and answered. Returns the pixels the model received."""
    sid = ui.open_tab()
    _, chat, shown = ui.set_image(str(path), sid)
    assert shown == str(path) and notes.warnings == []
    _, chat, box = last(ui.send(str(path), "What is this?", sid, GREEDY))
    assert box == "" and chat[0]["content"] == "What is this?" and len(chat) == 3 and notes.warnings == []
    assert len(seen) == 1 and seen[0].mode == "RGB"
    return np.asarray(seen[0])


# --- images refused ---------------------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(ui, notes, tmp_path, decodes):
    liar = tmp_path / "liar.png"  # 100 bytes claiming 3000x3000 (9 MP, the cap here is 4 MP)
    liar.write_bytes(png_bytes(3000, 3000))
    assert liar.stat().st_size < 200
    assert refused(ui, notes, liar) == ("The image is 3000x3000 pixels; the limit is 4 megapixels. "
                                        "Please upload a smaller image.")
    bomb = tmp_path / "bomb.png"  # a valid PNG: 9 MB of zero pixels compressed to a few kB
    bomb.write_bytes(png_bytes(3000, 3000, b"\0" * (3001 * 3000)))
    assert bomb.stat().st_size < 50_000
    assert refused(ui, notes, bomb) == notes.warnings[0]
    huge = tmp_path / "huge.png"  # beyond PIL's own bomb limit: refused as such, in plain words
    huge.write_bytes(png_bytes(100_000, 100_000))
    assert refused(ui, notes, huge) == ("The image has too many pixels to be processed. "
                                        "Please upload a smaller image.")
    assert decodes == []  # nothing was decoded


def test_a_file_over_the_size_cap_is_refused_before_decoding(ui, notes, tmp_path, decodes):
    big = tmp_path / "noise.png"  # a valid 1 MP PNG (under the pixel cap) of incompressible noise: ~3 MB
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(big)
    size = big.stat().st_size
    assert size > MAX_BYTES
    decodes.clear()
    assert refused(ui, notes, big) == (f"The image file is {size / 1e6:.1f} MB; the limit is 2.0 MB. "
                                       "Please upload a smaller image.")
    assert decodes == []


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_a_truncated_image_is_refused_and_the_previous_image_and_chat_are_kept(ui, notes, png, tmp_path, ext):
    whole = tmp_path / f"whole.{ext}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    sid = ui.open_tab()
    ui.set_image(png, sid)
    last(ui.send(png, "Hi?", sid, GREEDY))
    message = refused(ui, notes, cut, sid)
    assert message.startswith("The image file is damaged or incomplete")
    assert len(ui.manager.history(sid)) == 1  # the conversation about the previous image is kept
    _, _, box = last(ui.send(str(cut), "About the cut one?", sid, GREEDY))  # sending it: refused, text kept
    assert box == "About the cut one?" and notes.warnings[-1] == message and len(ui.manager.history(sid)) == 1


def test_random_bytes_and_empty_files_are_refused(ui, notes, tmp_path):
    noise = tmp_path / "upload.png"
    noise.write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert refused(ui, notes, noise).startswith("This file is not an image Cobra can read")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert refused(ui, notes, empty) == "The image file is empty. Please upload another image."
    assert refused(ui, notes, tmp_path / "gone.png") == "The image could not be read. Please upload it again."


# --- images accepted --------------------------------------------------------------------------------------------------
def test_a_1x1_image_is_accepted(ui, notes, seen, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    pixels = accepted(ui, notes, seen, path)
    assert pixels.shape == (1, 1, 3) and tuple(pixels[0, 0]) == (10, 200, 30)


def test_an_extreme_aspect_ratio_within_the_caps_is_accepted_as_it_is(ui, notes, seen, tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (4000, 1), (0, 0, 255)).save(path)
    pixels = accepted(ui, notes, seen, path)
    assert pixels.shape == (1, 4000, 3) and (pixels == (0, 0, 255)).all()
    tall = tmp_path / "tall.png"
    Image.new("RGB", (1, 4000), (0, 0, 255)).save(tall)
    seen.clear()
    assert accepted(ui, notes, seen, tall).shape == (4000, 1, 3)


def test_a_cmyk_jpeg_reaches_the_model_in_rgb_with_its_colours(ui, notes, seen, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    pixels = accepted(ui, notes, seen, path).astype(int)
    assert np.abs(pixels - (255, 0, 0)).max() <= 8


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(ui, notes, seen, tmp_path):
    path = tmp_path / "depth.png"
    levels = (np.arange(20 * 10).reshape(10, 20) * 300).astype(np.uint16)  # 0 .. 59700
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = accepted(ui, notes, seen, path).astype(float)
    expected = levels / 257.0
    assert np.abs(pixels[..., 0] - expected).max() <= 1  # a gradient, not a clipped white image
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_a_palette_png_with_transparency_is_composited_on_white(ui, notes, seen, tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    for x in range(5):
        image.putpixel((x, 0), 1)
    image.save(path, transparency=0)
    pixels = accepted(ui, notes, seen, path)
    assert (pixels[0, :5] == (0, 0, 255)).all()
    assert (pixels[1:] == 255).all()  # transparent: white, not the palette's black


def test_an_animated_gif_gives_its_first_frame(ui, notes, seen, tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (12, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    pixels = accepted(ui, notes, seen, path)
    assert pixels.shape == (8, 12, 3) and (pixels == (255, 0, 0)).all()


def test_exif_orientation_is_honoured_so_the_model_sees_the_image_upright(ui, notes, seen, tmp_path):
    upright = np.zeros((30, 20, 3), np.uint8)  # portrait 20x30: white top third, black below
    upright[:10] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # how a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    assert Image.open(path).size == (30, 20)
    pixels = accepted(ui, notes, seen, path).astype(int)
    assert pixels.shape == (30, 20, 3)
    assert pixels[:8].min() >= 240 and pixels[12:].max() <= 15  # upright: the white band is at the top


# --- text -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed", ["", None, "   ", " \n\t\r ", "\u3000\u2003"])
def test_empty_or_whitespace_only_messages_are_refused_and_kept(ui, notes, png, typed):
    sid = ui.open_tab()
    _, chat, box = last(ui.send(png, typed, sid, GREEDY))
    assert box == ("" if typed is None else typed) and chat == []
    assert notes.warnings == ["Please type a message first."] and ui.manager.history(sid) == []


def test_a_message_of_only_the_image_placeholder_is_refused_in_plain_words(ui, notes, png):
    sid = ui.open_tab()
    _, chat, box = last(ui.send(png, " <image> ", sid, GREEDY))
    assert box == " <image> " and chat == [] and notes.warnings == ["Please type a message."]


def test_a_message_over_the_context_limit_is_refused_and_nothing_is_lost(ui, notes, png):
    sid = ui.open_tab()
    last(ui.send(png, "A first question?", sid, GREEDY))
    before = ui.manager.history(sid)
    too_long = "elephant " * 1000
    _, chat, box = last(ui.send(png, too_long, sid, GREEDY))
    assert box == too_long  # the whole message goes back into the textbox
    assert ui.manager.history(sid) == before and [m["content"] for m in chat if m["role"] == "user"] == [
        "A first question?"]
    assert notes.warnings[-1].startswith("Your message is too long for the model (")
    assert "the limit is 200 tokens" in notes.warnings[-1]
    no_tracebacks(notes)
    _, chat, box = last(ui.send(png, "A short one?", sid, GREEDY))  # the session goes on
    assert box == "" and len(ui.manager.history(sid)) == 2


def test_control_characters_are_removed_and_the_rest_answered(ui, notes, png):
    sid = ui.open_tab()
    typed = "a\x00b\x07c\x1b[31md\x7fe\x85\u202ef\ufeffg\u200b?\r\nh\ti"
    cleaned = "abc[31mde\u202ef\ufeffg\u200b?\nh\ti"  # C0/C1 controls go; newline, tab and format characters stay
    _, chat, box = last(ui.send(png, typed, sid, GREEDY))
    assert box == "" and notes.warnings == [] and chat[0]["content"] == cleaned
    assert ui.manager.history(sid)[0][0] == cleaned and isinstance(ui.manager.history(sid)[0][1], str)
    expected = ui.manager.cobra.turns.user_turn_ids(cleaned, first=True)
    assert ui.manager.token_ids(sid)[: len(expected)] == expected  # what the model read
    _, chat, box = last(ui.send(png, "\x00\x07 \x1b", sid, GREEDY))  # nothing but controls: nothing to send
    assert box == "\x00\x07 \x1b" and notes.warnings == ["Please type a message first."]


def test_a_nul_inside_a_question_changes_neither_the_answer_nor_the_probe(app_model_dir, tmp_path):
    """Seen before the fix on the demo model: "Is there a blue\\x00 diamond in the image?" about scene 1 (which has
    one) got P(Yes) 0.19 instead of 0.999. The handler layer is what the page and the API call."""
    from cobra_app.pipeline import load
    from cobra_app.sessions import SessionManager
    from cobra_app.ui.handlers import ChatHandlers
    from tests.ui.support import EXAMPLES, RecordingNotifier

    ui = ChatHandlers(SessionManager(load(app_model_dir, device="cpu")), notifier=RecordingNotifier())
    image = str(EXAMPLES / "scene-1.png")
    clean, with_nul = "Is there a blue diamond in the image?", "Is there a blue\x00 diamond in the image?"
    answers = {}
    for question in (clean, with_nul):
        sid = ui.open_tab()
        _, probs, _ = ui.probe(image, question, sid)
        last(ui.send(image, question, sid, GREEDY))
        answers[question] = (probs, ui.manager.history(sid)[0][1], ui.manager.token_ids(sid))
    assert answers[with_nul] == answers[clean] and ui.notify.warnings == []
    if app_model_dir == DEMO_MODEL:
        assert answers[clean][0]["Yes"] > 0.5 and answers[clean][1].strip() == "Yes"


def test_unpaired_surrogates_are_replaced_and_pairs_joined_never_a_model_error(ui, notes, png):
    sid = ui.open_tab()
    _, _, box = last(ui.send(png, "\ud800 lonely \udfff", sid, GREEDY))
    assert box == "" and notes.warnings == []
    assert ui.manager.history(sid)[0][0] == "\ufffd lonely \ufffd"
    _, _, box = last(ui.send(png, "smile \ud83d\ude00", sid, GREEDY))  # a pair as JSON sends it
    assert box == "" and ui.manager.history(sid)[1][0] == "smile \U0001F600"
    last(ui.edit_turn(0, "edited \udbff", sid, GREEDY))
    assert ui.manager.history(sid)[0][0] == "edited \ufffd" and notes.warnings == []
    _, probs, _ = ui.probe(png, "Is it \ud800?", sid)
    assert probs is not None and abs(sum(probs.values()) - 1) < 1e-6 and notes.warnings == []


@pytest.mark.parametrize("typed", [f"Say {EOS} now", f"{EOS}", f"a{EOS}{EOS}b <|padding|>"])
def test_special_tokens_typed_as_text_stay_plain_text(ui, notes, png, typed):
    turns = ui.manager.cobra.turns
    eos, pad = turns.eos_id, turns.tokenizer.convert_tokens_to_ids("<|padding|>")
    sid = ui.open_tab()
    _, _, box = last(ui.send(png, typed, sid, GREEDY))
    assert box == "" and notes.warnings == [] and ui.manager.history(sid)[0][0] == typed
    expected = turns.user_turn_ids(typed, first=True)
    assert ui.manager.token_ids(sid)[: len(expected)] == expected  # what the model read
    template_only = turns.user_turn_ids("x", first=True)
    assert expected.count(eos) == template_only.count(eos)  # EOS only where the chat template puts it
    typed_ids = turns.text_ids(typed)
    assert eos not in typed_ids and pad not in typed_ids
    assert turns.tokenizer.decode(typed_ids) == typed  # the characters, as typed


# --- parameters ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def used_params(ui, monkeypatch):
    """The SamplingParams each reply was started with."""
    used = []
    manager = ui.manager
    for name in ("send", "regenerate"):
        real = getattr(manager, name)

        def recording(*args, _real=real, **kwargs):
            used.append(kwargs["params"] if "params" in kwargs else args[-1])
            return _real(*args, **kwargs)

        monkeypatch.setattr(manager, name, recording)
    return used


@pytest.mark.parametrize("values, field, value, note", [
    ((4, -1.0, 1.0, 0, 1.0, False), "temperature", 0.01, "Temperature -1 is out of range; using 0.01."),
    ((4, 0.0, 1.0, 0, 1.0, False), "temperature", 0.01, "Temperature 0 is out of range; using 0.01."),
    ((4, 1.0, 1.5, 0, 1.0, False), "top_p", 1.0, "Top-p 1.5 is out of range; using 1."),
    ((4, 1.0, 0.0, 0, 1.0, False), "top_p", 0.01, "Top-p 0 is out of range; using 0.01."),
    ((4, 1.0, 1.0, -5, 1.0, False), "top_k", 0, "Top-k -5 is out of range; using 0."),
    ((4, 1.0, 1.0, 10**30, 1.0, False), "top_k", 1000, "Top-k 1e+30 is out of range; using 1000."),
    ((4, 1.0, 1.0, 0, -2.0, True), "repetition_penalty", 0.5, "Repetition penalty -2 is out of range; using 0.5."),
    ((10**12, 1.0, 1.0, 0, 1.0, True), "max_new_tokens", 512, "Max new tokens 1e+12 is out of range; using 512."),
    ((-7, 1.0, 1.0, 0, 1.0, True), "max_new_tokens", 1, "Max new tokens -7 is out of range; using 1."),
    (("3", "-1", "2", "-1", "1", "true"), "temperature", 0.01, "Temperature -1 is out of range; using 0.01."),
])
def test_out_of_range_parameters_are_clamped_with_a_note(ui, notes, png, used_params, values, field, value, note):
    sid = ui.open_tab()
    _, _, box = last(ui.send(png, "Describe it.", sid, ParamValues(*values)))
    assert box == "" and len(ui.manager.history(sid)) == 1 and ui.manager.history(sid)[0][1] is not None
    assert note in notes.infos
    assert getattr(used_params[-1], field) == value
    no_tracebacks(notes)


@pytest.mark.parametrize("field, name", [("max_new_tokens", "Max new tokens"), ("temperature", "Temperature"),
                                         ("top_p", "Top-p"), ("top_k", "Top-k"),
                                         ("repetition_penalty", "Repetition penalty")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 10**400, "1e999", "warm", None, [], {}])
def test_non_numbers_and_non_finite_parameters_are_refused_and_the_message_kept(ui, notes, png, field, name, bad):
    sid = ui.open_tab()
    _, chat, box = last(ui.send(png, "Keep me", sid, dataclasses.replace(GREEDY, **{field: bad})))
    assert box == "Keep me" and chat == [] and ui.manager.history(sid) == []
    assert len(notes.warnings) == 1 and notes.warnings[0].startswith(f"{name} must be a")
    no_tracebacks(notes)


@pytest.mark.parametrize("bad", ["maybe", None, 2, 0.5, []])
def test_a_greedy_that_is_not_true_or_false_is_refused_and_the_message_kept(ui, notes, png, bad):
    """It was once taken silently as "sample" (bool("maybe") is True, any other string False)."""
    sid = ui.open_tab()
    _, chat, box = last(ui.send(png, "Keep me", sid, ParamValues(4, greedy=bad)))
    assert box == "Keep me" and chat == [] and ui.manager.history(sid) == []
    assert notes.warnings == [f"Greedy must be true or false, not {str(bad)[:20]!r}."]


def test_bad_parameters_on_regenerate_and_edit_are_notices_and_the_chat_is_kept(ui, notes, png):
    sid = ui.open_tab()
    last(ui.send(png, "First?", sid, GREEDY))
    before = ui.manager.history(sid)
    last(ui.regenerate(sid, ParamValues(4, math.nan, greedy=False)))
    assert notes.warnings[-1] == "Temperature must be a finite number." and ui.manager.history(sid) == before
    last(ui.edit_turn(0, "Edited?", sid, ParamValues(4, top_p="high", greedy=False)))
    assert notes.warnings[-1] == "Top-p must be a number, not 'high'." and ui.manager.history(sid) == before
    last(ui.regenerate(sid, ParamValues(4, greedy="maybe")))
    assert notes.warnings[-1] == "Greedy must be true or false, not 'maybe'." and ui.manager.history(sid) == before
    for turn in (math.nan, 10**400, "x", 5, -1):  # the message number itself, through the API
        last(ui.edit_turn(turn, "Edited?", sid, GREEDY))
        assert ui.manager.history(sid) == before
    no_tracebacks(notes)
