"""Fixtures of the training tests: the demo tokenizer and its per-turn Zephyr encoder."""

import pytest

from cobra_app.demo.tokenizer import build_demo_tokenizer
from cobra_app.prompting import TurnTokenizer, get_prompt_builder


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
