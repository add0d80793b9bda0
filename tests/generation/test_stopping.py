"""Stop strings on streamed text: the emitted text is the reply cut before the first stop string, and nothing emitted
is ever taken back, whatever the deltas."""

import random

import pytest

from cobra_app.generation import StopStrings


def cut_at_first_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The obviously correct answer, character by character as generation would go: the text before the first stop
    string to be complete (of two completed by the same character, the longer), and that stop string."""
    for end in range(len(text) + 1):
        done = sorted((s for s in stops if text[:end].endswith(s)), key=len, reverse=True)
        if done:
            return text[: end - len(done[0])], done[0]
    return text, None


def stream(stops: list[str], deltas: list[str]) -> tuple[list[str], str | None]:
    """Push every delta (then flush); -> (what was emitted after each push, then the flush; the matched stop)."""
    matcher = StopStrings(stops)
    emitted = [matcher.push(d) for d in deltas]
    emitted.append(matcher.flush())
    return emitted, matcher.matched


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 6)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_random_streams_emit_the_text_cut_before_the_first_stop():
    rng = random.Random(0)
    alphabet = "ab\n "
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
        deltas = random_split(text, rng)
        emitted, matched = stream(stops, deltas)
        assert ("".join(emitted), matched) == cut_at_first_stop(text, stops), (stops, deltas)


def test_text_that_may_start_a_stop_string_is_held_until_decided():
    matcher = StopStrings(["</answer>"])
    assert matcher.push("It is red </") == "It is red "
    assert matcher.push("ans") == ""
    assert matcher.push("wer") == ""
    assert matcher.push("!") == "</answer!"  # not the stop string after all: released at once
    assert matcher.push(" Done </answer> more") == " Done "
    assert matcher.matched == "</answer>"
    assert matcher.push("anything") == "" and matcher.flush() == ""


def test_a_stop_string_inside_one_delta_and_across_deltas():
    assert stream(["\n\n"], ["Yes.\n\nNo"]) == (["Yes.", ""], "\n\n")
    assert stream(["\n\n"], ["Yes.\n", "\nNo"]) == (["Yes.", "", ""], "\n\n")


def test_the_stop_string_completed_first_wins():
    assert stream(["cat", "a"], ["the cat"]) == (["the c", ""], "a")
    assert stream(["a \n\n", "\n"], ["a ", "\n", "\n"]) == (["", "a ", "", ""], "\n")
    assert stream(["at", "cat"], ["the cat"]) == (["the ", ""], "cat")


def test_held_text_is_released_when_the_reply_ends_otherwise():
    assert stream(["STOP"], ["go ST"]) == (["go ", "ST"], None)


@pytest.mark.parametrize("stops", [[], [""], ["ok", ""], [None]])
def test_empty_stop_strings_are_refused(stops):
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings(stops)
