"""Spec: the API through the official `openai` client against a real server - models, replies about an image
streamed and not, multi-turn chats resent whole (from the store, and from its disk tier after a restart),
log-probabilities, stop strings, seeds, the key. Every answer equals the reference backend's reply to the same
conversation, computed here from scratch."""

import httpx
import openai
import pytest

from cobra_app.api.conversation import read_messages
from cobra_app.api.image_urls import image_data_url
from cobra_app.api.reference import ReferenceBackend
from cobra_app.api.schemas import ChatMessage
from cobra_app.bench.api import Recording
from cobra_app.generation import SamplingParams
from cobra_app.sessions import SessionManager
from tests.api.support import assistant, served, user

MODEL = "tiny-cobra"
QUESTIONS = ("What is in the image?", "Is there a dog? Answer yes or no.", "Describe the picture.")


@pytest.fixture(scope="module")
def server(cobra, make_backend):
    backend = Recording(make_backend(cobra))
    with served(cobra, backend) as (url, app):
        yield url, backend, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


def reference(cobra, image, messages, params: SamplingParams, top_logprobs=None):
    """The reply to `messages` (API messages) computed from scratch: (stripped text, events, stats)."""
    turns, _ = read_messages([ChatMessage.model_validate(m) for m in messages])
    reply = ReferenceBackend(cobra).complete(image, turns, params, top_logprobs=top_logprobs)
    events = list(reply.events())
    return reply.text.strip(), events, reply.stats


def stream_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_the_served_model_is_listed_and_others_are_not_found(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "cobra-chat"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[user("Hi")])
    assert info.value.body["code"] == "model_not_found" and MODEL in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_reply_about_an_image_streamed_and_not(client, cobra, image):
    messages = [user(QUESTIONS[0], image_data_url(image))]
    text, _, stats = reference(cobra, image, messages, SamplingParams(max_new_tokens=20))
    done = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    assert done.choices[0].message.content == text and done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == {"eos": "stop", "length": "length"}[stats.finish_reason]
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (stats.prompt_tokens, stats.new_tokens)
    assert done.usage.total_tokens == stats.prompt_tokens + stats.new_tokens
    assert done.usage.prompt_tokens_details.cached_tokens >= 0
    assert done.object == "chat.completion" and done.model == MODEL and done.id.startswith("chatcmpl-")

    streamed, chunks = stream_text(client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant" and len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == stats.new_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain, chunks = stream_text(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20,
                                                               stream=True))
    assert plain == text and all(c.usage is None for c in chunks)


def test_a_multi_turn_chat_resent_whole_each_turn(server, client, cobra, image):
    backend = server[1]
    messages = []
    for i, question in enumerate(QUESTIONS):
        messages.append(user(question, image_data_url(image) if i == 0 else None))
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12)
        text, _, stats = reference(cobra, image, messages, SamplingParams(max_new_tokens=12))
        assert answer.choices[0].message.content == text
        assert answer.usage.prompt_tokens == stats.prompt_tokens
        cached = answer.usage.prompt_tokens_details.cached_tokens
        assert cached == backend.replies[-1].stats.cached_tokens  # what the backend took from its store
        if isinstance(backend.backend, SessionManager) and i > 0:  # the previous turns come from the store
            assert cached >= stats.prompt_tokens - len(cobra.turns.user_turn_ids(question, first=False)) - len(
                cobra.turns.assistant_turn_ids(messages[-2]["content"]))
        messages.append(assistant(answer.choices[0].message.content))


