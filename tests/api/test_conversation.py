"""Spec: what a chat-completions request becomes (image, turns, sampling settings), and every refusal, with its
reason and the parameter it names, before any model work."""

import pytest

from cobra_app.api.conversation import ApiLimits, read_request
from cobra_app.api.errors import ApiError
from cobra_app.api.schemas import ChatCompletionRequest
from cobra_app.generation import SamplingParams
from cobra_app.images import ImageRejected
from tests.api.support import assistant, user

MODEL = "tiny-cobra"
IMAGE = object()  # what the limits' image reader returns for a good URL


def read_image(url: str):
    if url == "data:good":
        return IMAGE
    raise ImageRejected(f"refused {url}")


LIMITS = ApiLimits(max_new_tokens=64, read_image=read_image)


def read(messages, **fields):
    return read_request(ChatCompletionRequest(model=MODEL, messages=messages, **fields), LIMITS)


def refusal(messages, **fields) -> ApiError:
    with pytest.raises(ApiError) as info:
        read(messages, **fields)
    assert info.value.status == 400
    return info.value


def test_a_conversation_with_its_image_becomes_turns_and_the_image():
    chat = read([{"role": "system", "content": ""}, user("What is it?", "data:good"), assistant("A cube."),
                 user("Which colour?")])
    assert chat.image is IMAGE
    assert chat.messages == (("user", "What is it?"), ("assistant", "A cube."), ("user", "Which colour?"))
    assert chat.params == SamplingParams(max_new_tokens=64) and chat.top_logprobs is None


def test_text_parts_are_joined_by_newlines_wherever_the_image_is():
    parts = [{"type": "text", "text": "First line."}, {"type": "image_url", "image_url": {"url": "data:good"}},
             {"type": "text", "text": "Second line."}]
    chat = read([{"role": "user", "content": parts}])
    assert chat.messages == (("user", "First line.\nSecond line."),) and chat.image is IMAGE


def test_an_assistant_message_may_be_empty_or_null():
    chat = read([user("Hi"), {"role": "assistant", "content": None}, user("Again")])
    assert chat.messages[1] == ("assistant", "")


@pytest.mark.parametrize("fields, expected", [
    ({}, SamplingParams(max_new_tokens=64)),  # greedy: the release's default
    ({"temperature": 0, "seed": 3}, SamplingParams(max_new_tokens=64, seed=3)),
    ({"top_p": 0}, SamplingParams(max_new_tokens=64)),
    ({"temperature": 0.7, "seed": 5, "max_tokens": 9},
     SamplingParams(max_new_tokens=9, greedy=False, temperature=0.7, seed=5)),
    ({"top_p": 0.9, "max_completion_tokens": 7, "max_tokens": 30},
     SamplingParams(max_new_tokens=7, greedy=False, top_p=0.9)),
    ({"top_k": 5, "repetition_penalty": 1.3, "seed": -1},
     SamplingParams(max_new_tokens=64, greedy=False, top_k=5, repetition_penalty=1.3, seed=2**64 - 1)),
    ({"stop": "\n"}, SamplingParams(max_new_tokens=64, stop=("\n",))),
    ({"stop": ["a", "bc"]}, SamplingParams(max_new_tokens=64, stop=("a", "bc"))),
])  # fmt: skip
def test_sampling_settings(fields, expected):
    assert read([user("Hi")], **fields).params == expected


def test_logprobs_ask_for_the_top_alternatives():
    assert read([user("Hi")], logprobs=True).top_logprobs == 0
    assert read([user("Hi")], logprobs=True, top_logprobs=3).top_logprobs == 3
    assert read([user("Hi")], logprobs=False).top_logprobs is None
    assert refusal([user("Hi")], top_logprobs=3).param == "top_logprobs"


@pytest.mark.parametrize("messages, param, words", [
    ([{"role": "robot", "content": "Hi"}], "messages[0].role", "Unknown role 'robot'"),
    ([{"role": "tool", "content": "42", "tool_call_id": "x"}, user("Hi")], "messages[0]", "tools"),
    ([user("Hi"), {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}, user("Hi")], "messages[1]",
     "tools"),
    ([{"role": "system", "content": "Be brief."}, user("Hi")], "messages[0]", "no system prompt"),
    ([{"role": "developer", "content": "Be brief."}, user("Hi")], "messages[0]", "no system prompt"),
    ([user("   ")], "messages[0].content", "has no text"),
    ([user("<image>", "data:good")], "messages[0].content", "an image alone is not a message"),
    ([user("Hi"), assistant("Yes."), user("")], "messages[2].content", "has no text"),
    ([user("Hi"), user("Again")], "messages", "alternate"),
    ([user("Hi"), assistant("Yes.")], "messages", "ending with a user message"),
    ([assistant("Hello"), user("Hi")], "messages", "starting and ending with a user message"),
    ([{"role": "system", "content": ""}], "messages", "got none"),
    ([user("Hi"), assistant("Yes."), user("And this?", "data:good")], "messages[2].content[0]", "one image"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:good"}},
                                   {"type": "image_url", "image_url": {"url": "data:good"}},
                                   {"type": "text", "text": "Compare."}]}], "messages[0].content[1]", "one image"),
    ([user("Hi"), {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:good"}}]},
      user("Hi")], "messages[1].content[0]", "one image"),
    ([user("What is it?", "data:bad")], "messages[0].content[0].image_url", "refused data:bad"),
])  # fmt: skip
def test_messages_cobra_cannot_read_are_refused_saying_why(messages, param, words):
    error = refusal(messages)
    assert error.param == param and words in error.message


def test_cobra_reads_one_image_before_all_text_and_says_so():
    error = refusal([user("Hi"), assistant("Yes."), user("And this?", "data:good")])
    assert error.message.startswith("Cobra reads one image, before all of the conversation's text")


@pytest.mark.parametrize("fields, param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1.0}, "presence_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"max_tokens": 65}, "max_tokens"),
    ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["a", ""]}, "stop"),
])  # fmt: skip
def test_unsupported_parameters_are_refused_by_name(fields, param):
    assert refusal([user("Hi")], **fields).param == param


def test_neutral_values_of_unsupported_parameters_are_accepted():
    read([user("Hi")], n=1, tools=[], tool_choice="none", response_format={"type": "text"}, frequency_penalty=0,
         presence_penalty=0.0, logit_bias={}, modalities=["text"], user="me", metadata={"a": "b"}, store=False,
         parallel_tool_calls=False)
