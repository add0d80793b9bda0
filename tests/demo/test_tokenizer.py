"""Spec: the demo tokenizer keeps the release's special tokens and prompt conventions, and is reproducible."""

import itertools

import pytest
from transformers import AutoTokenizer

from cobra_app.demo.conversations import CLOSED_SETS, NUMBERS, iter_training_examples
from cobra_app.demo.tokenizer import OBJECT_NAMES, OBJECT_PLURALS, RELATION_WORDS, build_demo_tokenizer, corpus

TEXTS = (
    "<|user|>\nIs the red circle to the left of the blue square?<|endoftext|>\n<|assistant|>\n",
    "Yes<|endoftext|>",
    "\n<|user|>\nHello! Could you describe this photograph, please?<|endoftext|>\n<|assistant|>\n",
    "Café, naïve, 中文, emoji 🐍, tabs\tand  double spaces, code: {'a': [1, 2]}",
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


def test_special_tokens_match_the_release(tokenizer):
    assert len(tokenizer) == 1280
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|padding|>"]) == [0, 1]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert "<|user|>" not in tokenizer.all_special_tokens and "<|assistant|>" not in tokenizer.all_special_tokens
    assert tokenizer("Yes<|endoftext|>")["input_ids"] == [tokenizer.convert_tokens_to_ids("Yes"), 0]  # no BOS


def test_closed_set_answers_are_single_tokens(tokenizer):
    for word in itertools.chain(*CLOSED_SETS):
        (token_id,) = tokenizer(word)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(token_id) == word
        # the answer follows the assistant marker, which ends with its own token, so the word is never merged into it
        prompt = tokenizer("\n<|assistant|>\n")["input_ids"]
        assert tokenizer("\n<|assistant|>\n" + word)["input_ids"] == prompt + [token_id]


def test_zephyr_markers_are_ordinary_text(tokenizer):
    ids = tokenizer("<|user|>\n")["input_ids"]
    assert len(ids) > 1 and 0 not in ids and 1 not in ids
    assert tokenizer.decode(ids) == "<|user|>\n"


def test_roundtrip_of_templates_and_free_text(tokenizer):
    texts = [qa.question for _, conversation in itertools.islice(iter_training_examples(9), 200) for qa in conversation]
    for text in [*texts, *TEXTS]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.tokenize("There are two objects: a red circle and an orange cross.") == [
        "There", "Ġare", "Ġtwo", "Ġobjects", ":", "Ġa", "ĠredĠcircle", "Ġand", "Ġan", "ĠorangeĠcross", "."]


def test_every_object_name_and_relation_phrase_is_one_token_and_other_spellings_still_roundtrip(tokenizer):
    for name in (*OBJECT_NAMES, *OBJECT_PLURALS, *RELATION_WORDS):
        assert len(tokenizer(" " + name)["input_ids"]) == 1, name
    assert RELATION_WORDS["under the"] == "below" and RELATION_WORDS["to the left side of the"] == "left of"
    for text in ("Is the red  circle here?", "a redcircle", "a square that is red", "Red Circle", "shred circle",
                 "moreover the square"):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text and len(ids) > 1
    assert "overĠthe" not in tokenizer.tokenize(" moreover the")  # a phrase is never cut out of a longer word
    assert "ĠoverĠthe" in tokenizer.tokenize(" over the")


def answers(texts):
    """The assistant replies of a corpus: each text that follows an assistant marker."""
    texts = list(texts)
    return [reply for marker, reply in zip(texts, texts[1:]) if marker == "\n<|assistant|>\n"]


def test_the_corpus_is_drawn_with_the_training_runs_question_mix():
    counts = answers(corpus({"count": 1.0}))
    assert counts and {reply.rstrip(".").lower() for reply in counts} <= set(NUMBERS)
    assert {"Yes", "No", "True", "False"} <= set(answers(corpus()))


def test_build_is_deterministic(tokenizer):
    assert build_demo_tokenizer().backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_save_and_reload_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (0, 0)
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