def test_a_conversation_resent_to_a_restarted_server_resumes_from_disk(cobra, image, tmp_path):
    """With a state folder, the conversation resent to a new server (a new manager: empty memory, the same folder)
    starts from the states the old one wrote and gets the reply a full recompute gives."""
    messages = [user(QUESTIONS[0], image_data_url(image))]
    before = SessionManager(cobra, state_dir=tmp_path)
    with served(cobra, before) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        for question in QUESTIONS[1:]:
            answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
            messages += [assistant(answer.choices[0].message.content), user(question)]
    before.close()  # (the process ends: its queued writes reach the disk)
    after = SessionManager(cobra, state_dir=tmp_path)
    with served(cobra, after) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        resumed = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    text, _, stats = reference(cobra, image, messages, SamplingParams(max_new_tokens=12))
    assert resumed.choices[0].message.content == text
    new = len(cobra.turns.user_turn_ids(QUESTIONS[-1], first=False)) + len(
        cobra.turns.assistant_turn_ids(messages[-2]["content"]))
    assert resumed.usage.prompt_tokens_details.cached_tokens >= stats.prompt_tokens - new > 0
    assert after.stats()["disk_hits"] >= 1 and after.stats()["image_encodes"] == 0


def test_text_only_chats_work_too(client, cobra):
    messages = [user("Hello there"), assistant("Hi."), user("How are you?")]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert answer.choices[0].message.content == reference(cobra, None, messages, SamplingParams(max_new_tokens=8))[0]


def test_log_probabilities_of_each_token_and_its_best_alternatives(client, cobra, image):
    messages = [user(QUESTIONS[1], image_data_url(image))]
    _, events, _ = reference(cobra, image, messages, SamplingParams(max_new_tokens=10), top_logprobs=3)
    expected = [e for e in events if e.token_id is not None and e.token_id != cobra.turns.eos_id]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, logprobs=True,
                                            top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in expected], abs=1e-5)
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")  # as the reply decodes
    assert joined.strip() == answer.choices[0].message.content
    for entry, event in zip(entries, expected):
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([lp for _, lp in event.top_logprobs], abs=1e-5)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the most likely
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, logprobs=True,
                                                   stream=True))
    stream_entries = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in stream_entries] == [(e.token, e.logprob) for e in entries]
    assert all(e.top_logprobs == [] for e in stream_entries)  # top_logprobs not asked for: none
    assert client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3).choices[0].logprobs is None


def test_a_stop_string_ends_the_reply_before_it(client, cobra, image):
    messages = [user(QUESTIONS[2], image_data_url(image))]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick another stop string in {full!r}"
    expected = full[: full.index(stop)].strip()
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, stop=[stop, "never"])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (expected, "stop")
    streamed, _ = stream_text(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30,
                                                             stop=stop, stream=True))
    assert streamed == expected
    messages += [assistant(expected), user("Go on.")]  # the conversation continues from the cut reply
    following = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    assert following.choices[0].message.content == reference(cobra, image, messages,
                                                             SamplingParams(max_new_tokens=12))[0]


def test_seeded_sampling_reproduces_and_temperature_zero_is_greedy(client, cobra, image):
    messages = [user(QUESTIONS[0], image_data_url(image))]

    def ask(**params):
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                              **params).choices[0].message.content

    assert ask(temperature=1.0, seed=7) == ask(temperature=1.0, seed=7)
    assert len({ask(temperature=1.5, seed=s) for s in range(4)}) > 1
    assert ask(temperature=0) == ask() == ask(temperature=0, seed=3)
    params = SamplingParams(max_new_tokens=16, greedy=False, temperature=0.8, top_p=0.9, seed=11)
    assert ask(temperature=0.8, top_p=0.9, seed=11) == reference(cobra, image, messages, params)[0]


def test_the_key_is_required_when_set(cobra):
    with served(cobra, ReferenceBackend(cobra), api_key="s3cret") as (url, _):
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list()] == [MODEL]
        assert good.chat.completions.create(model=MODEL, messages=[user("Hi")], max_tokens=2).choices
        for key in ("wrong", "s3cret2", "S3CRET"):
            bad = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as info:
                bad.chat.completions.create(model=MODEL, messages=[user("Hi")])
            assert info.value.body == {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        missing = httpx.post(f"{url}/chat/completions", json={"model": MODEL, "messages": [user("Hi")]})
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
