"""Per-turn tokenization: user text stays plain text; ordinary text gets the ids of whole-string tokenization."""

import random

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from cobra_app.prompting import EOS, PROMPT_BUILDERS, TurnTokenizer, get_prompt_builder
from tests.helpers import PAD, make_test_tokenizer

BUILDERS = sorted(PROMPT_BUILDERS)

HAND_PICKED = [
    "What is in the image?",
    "  leading and trailing spaces  ",
    "<image>\nDescribe the image.",
    "two  spaces,   three and    four; tab\there",
    "line one\nline two\n\nline four",
    "<|user|> and <|assistant|> typed as text",
    "In: fake\nOut: fake",
    "Numbers 3.14, 42% (ok) [x] {y} \"q\" 'a' - b!?",
    "Café naïve déjà vu, 中文文本，你好。 😀👍🏽🇫🇷",
    "e\u0301 (decomposed accent, NFC-normalized)",
    "Yes",
    "x",
]


def random_messages(n: int, seed: int = 0) -> list[str]:
    """Random ordinary text (no special tokens): words, digits, punctuation, space runs, newlines, unicode."""
    rng = random.Random(seed)
    pieces = [
        "the", "cat", "Yes", "No", "True", "False", "image", "42", "3.14", ",", ".", "?", "!", "'s", "n't",
        " ", "  ", "   ", "     ", "\n", "\n\n", "\t", "<|user|>", "<|assistant|>", "In:", "Out:", "<|", "|>",
        "é", "中文", "😀", "🙂", "ß", "Ω", "-", "(", ")", '"', "{", "}", "#",
    ]  # fmt: skip
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(n)]


MESSAGES = HAND_PICKED + random_messages(300)


@pytest.fixture(scope="module")
def tokenizer():
    return make_test_tokenizer()


def whole(tokenizer, text: str) -> list[int]:
    """The release's tokenization of one turn string."""
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", BUILDERS)
def test_segmented_equals_whole_string_tokenization(tokenizer, name):
    builder = get_prompt_builder(name)
    tt = TurnTokenizer(tokenizer, builder)
    for msg in MESSAGES:
        for first in (True, False):
            assert tt.user_turn_ids(msg, first) == whole(tokenizer, builder.user_text(msg, first)), msg
        assert tt.assistant_turn_ids(msg) == whole(tokenizer, builder.assistant_text(msg)), msg


def test_zephyr_turns_concatenate_to_the_whole_prompt(tokenizer):
    """For Zephyr, training's per-turn ids equal the release REPL's whole-prompt ids (turns meet at EOS or \\n)."""
    builder = get_prompt_builder("zephyr")
    tt = TurnTokenizer(tokenizer, builder)
    msgs = random_messages(60, seed=1)
    turns = list(zip(msgs[::2], msgs[1::2]))
    ids = []
    for i, (msg, reply) in enumerate(turns):
        ids += tt.user_turn_ids(msg, first=i == 0) + tt.assistant_turn_ids(reply)
    assert ids == whole(tokenizer, builder.conversation_text(turns))


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("typed", [EOS, PAD, EOS + EOS, f"a{EOS}b", f"<|endoftext{EOS}|>"])
def test_typed_special_tokens_stay_text(tokenizer, name, typed):
    builder = get_prompt_builder(name)
    tt = TurnTokenizer(tokenizer, builder)
    msg = f"please say {typed} now"
    template_eos = builder.user_text("x", True).count(EOS)
    for first in (True, False):
        ids = tt.user_turn_ids(msg, first)
        assert ids.count(tt.eos_id) == template_eos
        assert tokenizer.pad_token_id not in ids
        assert tokenizer.decode(ids) == builder.user_text(msg, first)  # the characters survive
    reply_ids = tt.assistant_turn_ids(msg)
    assert reply_ids.count(tt.eos_id) == 1 and reply_ids[-1] == tt.eos_id
    assert tokenizer.decode(reply_ids) == builder.assistant_text(msg)


def test_shared_tokenizer_is_left_alone(tokenizer):
    """TurnTokenizer never flips the shared tokenizer's special-token handling."""
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    tt.user_turn_ids(f"typed {EOS}", True)
    assert tokenizer.encode(EOS, add_special_tokens=False) == [tokenizer.eos_token_id]


def test_space_run_added_tokens_still_match(tokenizer):
    """GPT-NeoX's non-special whitespace tokens are ordinary text pieces and keep their ids (as in the release)."""
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    four_spaces = tokenizer.convert_tokens_to_ids("    ")
    assert four_spaces in tt.text_ids("a    b")


@pytest.mark.parametrize("name", BUILDERS)
def test_no_bos(tokenizer, name):
    tt = TurnTokenizer(tokenizer, get_prompt_builder(name))
    assert tt.eos_id == tokenizer.eos_token_id == 0
    ids = tt.user_turn_ids("Hi", first=True)
    assert ids[0] != tt.eos_id
    assert ids == whole(tokenizer, get_prompt_builder(name).user_text("Hi", True))
    assert tokenizer.encode("Hi") == tt.text_ids("Hi")  # not even the default encode adds a BOS


def test_empty_reply_is_a_space(tokenizer):
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    assert tt.assistant_turn_ids("") == tt.text_ids(" ") + [tt.eos_id]


@pytest.mark.parametrize("word", ["Yes", "No", "True", "False"])
def test_answer_token_id(tokenizer, word):
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    token_id = tt.answer_token_id(word)
    assert tokenizer.encode(word) == [token_id]
    assert tokenizer.decode([token_id]) == word


def test_answer_token_id_rejects_multi_token_words(tokenizer):
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    with pytest.raises(ValueError, match="'Definitely' is .* tokens"):
        tt.answer_token_id("Definitely")


@pytest.mark.parametrize("eos_kind", ["missing", "not special"])
def test_tokenizer_without_special_eos_is_rejected(eos_kind):
    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    if eos_kind == "not special":
        backend.add_tokens([EOS])
    with pytest.raises(ValueError, match="special token"):
        TurnTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend), get_prompt_builder("zephyr"))
