"""TextStreamer: deltas never end inside a UTF-8 character and join to the full decoding."""

import random

import pytest

from cobra_app.generation import TextStreamer
from tests.helpers import EOS, make_test_tokenizer

REPLACEMENT = "\ufffd"

TEXTS = [
    "Hello, world!",
    "ok 😀 x",  # a 4-byte emoji outside the training corpus: one byte per token
    "漢字 and 中文文本，你好。",  # 3-byte CJK, partly merged across character boundaries
    "👍🏽 👨‍👩‍👧 🇫🇷 end",  # modifiers, ZWJ sequences, flags
    "Café déjà vu — naïve",
    "😀😀😀",
    "☃",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_test_tokenizer()


def stream(tokenizer, ids: list[int]) -> tuple[list[str], str]:
    """Feed ids one by one -> (deltas of put, text of flush)."""
    streamer = TextStreamer(tokenizer)
    return [streamer.put(i) for i in ids], streamer.flush()


def test_texts_really_split_characters_across_tokens(tokenizer):
    """Guard: the cases below only test something if some tokens hold part of a character."""
    partial = [i for text in TEXTS for i in tokenizer.encode(text) if REPLACEMENT in tokenizer.decode([i])]
    assert len(partial) > 5


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_join_to_the_text(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, rest = stream(tokenizer, ids)
    assert all(REPLACEMENT not in d for d in deltas)
    assert rest == ""
    assert "".join(deltas) == text == tokenizer.decode(ids, skip_special_tokens=True)


def test_text_appears_as_soon_as_a_character_is_complete(tokenizer):
    ids = tokenizer.encode("ok 😀 x")
    deltas, _ = stream(tokenizer, ids)
    emoji_end = next(k for k in range(len(ids)) if tokenizer.decode(ids[: k + 1]).endswith("😀"))
    assert "😀" in "".join(deltas[: emoji_end + 1])
    assert "".join(deltas[:emoji_end]) == "ok"  # the space and the partial emoji were held back together


def test_special_tokens_decode_to_nothing(tokenizer):
    ids = tokenizer.encode("Hi") + [tokenizer.eos_token_id] + tokenizer.encode(" there") + [tokenizer.eos_token_id]
    deltas, rest = stream(tokenizer, ids)
    assert deltas[len(tokenizer.encode("Hi"))] == ""
    assert "".join(deltas) + rest == "Hi there" == tokenizer.decode(ids, skip_special_tokens=True)
    assert EOS not in "".join(deltas)


def test_flush_releases_an_incomplete_character(tokenizer):
    ids = tokenizer.encode("ok 😀")[:-1]  # cut inside the emoji
    deltas, rest = stream(tokenizer, ids)
    assert "".join(deltas) == "ok"
    assert rest.endswith(REPLACEMENT)
    assert "".join(deltas) + rest == tokenizer.decode(ids, skip_special_tokens=True)


def test_random_token_sequences_join_to_decode(tokenizer):
    """Any id sequence (invalid UTF-8 included): deltas never end in U+FFFD; deltas + flush == decode."""
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 30))]
        deltas, rest = stream(tokenizer, ids)
        assert not any(d.endswith(REPLACEMENT) for d in deltas), ids
        assert "".join(deltas) + rest == tokenizer.decode(ids, skip_special_tokens=True), ids


def test_streamer_is_single_use(tokenizer):
    streamer = TextStreamer(tokenizer)
    streamer.put(tokenizer.encode("a")[0])
    assert streamer.flush() == "" and streamer.text == "a"
    with pytest.raises(RuntimeError, match="flushed"):
        streamer.put(tokenizer.encode("b")[0])
