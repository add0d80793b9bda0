"""The OpenAI chat-completions wire format, as far as Cobra Chat serves it: pydantic models of the request, the
response, the stream's chunks, the model list and the error body (field names and shapes as OpenAI's API reference).

Request fields that OpenAI defines and Cobra cannot honour (tools, penalties, JSON mode, audio, ...) are declared, so
that `conversation.read_request` can refuse them by name when they ask for something; fields nobody defines are
refused by pydantic ("extra_forbidden"), as OpenAI refuses unrecognised arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

SEED_RANGE = (-(2**63), 2**64)  # OpenAI's seeds are 64-bit integers; either sign is accepted


# --- request --------------------------------------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # accepted; Cobra always reads the image at its own size


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message as clients send it; `conversation.read_request` checks the roles and their order."""

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None  # accepted and ignored (one user per conversation)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None  # an assistant message resent as the API returned it


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Sampling: no temperature/top_p/top_k given means greedy decoding, the release's
    default; temperature 0 (or top_p 0) is greedy too; otherwise seeded sampling (`seed`, random when absent)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # OpenAI's older name of max_completion_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # not OpenAI's: vLLM's extensions, which map onto Cobra's sampler as they are
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    # accepted and ignored: they change nothing for a single local model
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # defined by OpenAI, refused unless neutral (conversation.UNSUPPORTED says why)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None


# --- response -------------------------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes (a token may hold part of a character)


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose state came from the store instead of being computed


class Usage(BaseModel):
    prompt_tokens: int  # image patches + text tokens of the prompt
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _present_fields_only(self, handler):  # OpenAI's deltas carry only what changed: {"content": "..."}, {}
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # only in the last chunk, when stream_options.include_usage asked for it


class ModelObject(BaseModel):
    """OpenAI's model object (one entry of GET /v1/models)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "cobra-chat"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
