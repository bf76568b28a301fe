"""Request bodies of the OpenAI / vLLM endpoints, validated at the edge, and the error type.

Unknown fields are ignored, as vLLM does (clients such as LiteLLM send extras). Fields the
server cannot honour (presence/frequency penalties, JSON-schema output, prompt log-probs) are
refused with a 400 that names them rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class APIError(Exception):
    """An error with an HTTP status and an OpenAI-style body ``{"error": {message, type, param, code}}``."""

    TYPES = {
        400: "BadRequestError",
        404: "NotFoundError",
        429: "RateLimitError",
        503: "ServiceUnavailableError",
    }

    def __init__(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or self.TYPES.get(status, "APIError")
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}
        }


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "BadRequestError", param)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingRequest(_Lenient):
    """Fields shared by chat and text completions. ``None`` = the model's generation_config default."""

    model: str | None = Field(None, description="Base model or adapter name; unset = the base model.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; -1 or 0 = off.")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM extension.")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="vLLM extension.")
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    return_token_ids: bool | None = Field(
        None, description="vLLM extension: the prompt's and each choice's token ids in the answer."
    )

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        for i, stop in enumerate(stops):
            if not stop:
                raise bad_request(f"stop[{i}] is empty; stop sequences must be non-empty strings", "stop")
        return stops

    def check_supported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(
                    f"{name} is not supported by the embedded model server; use repetition_penalty", name
                )
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by the embedded model server", "logit_bias")


#: Most alternatives per token in ``top_logprobs`` / legacy ``logprobs`` (vLLM's default max_logprobs).
MAX_LOGPROBS = 20


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str = Field(min_length=1)


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatMessage(_Lenient):
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """``content`` as one string: text parts are joined; other parts (images…) are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(
                    f"content part of type {part.get('type')!r} is not supported; only text parts are",
                    "messages",
                )
            texts.append(part["text"])
        return "".join(texts)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = Field(True, description="vLLM extension.")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM extension.")

    @model_validator(mode="after")
    def _merge_max_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs and not self.logprobs:
            raise bad_request("when using `top_logprobs`, `logprobs` must be set to true", "top_logprobs")
        if isinstance(self.tool_choice, NamedToolChoice) or self.tool_choice == "required":
            if not self.tools:
                raise bad_request(f"tool_choice {self.tool_choice_label()!r} needs `tools`", "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [tool.function.name for tool in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise bad_request(
                    f"tool_choice names the function {self.tool_choice.function.name!r}, which is not "
                    f"among the tools ({', '.join(names)})",
                    "tool_choice",
                )
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad_request(
                f"response_format {self.response_format.get('type')!r} is not supported by the embedded "
                "model server; only 'text'",
                "response_format",
            )

    def tool_choice_label(self) -> str:
        """``none``, ``auto``, ``required`` or ``function:<name>``; unset = auto with tools, else none."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return f"function:{self.tool_choice.function.name}"
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice

    def tool_dicts(self) -> list[dict[str, Any]]:
        """The tools as plain dicts for the chat template (OpenAI's shape, unset fields left out)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools or []]

    def template_messages(self) -> list[dict[str, Any]]:
        """The messages as plain dicts for the chat template (content flattened to text)."""
        out = []
        for message in self.messages:
            item: dict[str, Any] = {"role": message.role, "content": message.text()}
            for extra in ("name", "tool_calls", "tool_call_id"):
                if getattr(message, extra) is not None:
                    item[extra] = getattr(message, extra)
            out.append(item)
        return out


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, a list of strings, token ids, or a list of token-id lists."
    )
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs is not None and self.echo:
            raise bad_request(
                "logprobs with echo (log-probs of the prompt) are not supported by the embedded model server",
                "logprobs",
            )
        if self.suffix:
            raise bad_request("suffix (insertion) is not supported by the embedded model server", "suffix")
        if self.best_of not in (None, 1, self.n):
            raise bad_request("best_of other than n is not supported by the embedded model server", "best_of")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise bad_request("prompt is empty", "prompt")
        # Validation matched one member of the union, so the list is homogeneous.
        ids = [p for p in prompt if isinstance(p, int)]
        if len(ids) == len(prompt):  # one prompt, as token ids
            return [ids]
        return [p for p in prompt if not isinstance(p, int)]  # a batch of texts or of token-id lists


class LoadLoRAAdapterRequest(_Lenient):
    lora_name: str | None = None
    lora_path: str | None = None
    load_inplace: bool = Field(
        False, description="vLLM's field: replace a loaded name (a forced reload) instead of refusing it."
    )


class UnloadLoRAAdapterRequest(_Lenient):
    lora_name: str | None = None
    lora_int_id: int | None = None


#: Names pydantic puts in an error's location for the member of a union type that failed.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        problem = err.errors()[0]
        loc = [str(part) for part in problem.get("loc", ())]
        message = problem.get("msg", "invalid value")
        if problem.get("type") == "missing":
            message = "field required"
        elif not isinstance(problem.get("input"), dict | list):
            message += f" (got {problem.get('input')!r})"
        # For a union type pydantic names the member that failed last (prompt.list[int]…): the
        # field itself is what the caller has to fix.
        field = loc[0] if loc else None
        where = ".".join(part for part in loc if "[" not in part and part not in _TYPE_TAGS)
        raise bad_request(f"{where}: {message}" if where else message, field) from None
