"""Prompt builders reproduce the release's strings exactly (reference section 6)."""

import pytest

from cobra_app.prompting import EOS, PROMPT_BUILDERS, clean_message, clean_text, get_prompt_builder

THREE_TURNS = [
    ("<image>\n  What is in the image?  ", "  A cat on a sofa. "),
    ("Is it sleeping?", ""),  # an empty reply is written as a single space
    ("What colour is the sofa?", None),  # the turn being generated
]

EXPECTED = {
    "zephyr": (
        "<|user|>\nWhat is in the image?<|endoftext|>\n<|assistant|>\n"
        "A cat on a sofa.<|endoftext|>"
        "\n<|user|>\nIs it sleeping?<|endoftext|>\n<|assistant|>\n"
        " <|endoftext|>"
        "\n<|user|>\nWhat colour is the sofa?<|endoftext|>\n<|assistant|>\n"
    ),
    "mamba": (
        "In: What is in the image?\nOut: "
        "A cat on a sofa.<|endoftext|>"
        "\nIn: Is it sleeping?\nOut: "
        " <|endoftext|>"
        "\nIn: What colour is the sofa?\nOut: "
    ),
}


def test_registry_has_release_formats():
    assert set(PROMPT_BUILDERS) == {"zephyr", "mamba"}
    assert all(get_prompt_builder(name).name == name for name in PROMPT_BUILDERS)
    with pytest.raises(ValueError, match="unknown prompt format 'llama'"):
        get_prompt_builder("llama")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_three_turn_conversation_matches_reference(name):
    assert get_prompt_builder(name).conversation_text(THREE_TURNS) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conversation_is_the_concatenation_of_turns(name):
    b = get_prompt_builder(name)
    (m1, r1), (m2, r2), (m3, _) = THREE_TURNS
    turns = [b.user_text(m1, True), b.assistant_text(r1), b.user_text(m2, False), b.assistant_text(r2)]
    assert "".join(turns) + b.user_text(m3, False) == EXPECTED[name]


def test_zephyr_turn_strings():
    b = get_prompt_builder("zephyr")
    assert b.user_text("Hi", first=True) == "<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
    assert b.user_text("Hi", first=False) == "\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
    assert b.assistant_text("Hello!") == "Hello!<|endoftext|>"


def test_mamba_turn_strings():
    b = get_prompt_builder("mamba")
    assert b.user_text("Hi", first=True) == "In: Hi\nOut: "
    assert b.user_text("Hi", first=False) == "\nIn: Hi\nOut: "
    assert b.assistant_text("Hello!") == "Hello!<|endoftext|>"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_messages_are_cleaned(name):
    b = get_prompt_builder(name)
    assert b.user_text(" <image>\n Hi <image> \n", True) == b.user_text("Hi", True)
    assert b.assistant_text("  \n ") == b.assistant_text("") == " " + EOS
    assert b.assistant_text(" ok <image>") == "ok" + EOS


def test_control_characters_are_removed_except_newline_and_tab():
    controls = "".join(map(chr, [*range(0x00, 0x20), *range(0x7F, 0xA0)]))  # C0, DEL and C1
    assert clean_text(f"a{controls}b") == "a\t\n\nb"  # tab and newline stay; CR (U+000D) is a line end
    assert clean_text("one\r\ntwo\rthree") == "one\ntwo\nthree"
    assert clean_text("Is there a blue\x00 diamond?\x1b[31m") == "Is there a blue diamond?[31m"
    kept = "zero\u200bwidth \ufeffBOM \u202ebidi\u202c nbsp\xa0 é 中文 😀"  # not controls: text as typed
    assert clean_text(kept) == kept
    assert clean_text("\ud800 lonely \udfff, a pair \ud83d\ude00") == "\ufffd lonely \ufffd, a pair \U0001F600"
    assert clean_message(" \x00<image>\x07 Hi\x00 \x7f") == "Hi"
    assert clean_message("<ima\x00ge>Hi") == "Hi"  # removed before the release's cleaning


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_turn_is_cleaned_of_control_characters(name):
    b = get_prompt_builder(name)
    for first in (True, False):
        assert b.user_parts("Is there a blue\x00 diamond?", first) == b.user_parts("Is there a blue diamond?", first)
    assert b.assistant_text("Yes\x00.\x85") == b.assistant_text("Yes.")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_message_text_is_inserted_verbatim(name):
    """Braces and control-token look-alikes in a message are not template syntax."""
    b = get_prompt_builder(name)
    msg = "{msg} {0} {} <|endoftext|> <|user|>"
    assert b.user_text(msg, True) == b.user_text("X", True).replace("X", msg)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parts_join_with_eos_to_the_text(name):
    b = get_prompt_builder(name)
    msg = "say <|endoftext|> please"
    for first in (True, False):
        assert EOS.join(b.user_parts(msg, first)) == b.user_text(msg, first)
    # the message's own EOS stays inside one plain-text part
    assert sum(msg in part for part in b.user_parts(msg, True)) == 1
    assert b.assistant_parts(msg) == [msg, ""]


def test_missing_reply_only_allowed_last():
    with pytest.raises(ValueError, match="exchange 0 has no reply"):
        get_prompt_builder("zephyr").conversation_text([("a", None), ("b", None)])
