"""Spec: the sampling parameters as the page or an API client sends them are checked into SamplingParams: numbers out
of range are clamped with a note, anything else is refused in plain words."""

import pytest

from cobra_app.ui.params import BadParams, ParamLimits, ParamValues, make_params


def test_the_values_are_named_as_the_endpoints_parameters_and_default_to_the_pages_settings():
    assert ParamValues.names() == ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "greedy"]
    params, notes = make_params(ParamValues())
    assert (params.max_new_tokens, params.greedy, notes) == (128, True, [])


def test_make_params_clamps_into_range_and_refuses_non_numbers():
    params, notes = make_params(ParamValues(10_000, -1, 1.5, -3, 1.2, False), ParamLimits(max_new_tokens=300))
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k) == (300, 0.01, 1.0, 0)
    assert params.repetition_penalty == 1.2 and params.greedy is False
    assert len(notes) == 4 and "Max new tokens 10000 is out of range; using 300." in notes
    params, notes = make_params(ParamValues("16", "0.7", 0.9, 40.0, 1, "true"))
    assert (params.max_new_tokens, params.temperature, params.top_k, params.greedy, notes) == (16, 0.7, 40, True, [])
    for bad in (float("nan"), "hot", None, float("inf")):
        with pytest.raises(BadParams, match="Temperature must be"):
            make_params(ParamValues(8, bad))


@pytest.mark.parametrize("sent, greedy", [(True, True), (False, False), (1, True), (0, False), ("true", True),
                                          (" False ", False), ("yes", True), ("off", False), ("1", True)])
def test_greedy_reads_booleans_and_their_usual_spellings(sent, greedy):
    assert make_params(ParamValues(greedy=sent))[0].greedy is greedy


@pytest.mark.parametrize("sent", ["maybe", "", None, 2, -1, 0.5, float("nan"), [], {}])
def test_a_greedy_that_is_not_true_or_false_is_refused(sent):
    with pytest.raises(BadParams) as refused:
        make_params(ParamValues(greedy=sent))
    assert refused.value.user_message == f"Greedy must be true or false, not {str(sent)[:20]!r}."
