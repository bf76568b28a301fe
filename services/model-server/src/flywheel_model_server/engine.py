"""The model engine: one base model, any number of LoRA adapters, generation on transformers + PEFT.

Concurrency model
-----------------
The model, its adapters and the tokenizer belong to ONE worker thread (a single-thread
executor). Everything that touches them — loading the base model, loading or unloading an
adapter, tokenising, generating — is a job on that thread, run in arrival order (FIFO). So
requests never see an adapter switched under them, and the event loop stays free to answer
/health, /v1/models and streamed tokens while a generation runs. At most ``max_queued_requests``
jobs wait; more are refused with 429.

Static batching: when the worker is free it takes the oldest waiting request and every other
waiting request for the same model with the same sampling settings (up to ``max_batch_size``
choices) and generates them in one left-padded ``generate()`` call; each request gets its answer
as soon as its own choices are finished. A request with a ``seed`` runs alone, so that its seed
alone decides its samples. Requests that arrive during a batch wait for it to end (no continuous
batching): this is the embedded default for one CPU machine, not a throughput engine — vLLM does
continuous batching and multi-LoRA kernels.

A hot adapter answers from a merged copy of the model (``merging.py``, up to ``merged_adapters``
copies, least recently used dropped first), the base model stays unmerged for everything else.

Adapters are PEFT LoRA adapters loaded side by side into the base model through transformers'
PEFT integration (``load_adapter`` / ``set_adapter`` / ``disable_adapters`` /
``delete_adapter``). Each gets an internal PEFT name (``lora1``, ``lora2`` …, like vLLM's
``lora_int_id``), so any served name is valid — PEFT module names cannot contain '.'.

torch and transformers are imported on the worker thread when the base model loads, so the
HTTP server is up in well under a second and ``/health`` answers while the model loads.
"""

from __future__ import annotations

import asyncio
import collections
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
from flywheel_model_server.digest import LoadedFiles
from flywheel_model_server.merging import NotMergeable, merged_copy
from flywheel_model_server.protocol import APIError, bad_request
from flywheel_model_server.rows import LogitsCapture, Rows, RowsCriteria, RowSpec, TokenLogprob
from flywheel_model_server.settings import ModelServerSettings
from flywheel_model_server.templates import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_TOOL_CHAT_TEMPLATE,
    folder_chat_template,
    implicit_stops,
)
from flywheel_model_server.toolcalls import fold_tools, template_knows_tools

log = logging.getLogger("flywheel.model_server.engine")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    MISSING = "missing"  #: the base model is not available; looked for again periodically
    FAILED = "failed"  #: it was found but could not be loaded


