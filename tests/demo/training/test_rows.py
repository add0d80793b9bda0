"""Spec: training rows are the inference turn format, with loss on the assistant tokens only; follow-ups keep their
context."""

import numpy as np

from cobra_app.demo.conversations import QA
from cobra_app.demo.training.rows import IGNORE, encode_turns, labels_for, rows_for_conversation

TWO_TURNS = [QA("What colour is the circle?", "Red.", "colour"),
             QA("And the square?", "Blue.", "colour", follow_up=True)]


def test_rows_use_the_inference_turn_format(tokens):
    ids, assistant = encode_turns(TWO_TURNS, tokens)
    expected = (tokens.user_turn_ids(TWO_TURNS[0].question, first=True) + tokens.assistant_turn_ids("Red.")
                + tokens.user_turn_ids(TWO_TURNS[1].question, first=False) + tokens.assistant_turn_ids("Blue."))
    assert ids == expected
    assert tokens.tokenizer.decode(ids) == (
        "<|user|>\nWhat colour is the circle?<|endoftext|>\n<|assistant|>\nRed.<|endoftext|>"
        "\n<|user|>\nAnd the square?<|endoftext|>\n<|assistant|>\nBlue.<|endoftext|>"
    )
    assert len(assistant) == len(ids)


def test_loss_mask_covers_exactly_the_assistant_tokens_and_their_eos(tokens):
    ids, assistant = encode_turns(TWO_TURNS, tokens)
    labels = labels_for(ids, assistant)
    targets = [t + 1 for t, label in enumerate(labels) if label != IGNORE]  # positions whose token gets a loss
    assert [ids[t] for t in targets] == tokens.assistant_turn_ids("Red.") + tokens.assistant_turn_ids("Blue.")
    assert tokens.tokenizer.decode([ids[t] for t in targets]) == "Red.<|endoftext|>Blue.<|endoftext|>"
    assert all(labels[t - 1] == ids[t] for t in targets)
    # nothing of the user turns (their EOS and the assistant header included) is a target
    user_positions = {t for t, a in enumerate(assistant) if not a}
    assert not user_positions & set(targets)
    assert labels[-1] == IGNORE


def test_rows_keep_follow_ups_in_context():
    rng = np.random.default_rng(0)
    assert rows_for_conversation(TWO_TURNS, rng, multi_turn_prob=1.0) == [TWO_TURNS]
    assert rows_for_conversation(TWO_TURNS, rng, multi_turn_prob=0.0) == [TWO_TURNS[:1]]
