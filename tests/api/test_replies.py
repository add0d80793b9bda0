"""Spec: the pieces of an answer - a streamed reply's deltas join to the reply `.strip()`ped (what the release stores
and a client resends), and log-probability tokens carry exactly the bytes the reply is made of."""

import random

from cobra_app.api.replies import StrippedText, TokenTexts
from tests.helpers import make_test_tokenizer


def test_streamed_deltas_join_to_the_stripped_text_and_are_sent_as_early_as_possible():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(" \n\tab\u3000") for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 5))))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        stripped = StrippedText()
        emitted = [stripped.push(d) for d in deltas]
        assert "".join(emitted) == text.strip(), deltas
        sent = ""
        for seen, out in zip(range(1, len(deltas) + 1), emitted):  # everything the text so far confirms is out
            sent += out
            assert sent == "".join(deltas[:seen]).strip(), deltas


def test_token_bytes_make_up_the_text_even_where_tokens_split_characters():
    tokenizer = make_test_tokenizer()
    texts = TokenTexts(tokenizer)
    text = "a crab 🦀 and 中文 with   spaces"
    ids = tokenizer.encode(text)
    pieces = [texts.bytes_of(i) for i in ids]
    assert b"".join(pieces).decode() == text
    assert any(not _is_utf8(p) for p in pieces)  # the crab is split over tokens: some pieces are partial
    partial = next(i for i, p in zip(ids, pieces) if not _is_utf8(p))
    assert texts.top(partial, -1.0).token.endswith("\ufffd") and texts.top(partial, -1.0).bytes == list(
        texts.bytes_of(partial))
    assert texts.bytes_of(tokenizer.eos_token_id) == b"<|endoftext|>" and tokenizer.eos_token_id in texts.special


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False
