"""A chat-completions request -> what the backend reads: the image, the (role, text) turns, the sampling settings.

Everything Cobra cannot do is refused here with a 400 that says why, before any model work:
- roles: "user" and "assistant", alternating, first and last "user". "system"/"developer" messages must be empty:
  Cobra has no system prompt (the release runs with none), so an instruction belongs in the first user message.
- images: at most one, in the first user message (Cobra reads the image before all text, so an image cannot join a
  conversation midway); `data:` URLs, http(s) only with --allow-image-urls; the UI's byte and pixel caps.
- every user message needs text; text parts of a message are joined with newlines.
- one choice (n=1), no tools, no penalties or logit bias, plain-text responses only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from cobra_app.api.backend import Message
from cobra_app.api.errors import ApiError, bad_request
from cobra_app.api.schemas import SEED_RANGE, ChatCompletionRequest, ChatMessage, ImagePart, TextPart
from cobra_app.generation import SamplingParams
from cobra_app.images import ImageRejected
from cobra_app.prompting import clean_message

MAX_STOP_STRINGS = 4  # as OpenAI
NO_SYSTEM_PROMPT = ("Cobra has no system prompt (the released model was trained and is run without one); put the "
                    "instruction in the first user message instead.")
ONE_IMAGE = ("Cobra reads one image, before all of the conversation's text: send at most one image, in the first user "
             "message (a new image means a new conversation).")

# field -> (is it neutral?, why it is refused otherwise)
UNSUPPORTED: dict[str, tuple[Callable[[object], bool], str]] = {
    "tools": (lambda v: not v, "Cobra Chat does not support tools (function calling)."),
    "functions": (lambda v: not v, "Cobra Chat does not support tools (function calling)."),
    "tool_choice": (lambda v: v in (None, "none"), "Cobra Chat does not support tools (function calling)."),
    "function_call": (lambda v: v in (None, "none"), "Cobra Chat does not support tools (function calling)."),
    "response_format": (lambda v: v in (None, {"type": "text"}), "Cobra Chat answers in plain text only."),
    "frequency_penalty": (lambda v: not v, "frequency_penalty is not supported (repetition_penalty is)."),
    "presence_penalty": (lambda v: not v, "presence_penalty is not supported (repetition_penalty is)."),
    "logit_bias": (lambda v: not v, "logit_bias is not supported."),
    "modalities": (lambda v: v in (None, ["text"]), "Cobra Chat answers in text only."),
    "audio": (lambda v: v is None, "Cobra Chat answers in text only."),
    "prediction": (lambda v: v is None, "Predicted outputs are not supported."),
    "reasoning_effort": (lambda v: v is None, "Cobra is not a reasoning model."),
    "web_search_options": (lambda v: v is None, "Cobra Chat does not search the web."),
}


@dataclass(frozen=True)
class ChatInput:
    image: Image.Image | None
    messages: tuple[Message, ...]
    params: SamplingParams
    top_logprobs: int | None  # None: no log-probabilities asked for


@dataclass(frozen=True)
class ApiLimits:
    max_new_tokens: int  # the most a request may ask for (--max-new-tokens)
    read_image: Callable[[str], Image.Image]  # an image_url -> RGB image, or ImageRejected


def _text_of(message: ChatMessage) -> tuple[str, list[tuple[int, ImagePart]]]:
    """(the message's text, its image parts with their positions)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts = [part.text for part in message.content if isinstance(part, TextPart)]
    images = [(j, part) for j, part in enumerate(message.content) if isinstance(part, ImagePart)]
    return "\n".join(texts), images


def read_messages(messages: list[ChatMessage]) -> tuple[list[Message], tuple[int, int, ImagePart] | None]:
    """-> (the (role, text) turns, the image part with its (message, part) position, if any)."""
    turns: list[Message] = []
    images: list[tuple[int, int, ImagePart]] = []
    for i, message in enumerate(messages):
        text, parts = _text_of(message)
        images += [(i, j, part) for j, part in parts]
        if message.tool_calls or message.role in ("tool", "function"):
            raise bad_request("Cobra Chat does not support tools (function calling).", f"messages[{i}]",
                              "unsupported_value")
        if message.role in ("system", "developer"):
            if text.strip() or parts:
                raise bad_request(NO_SYSTEM_PROMPT, f"messages[{i}]", "unsupported_value")
            continue
        if message.role not in ("user", "assistant"):
            raise bad_request(f"Unknown role {message.role!r} in messages[{i}]; Cobra Chat reads 'user' and "
                              "'assistant' messages (and empty 'system' ones).", f"messages[{i}].role", "invalid_value")
        if message.role == "assistant" and parts:
            raise bad_request(ONE_IMAGE, f"messages[{i}].content[{parts[0][0]}]", "unsupported_value")
        if message.role == "user" and not clean_message(text):
            raise bad_request(f"messages[{i}] has no text. Cobra answers a question or instruction (about the image); "
                              "an image alone is not a message.", f"messages[{i}].content", "empty_message")
        turns.append((message.role, text))
    roles = [role for role, _ in turns]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise bad_request("The messages must alternate between user and assistant, starting and ending with a user "
                          f"message (got {', '.join(roles) or 'none'}).", "messages", "invalid_value")
    if len(images) > 1 or (images and images[0][0] != _first_user(messages)):
        i, j, _ = images[-1] if len(images) > 1 else images[0]
        raise bad_request(ONE_IMAGE, f"messages[{i}].content[{j}]", "unsupported_value")
    return turns, images[0] if images else None


def _first_user(messages: list[ChatMessage]) -> int:
    return next(i for i, m in enumerate(messages) if m.role == "user")


def sampling_params(req: ChatCompletionRequest, max_new_tokens: int) -> SamplingParams:
    """The request's decoding settings. None of temperature/top_p/top_k given: greedy, the release's default."""
    asked = req.max_completion_tokens or req.max_tokens or max_new_tokens
    if asked > max_new_tokens:
        name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise bad_request(f"{name} is too large: {asked}. This server gives at most {max_new_tokens} new tokens per "
                          "reply (its --max-new-tokens).", name, "invalid_value")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP_STRINGS or not all(stops):
        raise bad_request(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings.", "stop", "invalid_value")
    greedy = req.temperature == 0 or req.top_p == 0 or (req.temperature is None and req.top_p is None
                                                         and not req.top_k)
    return SamplingParams(
        max_new_tokens=asked,
        greedy=greedy,
        temperature=1.0 if greedy or req.temperature is None else req.temperature,
        top_p=1.0 if greedy or req.top_p is None else req.top_p,
        top_k=0 if greedy or req.top_k is None else req.top_k,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        seed=None if req.seed is None else req.seed % SEED_RANGE[1],
        stop=tuple(stops),
    )


def read_request(req: ChatCompletionRequest, limits: ApiLimits) -> ChatInput:
    """Check a parsed request and decode its image (blocking: call it off the event loop). ApiError if refused."""
    if req.n not in (None, 1):
        raise bad_request("Cobra Chat returns one choice per request (n=1); send several requests for more.", "n",
                          "unsupported_value")
    for name, (neutral, why) in UNSUPPORTED.items():
        if not neutral(getattr(req, name)):
            raise bad_request(why, name, "unsupported_parameter")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true.", "top_logprobs", "invalid_value")
    turns, image_part = read_messages(req.messages)
    params = sampling_params(req, limits.max_new_tokens)
    image = None
    if image_part is not None:
        i, j, part = image_part
        try:
            image = limits.read_image(part.image_url.url)
        except ImageRejected as exc:
            raise ApiError(400, exc.user_message, param=f"messages[{i}].content[{j}].image_url",
                           code="invalid_image") from exc
    return ChatInput(image, tuple(turns), params, (req.top_logprobs or 0) if req.logprobs else None)