def device_broken(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator failure after which the process cannot compute any more
    (torch raises ``torch.AcceleratorError`` from 2.8, a RuntimeError naming CUDA before)."""
    return type(err).__name__ == "AcceleratorError" or "CUDA error" in str(err)


@dataclass
class Adapter:
    name: str  #: served name (the request's ``model``)
    path: str  #: ``lora_path`` as given; /v1/models reports it as ``root``
    internal: str  #: PEFT adapter name inside the model
    chat_template: str | None
    created: int
    digest: str = ""  #: content digest of the files it was loaded from (``digest.py``); /v1/models reports it


# ----------------------------------------------------------------------------------------- job events


@dataclass
class Started:
    prompt_tokens: int
    prompt_texts: list[str]  #: one per prompt, for ``echo``
    prompt_token_ids: list[list[int]] = field(default_factory=list)  #: one per prompt
    forced: list[str] = field(default_factory=list)  #: per prompt: text the answer was made to start with
    #: Content digest (``sha256:<hex>``) of the adapter whose weights generate this job's answer,
    #: taken from the very :class:`Adapter` object the generation uses (so a reload of the name
    #: cannot slip in between); None for the base model or an adapter loaded without a digest.
    adapter_digest: str | None = None


@dataclass
class Delta:
    index: int
    text: str
    finish_reason: str | None = None  #: "stop" or "length" on a choice's last delta
    stop_reason: str | None = None  #: the stop string that ended it, as vLLM reports
    token_ids: list[int] = field(default_factory=list)  #: ids sampled since the choice's last delta
    logprobs: list[TokenLogprob] | None = None  #: one per id in token_ids, when the job asked


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
    #: Appended to the rendered chat prompt: the answer is made to start with it (tool_choice
    #: required / a named function, see toolcalls.py).
    forced: str = ""


@dataclass
class GenerationJob:
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    default_max_tokens: int
    stream: bool = False  #: events are wanted as they happen (SSE), not only at the end
    logprobs: int | None = None  #: None: no log-probs; k >= 0: the sampled token's and the k best
    want_ids: bool = False  #: token ids in the events' token_ids (return_token_ids)
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
        #: The accelerator failed during generation; /health then fails so that the pod is restarted.
        self.device_failed = False
        self.location: LocatedModel | None = None
        self.device = "none"
        self.max_model_len = 0
        self.created = int(time.time())
        self._adapters: dict[str, Adapter] = {}
        self._adapter_counter = 0
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._waiting: collections.deque[GenerationJob] = collections.deque()  #: jobs not started yet
        self._waiting_lock = threading.Lock()
        #: Merged copies of hot adapters by PEFT name, least recently used first (merging.py).
        self._merged: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._unmergeable: set[str] = set()
        self.largest_batch = 0  #: most rows one generate() call has held (tests, /health/ready)
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
            "largest_batch": self.largest_batch,
            "merged_adapters": len(self._merged),
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
                    "digest": adapter.digest or None,
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

    async def load_adapter(self, name: str, path: str, replace: bool = False) -> None:
        """Load ``path`` as ``name``. A loaded name is refused unless ``replace`` (vLLM's
        ``load_inplace``): then the name is unloaded — its PEFT layers and anything cached for it go —
        and loaded again from ``path`` in one job, so no request sees the old weights afterwards."""
        self.require_ready()
        if replace and name in self._adapters:
            await self._run(self._replace_adapter_sync, name, path)
            return
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

    def _replace_adapter_sync(self, name: str, path: str) -> None:
        old = self._adapters.get(name)
        if old is not None:  # it may have been unloaded while this job waited
            self._unload_adapter_sync(name)
            # Its merged copy would never be used again (the new load gets a new PEFT name): free it now.
            self._merged.pop(old.internal, None)
            self._unmergeable.discard(old.internal)
        self._load_adapter_sync(name, path)

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
        files = LoadedFiles.before_load(folder)
        try:
            self._model.load_adapter(str(folder), adapter_name=internal)
            changed = files.changed_files()
            if changed:
                raise RuntimeError(f"{', '.join(changed)} changed while loading; the digest would not hold")
            broken = self._nonfinite_tensors(internal)
            if broken:  # sampling from NaN logits kills a CUDA context (a device-side assert)
                raise ValueError(
                    f"its weights hold NaN or infinity ({len(broken)} tensors, e.g. {broken[0]}); "
                    "the training run that made it probably diverged"
                )
        except Exception as err:
            with contextlib.suppress(Exception):  # remove whatever layers were injected before the error
                self._model.delete_adapter(internal)
            raise bad_request(f"Loading lora {name} failed: {type(err).__name__}: {err}") from None
        self._adapters[name] = Adapter(
            name, path, internal, folder_chat_template(folder), int(time.time()), files.digest
        )
        log.info(
            "loaded LoRA adapter %s from %s in %.2f s",
            name,
            path,
            time.monotonic() - started,
            extra={"adapter": name},
        )

    def _nonfinite_tensors(self, internal: str) -> list[str]:
        """Names of the loaded PEFT adapter ``internal``'s tensors that hold a NaN or an infinity."""
        torch = self._torch
        marker = f".{internal}."
        return [
            name
            for name, p in self._model.named_parameters()
            if marker in name and not bool(torch.isfinite(p).all())
        ]

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
        with self._waiting_lock:
            self._waiting.append(job)
        try:
            loop.run_in_executor(self._executor, self._drain)
        except RuntimeError:  # executor shut down
            with self._waiting_lock, contextlib.suppress(ValueError):
                self._waiting.remove(job)
            self._release_slot()
            raise APIError(503, "the model server is shutting down") from None
        return queue

    # ------------------------------------------------------------------------------- static batching

    @staticmethod
    def _rows_of(job: GenerationJob) -> int:
        return job.params.n * len(job.prompts)

    @staticmethod
    def _batch_key(job: GenerationJob) -> tuple[Any, ...] | None:
        """Jobs with equal keys can share one generate() call; None: this job runs alone.

        A seeded job runs alone so that its seed alone decides its samples (repeatable); the
        others share a call when they ask for the same model and the same sampling settings
        (generate() takes one generation config per call). max_tokens and stop strings are
        per row.
        """
        p = job.params
        if p.seed is not None:
            return None
        return (job.model, p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty)

    def _drain(self) -> None:
        """On the model thread: take the oldest waiting job and every waiting job that can join it."""
        limit = self.settings.max_batch_size
        with self._waiting_lock:
            while self._waiting and self._waiting[0].cancelled.is_set():
                self._finish_job(self._waiting.popleft(), None)
            if not self._waiting:
                return  # an earlier drain took this call's job into its batch
            first = self._waiting.popleft()
            batch = [first]
            key = self._batch_key(first)
            rows = self._rows_of(first)
            if key is not None:
                for other in list(self._waiting):
                    if self._batch_key(other) == key and rows + self._rows_of(other) <= limit:
                        self._waiting.remove(other)
                        batch.append(other)
                        rows += self._rows_of(other)
        self._run_batch(batch)

    def _finish_job(self, job: GenerationJob, final: Event | None) -> None:
        # The slot is freed before the last event, so a client that saw it can send the next request.
        self._release_slot()
        if final is not None:
            job.emit(final)

    def _run_batch(self, jobs: list[GenerationJob]) -> None:
        """Generate for jobs that share a model and sampling settings; each gets Started, its
        Deltas and Done (as soon as its own rows are finished) or Failed."""
        prepared: list[tuple[GenerationJob, list[tuple[list[int], int, list[str]]]]] = []
        # Every job of a batch names the same model (see _batch_key) and is prepared here, on the
        # worker thread, where no load or unload can run in between: they all see this one Adapter.
        adapter: Adapter | None = None
        for job in jobs:
            try:
                if job.cancelled.is_set():
                    self._finish_job(job, None)
                    continue
                adapter, prompts = self._prepare(job)
                prepared.append((job, prompts))
            except APIError as err:
                self._finish_job(job, Failed(err))
            except Exception as err:
                log.exception("preparing a generation failed")
                self._finish_job(job, Failed(self._internal(err)))
        if not prepared:
            return
        left: dict[int, int] = {}  # id(job) -> rows not finished yet
        tokens: dict[int, int] = {}  # id(job) -> completion tokens
        finished_jobs: set[int] = set()
        try:
            model = self._model_for(adapter)
            # One generate() call per group of rows: a seeded job one call per prompt (the seed is
            # set before each, as before batching); other rows up to max_batch_size at a time.
            groups: list[list[tuple[GenerationJob, int, list[int], int, list[str]]]] = []
            current: list[tuple[GenerationJob, int, list[int], int, list[str]]] = []
            for job, prompts in prepared:
                left[id(job)] = self._rows_of(job)
                tokens[id(job)] = 0
                for number, (ids, max_tokens, stops) in enumerate(prompts):
                    rows = [
                        (job, number * job.params.n + c, ids, max_tokens, stops) for c in range(job.params.n)
                    ]
                    if job.params.seed is not None:
                        groups.append(rows)
                        continue
                    if current and len(current) + len(rows) > self.settings.max_batch_size:
                        groups.append(current)
                        current = []
                    current.extend(rows)
            if current:
                groups.append(current)
            for group in groups:
                if self._closing.is_set():
                    break
                live = [row for row in group if not row[0].cancelled.is_set()]
                if not live:
                    continue
                counts = self._generate_rows(model, live)
                for (job, *_), count in zip(live, counts, strict=True):
                    tokens[id(job)] += count
                    left[id(job)] -= 1
                for job, prompts in prepared:
                    if left[id(job)] <= 0 and id(job) not in finished_jobs:
                        finished_jobs.add(id(job))
                        self._finish_job(job, Done(sum(len(p[0]) for p in prompts), tokens[id(job)]))
        except APIError as err:
            failure: APIError | None = err
        except Exception as err:
            log.exception("generation failed")
            failure = self._internal(err)
            if device_broken(err):
                self.device_failed = True
                # A CUDA error (a device-side assert) leaves the context unusable: every later call
                # would fail too. Say so where orchestrators look (readiness) instead of serving 500s.
                self._set_state(
                    ModelState.FAILED,
                    f"the device failed during generation ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); restart the model server",
                )
        else:
            failure = None
        for job, prompts in prepared:
            if id(job) in finished_jobs:
                continue
            if failure is not None:
                self._finish_job(job, Failed(failure))
            else:  # cancelled, or the server is closing: what was generated is counted
                self._finish_job(job, Done(sum(len(p[0]) for p in prompts), tokens.get(id(job), 0)))

    @staticmethod
    def _internal(err: Exception) -> APIError:
        return APIError(500, f"generation failed: {type(err).__name__}: {err}", "InternalServerError")

    def _prepare(self, job: GenerationJob) -> tuple[Adapter | None, list[tuple[list[int], int, list[str]]]]:
        """The adapter that answers (None: the base model) and per prompt: token ids, max_tokens,
        implicit stops; emits Started (with that adapter's digest)."""
        if self.state is not ModelState.READY:
            self.require_ready()
        adapter = None
        if job.model != self.model_name:
            adapter = self._adapters.get(job.model)
            if adapter is None:  # unloaded while this request waited
                raise APIError(404, f"The model `{job.model}` does not exist.", "NotFoundError", "model")
        params = job.params
        prepared = []
        texts = []
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
            prepared.append((ids, max_tokens, stops))
            texts.append(text)
        job.emit(
            Started(
                sum(len(p[0]) for p in prepared),
                texts,
                [p[0] for p in prepared],
                [prompt.forced for prompt in job.prompts],
                (adapter.digest or None) if adapter is not None else None,
            )
        )
        return adapter, prepared

    def _model_for(self, adapter: Adapter | None) -> Any:
        """The module that answers with ``adapter``: the base model (None: adapters off), a merged
        copy of a hot adapter, or the base model with the adapter active (PEFT's unmerged forward).
        It takes the Adapter object _prepare found, not its name, so the weights that answer are
        the ones whose digest Started reported."""
        model = self._model
        if adapter is None:
            if self._adapters:
                model.disable_adapters()
            return model
        name = adapter.name
        key = adapter.internal  # unique per load: a reloaded name never finds an old copy
        loaded = {a.internal for a in self._adapters.values()}
        for stale in [k for k in self._merged if k not in loaded]:
            del self._merged[stale]
        if key in self._merged:
            self._merged.move_to_end(key)
            return self._merged[key]
        if self.settings.merged_adapters > 0 and key not in self._unmergeable:
            started = time.monotonic()
            try:
                merged, size = merged_copy(model, key)
            except NotMergeable as err:
                self._unmergeable.add(key)
                log.info("adapter %s is served unmerged: %s", name, err, extra={"adapter": name})
            else:
                while len(self._merged) >= self.settings.merged_adapters:
                    self._merged.popitem(last=False)
                self._merged[key] = merged
                log.info(
                    "merged adapter %s into a copy of the model in %.2f s (%.0f MB of merged weights)",
                    name,
                    time.monotonic() - started,
                    size / 2**20,
                    extra={"adapter": name},
                )
                return merged
        model.enable_adapters()
        model.set_adapter(adapter.internal)
        return model

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
        if template == DEFAULT_CHAT_TEMPLATE:
            # Renders the same without tools; with tools it writes them and the calls (toolcalls.py).
            template = DEFAULT_TOOL_CHAT_TEMPLATE
        messages, tools = prompt.messages or [], prompt.tools
        if not template_knows_tools(template) and (
            tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        ):
            messages, tools = fold_tools(messages, tools), None
        # chat_template_kwargs are variables for the template, never apply_chat_template's own options.
        own = inspect.signature(tokenizer.apply_chat_template).parameters
        variables = {k: v for k, v in prompt.template_kwargs.items() if k not in own}
        try:
            text = tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                tools=tools,
                add_generation_prompt=prompt.add_generation_prompt,
                tokenize=False,
                **variables,
            )
        except Exception as err:  # jinja raises on conversations a template refuses (role order …)
            raise bad_request(f"the chat template cannot render these messages: {err}", "messages") from None
        text += prompt.forced
        # As transformers' apply_chat_template(tokenize=True) and vLLM do: the template writes
        # any BOS itself, so no special tokens are added here.
        return tokenizer(text, add_special_tokens=False).input_ids, text, implicit_stops(template)

    def _generate_rows(
        self, model: Any, rows: list[tuple[GenerationJob, int, list[int], int, list[str]]]
    ) -> list[int]:
        """One generate() call over rows (job, choice index, prompt ids, max_tokens, implicit stops),
        left-padded to one length; returns the completion tokens of each row."""
        import transformers

        torch = self._torch
        first = rows[0][0]
        params = first.params
        specs = []
        for job, index, _, max_tokens, implicit in rows:

            def emit(
                i: int,
                text: str,
                finish: str | None,
                stop_reason: str | None,
                ids: list[int],
                lps: list[TokenLogprob] | None,
                job: GenerationJob = job,
            ) -> None:
                job.emit(Delta(i, text, finish, stop_reason, ids, lps))

            specs.append(
                RowSpec(
                    emit,
                    index,
                    max_tokens,
                    job.params.stop,
                    implicit,
                    job.logprobs,
                    job.want_ids,
                    job.cancelled.is_set,
                )
            )
        tracker = Rows(self._tokenizer, specs, set(self._eos_ids))
        self.largest_batch = max(self.largest_batch, len(rows))
        width = max(len(row[2]) for row in rows)
        device = model.device
        input_ids = torch.tensor(
            [[self._pad_id] * (width - len(row[2])) + row[2] for row in rows], dtype=torch.long, device=device
        )
        mask = torch.tensor(
            [[0] * (width - len(row[2])) + [1] * len(row[2]) for row in rows], dtype=torch.long, device=device
        )
        config = self._generation_config(params, max(row[3] for row in rows))
        if params.seed is not None:
            torch.manual_seed(params.seed)  # the global RNG: safe because generation is serialised
        hook = (
            model.register_forward_hook(LogitsCapture(tracker), with_kwargs=True)
            if tracker.logprobs_wanted
            else None
        )
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=config,
                    stopping_criteria=transformers.StoppingCriteriaList(
                        [RowsCriteria(tracker, self._closing.is_set)]
                    ),
                )
        finally:
            if hook is not None:
                hook.remove()
        tracker.finish_all(self._closing.is_set())
        return [len(t) for t in tracker.tokens]

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
