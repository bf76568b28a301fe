"""The model engine: one base model, any number of LoRA adapters, generation on transformers + PEFT.

Concurrency model
-----------------
The model, its adapters and the tokenizer belong to ONE worker thread (a single-thread
executor). Everything that touches them — loading the base model, loading or unloading an
adapter, tokenising, generating — is a job on that thread, run in arrival order (FIFO). So
requests never see an adapter switched under them, and the event loop stays free to answer
/health, /v1/models and streamed tokens while a generation runs. There is no batching across
requests: one request generates at a time (its ``n`` choices are one batch). At most
``max_queued_requests`` jobs wait; more are refused with 429. This is the embedded default for
one CPU machine, not a throughput engine: vLLM does continuous batching and multi-LoRA kernels.

Adapters are PEFT LoRA adapters loaded side by side into the base model through transformers'
PEFT integration (``load_adapter`` / ``set_adapter`` / ``disable_adapters`` /
``delete_adapter``). Each gets an internal PEFT name (``lora1``, ``lora2`` …, like vLLM's
``lora_int_id``), so any served name is valid — PEFT module names cannot contain '.'.

torch and transformers are imported on the worker thread when the base model loads, so the
HTTP server is up in well under a second and ``/health`` answers while the model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_common.hardware import cpu_has_fast_bf16
from flywheel_common.objectstore import ObjectStore, open_object_store
from flywheel_model_server.basemodel import LocatedModel, ModelMissingError, locate
from flywheel_model_server.protocol import APIError, bad_request
from flywheel_model_server.settings import ModelServerSettings
from flywheel_model_server.templates import DEFAULT_CHAT_TEMPLATE, folder_chat_template, implicit_stops

log = logging.getLogger("flywheel.model_server.engine")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    MISSING = "missing"  #: the base model is not available; looked for again periodically
    FAILED = "failed"  #: it was found but could not be loaded


@dataclass
class Adapter:
    name: str  #: served name (the request's ``model``)
    path: str  #: ``lora_path`` as given; /v1/models reports it as ``root``
    internal: str  #: PEFT adapter name inside the model
    chat_template: str | None
    created: int


# ----------------------------------------------------------------------------------------- job events


@dataclass
class Started:
    prompt_tokens: int
    prompt_texts: list[str]  #: one per prompt, for ``echo``


@dataclass
class Delta:
    index: int
    text: str
    finish_reason: str | None = None  #: "stop" or "length" on a choice's last delta
    stop_reason: str | None = None  #: the stop string that ended it, as vLLM reports


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    error: APIError


Event = Started | Delta | Done | Failed


@dataclass
class SamplingParams:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    n: int
    stop: list[str]
    seed: int | None


@dataclass
class Prompt:
    """A chat conversation, a text prompt or token ids; turned into token ids on the worker thread."""

    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    token_ids: list[int] | None = None


@dataclass
class GenerationJob:
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    default_max_tokens: int
    stream: bool = False  #: events are wanted as they happen (SSE), not only at the end
    emit: Callable[[Event], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)


# ------------------------------------------------------------------------------------------- engine


class Engine:
    def __init__(self, settings: ModelServerSettings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.model_name = settings.model_name
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.state = ModelState.LOADING
        self.state_message = f"loading base model {settings.base_model!r}"
        self.state_since = time.monotonic()
        self.location: LocatedModel | None = None
        self.device = "none"
        self.max_model_len = 0
        self.created = int(time.time())
        self._adapters: dict[str, Adapter] = {}
        self._adapter_counter = 0
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = threading.Event()  #: set at shutdown: running generations stop at the next token
        # Set on the worker thread by _load_base.
        self._torch: Any = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._base_template = DEFAULT_CHAT_TEMPLATE
        self._eos_ids: list[int] = []
        self._pad_id = 0

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start loading the base model in the background; returns at once."""
        self._supervisor = asyncio.create_task(self._supervise(), name="model-loader")

    async def close(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    async def _supervise(self) -> None:
        """Load the base model; while it is missing, look again every model_poll_interval_s."""
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(self._executor, self._load_base)
            if self.state is not ModelState.MISSING:
                return
            await asyncio.sleep(self.settings.model_poll_interval_s)

    def _set_state(self, state: ModelState, message: str) -> None:
        if state is not self.state:
            self.state_since = time.monotonic()
        self.state, self.state_message = state, message

    def _load_base(self) -> None:
        settings = self.settings
        try:
            if self._store is None and settings.model_path is None:
                self._store = open_object_store(settings.object_store)
            self.location = locate(self._store, settings.base_model, settings.model_path, settings.cache_dir)
        except ModelMissingError as err:
            self._set_state(ModelState.MISSING, str(err))
            log.warning("base model not available: %s", err)
            return
        except Exception as err:  # a broken object store must not kill the server: report it
            self._set_state(ModelState.MISSING, f"base model {settings.base_model!r}: {err}")
            log.exception("looking for the base model failed")
            return
        self._set_state(ModelState.LOADING, f"loading base model from {self.location.source}")
        started = time.monotonic()
        try:
            self._load_weights(self.location.path)
        except Exception as err:
            self._set_state(ModelState.FAILED, f"base model at {self.location.path} failed to load: {err}")
            log.exception("loading the base model failed")
            return
        self._set_state(ModelState.READY, f"serving {self.model_name} from {self.location.source}")
        log.info(
            "base model %s ready on %s in %.1f s",
            self.model_name,
            self.device,
            time.monotonic() - started,
            extra={"model": self.model_name, "device": self.device},
        )

    def _load_weights(self, path: Path) -> None:
        # Nothing may be fetched from a hub at run time: every path here is local.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers

        # PEFT warns on every second adapter and on deleting the active one: both are how this
        # engine works (several adapters, the active one chosen per request).
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self.settings.dtype
        )
        if dtype is None:
            if device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
            else:
                dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        # PreTrainedModel.to is decorated with functools.wraps, whose typeshed type does not bind
        # as a method (mypy reads `device` as `self`).
        model.to(device).eval()  # type: ignore[arg-type]  # see above: a stub limitation, not a bug
        config = model.config.get_text_config()
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else []
        eos_ids = {*([eos] if isinstance(eos, int) else eos)}
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gen.pad_token_id
        self._torch, self._model, self._tokenizer = torch, model, tokenizer
        self._eos_ids = sorted(eos_ids)
        self._pad_id = pad if pad is not None else (self._eos_ids[0] if self._eos_ids else 0)
        self._base_template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
        self.max_model_len = self.settings.max_model_len or int(
            getattr(config, "max_position_embeddings", 0) or 2048
        )
        self.device = f"{device} ({str(dtype).removeprefix('torch.')})"

    # ----------------------------------------------------------------------------------------- views

    def readiness(self) -> dict[str, Any]:
        return {
            "status": self.state.value,
            "model": self.model_name,
            "message": self.state_message,
            "since_s": round(time.monotonic() - self.state_since, 1),
            "device": self.device,
            "adapters": len(self._adapters),
            "queued": self._pending,
        }

    def require_ready(self) -> None:
        """Raise the 503 that explains why the model cannot answer yet."""
        if self.state is ModelState.READY:
            return
        if self.state is ModelState.LOADING:
            raise APIError(
                503,
                f"the base model {self.model_name!r} is still loading ({self.state_message}, "
                f"{time.monotonic() - self.state_since:.0f} s so far); retry shortly",
                headers={"Retry-After": "5"},
            )
        if self.state is ModelState.MISSING:
            raise APIError(
                503,
                f"no base model to serve: {self.state_message}. The server looks for it again every "
                f"{self.settings.model_poll_interval_s:g} s; no restart is needed",
                headers={"Retry-After": str(int(self.settings.model_poll_interval_s))},
            )
        raise APIError(503, f"no base model to serve: {self.state_message}")

    def models(self) -> list[dict[str, Any]]:
        self.require_ready()
        assert self.location is not None
        cards = [
            {
                "id": self.model_name,
                "object": "model",
                "created": self.created,
                "owned_by": "flywheel",
                "root": str(self.location.path),
                "parent": None,
                "max_model_len": self.max_model_len,
            }
        ]
        for adapter in list(self._adapters.values()):  # the model thread may change the dict
            cards.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": adapter.created,
                    "owned_by": "flywheel",
                    "root": adapter.path,
                    "parent": self.model_name,
                    "max_model_len": self.max_model_len,
                }
            )
        return cards

    def check_model(self, name: str | None) -> str:
        """The served name a request asks for (base when unset); 404 in vLLM's words if unknown."""
        self.require_ready()
        name = name or self.model_name
        if name != self.model_name and name not in self._adapters:
            raise APIError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        return name

    # -------------------------------------------------------------------------------------- adapters

    async def load_adapter(self, name: str, path: str) -> None:
        self.require_ready()
        if name in self._adapters or name == self.model_name:
            raise APIError(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if len(self._adapters) >= self.settings.max_adapters:
            raise APIError(
                400,
                f"Loading lora {name} failed: {len(self._adapters)} adapters are loaded, the limit "
                f"(FLYWHEEL_MODEL_SERVER_MAX_ADAPTERS) is {self.settings.max_adapters}; unload one first",
                "BadRequestError",
            )
        await self._run(self._load_adapter_sync, name, path)

    async def unload_adapter(self, name: str) -> None:
        self.require_ready()
        if name not in self._adapters:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        await self._run(self._unload_adapter_sync, name)

    def _load_adapter_sync(self, name: str, path: str) -> None:
        if name in self._adapters:  # two loads of one name raced through the queue
            raise APIError(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        folder = Path(path)
        config_path = folder / "adapter_config.json"
        if not config_path.is_file():
            # vLLM's words and status for a path without an adapter.
            raise APIError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise bad_request(f"Loading lora {name} failed: {config_path} is not valid JSON: {err}") from None
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise bad_request(
                f"Loading lora {name} failed: peft_type is {peft_type or 'missing'!r}, not LORA"
            )
        if not any(folder.glob("adapter_model.*")):
            raise bad_request(f"Loading lora {name} failed: {path} has no adapter_model.safetensors")
        self._adapter_counter += 1
        internal = f"lora{self._adapter_counter}"
        started = time.monotonic()
        try:
            self._model.load_adapter(str(folder), adapter_name=internal)
        except Exception as err:
            with contextlib.suppress(Exception):  # remove whatever layers were injected before the error
                self._model.delete_adapter(internal)
            raise bad_request(f"Loading lora {name} failed: {type(err).__name__}: {err}") from None
        self._adapters[name] = Adapter(name, path, internal, folder_chat_template(folder), int(time.time()))
        log.info(
            "loaded LoRA adapter %s from %s in %.2f s",
            name,
            path,
            time.monotonic() - started,
            extra={"adapter": name},
        )

    def _unload_adapter_sync(self, name: str) -> None:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        self._model.delete_adapter(adapter.internal)
        log.info("removed LoRA adapter %s", name, extra={"adapter": name})

    # ------------------------------------------------------------------------------------ generation

    def _acquire_slot(self) -> None:
        with self._pending_lock:
            if self._pending >= self.settings.max_queued_requests:
                raise APIError(
                    429,
                    f"{self._pending} requests are already waiting for the model (limit "
                    f"FLYWHEEL_MODEL_SERVER_MAX_QUEUED_REQUESTS={self.settings.max_queued_requests}); retry later",
                    "RateLimitError",
                    headers={"Retry-After": "1"},
                )
            self._pending += 1

    def _release_slot(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._acquire_slot()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._release_slot()

    def submit(self, job: GenerationJob) -> asyncio.Queue[Event]:
        """Queue a generation; its events arrive on the returned queue, ending with Done or Failed."""
        if job.params.n > self.settings.max_n:
            raise bad_request(f"n={job.params.n} is over the limit of {self.settings.max_n}", "n")
        self._acquire_slot()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def put_all(events: list[Event]) -> None:
            for event in events:
                queue.put_nowait(event)

        buffer: list[Event] = []

        def emit(event: Event) -> None:
            # Waking the event loop costs a GIL hand-off (~ms under load), so only a streamed job
            # pays it per token; a whole-answer job hands over its events in two batches.
            buffer.append(event)
            if job.stream or not isinstance(event, Delta):
                batch = buffer.copy()
                buffer.clear()
                loop.call_soon_threadsafe(put_all, batch)

        job.emit = emit
        try:
            loop.run_in_executor(self._executor, self._run_job, job)
        except RuntimeError:  # executor shut down
            self._release_slot()
            raise APIError(503, "the model server is shutting down") from None
        return queue

    def _run_job(self, job: GenerationJob) -> None:
        final: Event | None = None
        try:
            if not job.cancelled.is_set():
                final = Done(*self._generate(job))
        except APIError as err:
            final = Failed(err)
        except Exception as err:
            log.exception("generation failed")
            final = Failed(
                APIError(500, f"generation failed: {type(err).__name__}: {err}", "InternalServerError")
            )
        finally:
            self._release_slot()  # before the last event, so a client that saw it can send the next request
        if final is not None:
            job.emit(final)

    def _prompt_ids(self, prompt: Prompt, adapter: Adapter | None) -> tuple[list[int], str, list[str]]:
        """Token ids, the prompt as text (for echo), and the implicit stop strings."""
        tokenizer = self._tokenizer
        if prompt.token_ids is not None:
            vocab = len(tokenizer)
            for token in prompt.token_ids:
                if not 0 <= token < vocab:
                    raise bad_request(
                        f"prompt token id {token} is outside the vocabulary (0..{vocab - 1})", "prompt"
                    )
            return list(prompt.token_ids), tokenizer.decode(prompt.token_ids), []
        if prompt.text is not None:
            return tokenizer(prompt.text).input_ids, prompt.text, []
        template = (adapter.chat_template if adapter else None) or self._base_template
        # chat_template_kwargs are variables for the template, never apply_chat_template's own options.
        own = inspect.signature(tokenizer.apply_chat_template).parameters
        variables = {k: v for k, v in prompt.template_kwargs.items() if k not in own}
        try:
            text = tokenizer.apply_chat_template(
                prompt.messages,
                chat_template=template,
                tools=prompt.tools,
                add_generation_prompt=prompt.add_generation_prompt,
                tokenize=False,
                **variables,
            )
        except Exception as err:  # jinja raises on conversations a template refuses (role order …)
            raise bad_request(f"the chat template cannot render these messages: {err}", "messages") from None
        # As transformers' apply_chat_template(tokenize=True) and vLLM do: the template writes
        # any BOS itself, so no special tokens are added here.
        return tokenizer(text, add_special_tokens=False).input_ids, text, implicit_stops(template)

    def _generate(self, job: GenerationJob) -> tuple[int, int]:
        if self.state is not ModelState.READY:
            self.require_ready()
        adapter = None
        if job.model != self.model_name:
            adapter = self._adapters.get(job.model)
            if adapter is None:  # unloaded while this request waited
                raise APIError(404, f"The model `{job.model}` does not exist.", "NotFoundError", "model")
        params = job.params
        prepared = []
        for prompt in job.prompts:
            ids, text, stops = self._prompt_ids(prompt, adapter)
            if not ids:
                raise bad_request("the prompt is empty after tokenisation", "prompt")
            room = self.max_model_len - len(ids)
            max_tokens = params.max_tokens or min(job.default_max_tokens, room)
            if room < 1 or len(ids) + max_tokens > self.max_model_len:
                raise bad_request(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                    f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in "
                    "the completion). Please reduce the length of the messages or completion.",
                    "max_tokens" if params.max_tokens else "messages",
                )
            prepared.append((ids, text, stops, max_tokens))
        job.emit(Started(sum(len(p[0]) for p in prepared), [p[1] for p in prepared]))

        model = self._model
        if self._adapters:
            if adapter is None:
                model.disable_adapters()
            else:
                model.enable_adapters()
                model.set_adapter(adapter.internal)
        completion_tokens = 0
        for number, (ids, _, implicit, max_tokens) in enumerate(prepared):
            if job.cancelled.is_set():
                break
            completion_tokens += self._generate_one(job, number * params.n, ids, implicit, max_tokens)
        return sum(len(p[0]) for p in prepared), completion_tokens

    def _generate_one(
        self, job: GenerationJob, offset: int, ids: list[int], implicit: list[str], max_tokens: int
    ) -> int:
        import transformers

        torch = self._torch
        params = job.params
        config = self._generation_config(params, max_tokens)
        tracker = _ChoiceTracker(
            self._tokenizer,
            params.n,
            offset,
            max_tokens,
            params.stop,
            implicit,
            set(self._eos_ids),
            job.emit,
            lambda: job.cancelled.is_set() or self._closing.is_set(),
        )
        device = self._model.device
        input_ids = torch.tensor([ids] * params.n, dtype=torch.long, device=device)
        if params.seed is not None:
            torch.manual_seed(params.seed)  # the global RNG: safe because generation is serialised
        with torch.inference_mode():
            self._model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                stopping_criteria=transformers.StoppingCriteriaList([_TrackerCriteria(tracker)]),
            )
        tracker.finish_all()
        return tracker.completion_tokens()

    def _generation_config(self, params: SamplingParams, max_tokens: int) -> Any:
        """The model's generation_config with the request's values; unset values keep the model's."""
        import copy

        config = copy.deepcopy(self._model.generation_config)
        model_sampled = bool(config.do_sample)
        temperature = params.temperature
        if temperature is None:
            temperature = (config.temperature or 1.0) if model_sampled else 1.0
        sample = temperature > 0
        config.do_sample = sample
        config.max_new_tokens = max_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.min_length = 0
        config.num_return_sequences = 1
        config.num_beams = 1
        config.eos_token_id = self._eos_ids or None
        config.pad_token_id = self._pad_id
        config.repetition_penalty = params.repetition_penalty or config.repetition_penalty or 1.0
        if sample:
            config.temperature = temperature
            config.top_p = (
                params.top_p if params.top_p is not None else (config.top_p if model_sampled else 1.0)
            )
            top_k = params.top_k if params.top_k is not None else (config.top_k if model_sampled else 0)
            config.top_k = top_k if top_k and top_k > 0 else None
            config.min_p = params.min_p or None
        else:  # greedy: sampling knobs off so transformers does not warn about them
            config.temperature, config.top_p, config.top_k, config.min_p = None, None, None, None
        return config


# ----------------------------------------------------------------------------------- stop handling


class _ChoiceTracker:
    """Follows the ``n`` sequences of one generate() call token by token.

    Written here rather than using transformers' ``stop_strings`` because the same text-level
    check has to (1) cut the stop string out of the answer, (2) hold back streamed text that
    might be the start of a stop string, and (3) end each choice on its own; it also ends the
    whole generation when the client goes away.
    """

    def __init__(
        self,
        tokenizer: Any,
        n: int,
        offset: int,
        max_tokens: int,
        stops: list[str],
        implicit: list[str],
        eos_ids: set[int],
        emit: Callable[[Event], None],
        cancelled: Callable[[], bool],
    ) -> None:
        self.tokenizer = tokenizer
        self.offset = offset
        self.max_tokens = max_tokens
        self.stops = stops + [s for s in implicit if s not in stops]
        self.implicit = set(implicit) - set(stops)
        self.eos_ids = eos_ids
        self.emit = emit
        self.cancelled = cancelled
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.emitted = [0] * n
        self.finished: list[str | None] = [None] * n

    def step(self, last_tokens: list[int]) -> list[bool]:
        for i, token in enumerate(last_tokens):
            if self.finished[i] is None:
                self.tokens[i].append(token)
                self._advance(i, eos=token in self.eos_ids)
        if self.cancelled():
            return [True] * len(self.finished)
        return [reason is not None for reason in self.finished]

    def _advance(self, i: int, eos: bool = False, force: str | None = None) -> None:
        ids = self.tokens[i][:-1] if eos else self.tokens[i]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = stop_reason = None
        if eos:
            finish = "stop"
        else:
            cut, hit = len(text) + 1, None
            for stop in self.stops:
                at = text.find(stop)
                if at != -1 and at < cut:
                    cut, hit = at, stop
            if hit is not None:
                text, finish = text[:cut], "stop"
                stop_reason = None if hit in self.implicit else hit
            elif len(self.tokens[i]) >= self.max_tokens or force:
                finish = force or "length"
        safe = len(text) if finish else len(text) - self._hold_back(text)
        delta = text[self.emitted[i] : safe] if safe > self.emitted[i] else ""
        self.emitted[i] = max(self.emitted[i], safe)
        if finish:
            self.finished[i] = finish
        if delta or finish:
            self.emit(Delta(self.offset + i, delta, finish, stop_reason))

    def _hold_back(self, text: str) -> int:
        """Characters at the end that must wait: an unfinished UTF-8 character or a stop's prefix."""
        held = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def finish_all(self) -> None:
        if self.cancelled():
            return
        for i, reason in enumerate(self.finished):
            if reason is None:
                self._advance(i, force="length")

    def completion_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.tokens)


class _TrackerCriteria:
    """Adapts _ChoiceTracker to transformers' StoppingCriteria protocol (one bool per sequence)."""

    def __init__(self, tracker: _ChoiceTracker) -> None:
        self.tracker = tracker

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.tracker.step(input_ids[:, -1].tolist())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
