"""actors/embedder.py with the bundled all-MiniLM-L6-v2 model (loaded once per module)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from actors.embedder import (
    EmbedStats,
    Embedder,
    cpu_has_native_bf16,
    release_free_memory,
    resolve_dtype,
    resolve_model_path,
)

DIM = 384

SENTENCES = [
    "A desert planet, a noble family and a precious spice.",
    "The cat sat on the mat.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "Hi",
    "naïve café ☕ – 日本語のテキストも含む",
    "",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    # float32 explicitly: these tests compare vectors to sentence-transformers at 1e-5
    return Embedder(model="default", device="cpu", threads=2, dtype="float32")


def delta(embedder: Embedder, fn):
    before = EmbedStats(**embedder.stats.as_dict())
    out = fn()
    after = embedder.stats
    return out, {f: getattr(after, f) - getattr(before, f) for f in EmbedStats.__slots__}


def long_text(words: int = 400) -> str:
    return " ".join(f"word{i % 50}" for i in range(words))


# -- model basics ------------------------------------------------------------------


def test_model_properties(embedder):
    assert embedder.dimension == DIM
    assert embedder.max_length == 256  # from sentence_bert_config.json
    assert embedder.device.type == "cpu"
    assert embedder.dtype_name == "float32"
    assert embedder.max_batch_tokens >= embedder.max_length


def test_vectors_are_unit_float32(embedder):
    out = embedder.embed(SENTENCES)
    assert out.shape == (len(SENTENCES), DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(out))


def test_empty_input(embedder):
    out, d = delta(embedder, lambda: embedder.embed([]))
    assert out.shape == (0, DIM) and out.dtype == np.float32
    assert d["forward_passes"] == 0 and d["texts"] == 0


def test_different_texts_give_different_vectors(embedder):
    out = embedder.embed(SENTENCES[:3])
    sims = out @ out.T
    assert np.all(sims[~np.eye(3, dtype=bool)] < 0.99)


def test_identical_texts_embedded_once(embedder):
    texts = ["same text", "other text", "same text", "same text", "other text"]
    out, d = delta(embedder, lambda: embedder.embed(texts))
    assert d["texts"] == 5
    assert d["unique_texts"] == 2
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])
    np.testing.assert_array_equal(out[1], out[4])
    assert not np.array_equal(out[0], out[1])


def test_same_text_same_vector_across_calls(embedder):
    a = embedder.embed(["repeatable"])
    b = embedder.embed(["repeatable", "with company of a much longer sentence around it"])
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)


def test_matches_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    texts = SENTENCES[:5] + [long_text(400)]
    st = SentenceTransformer(resolve_model_path("default"), device="cpu")
    expected = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    got = embedder.embed(texts)
    assert expected.shape == got.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bfloat16_vectors_agree_with_float32(embedder):
    """What ``dtype = "auto"`` picks on CPUs with native bf16: same ranking, cosine >= 0.999."""
    texts = SENTENCES[:5] + [long_text(400), long_text(60)]
    bf16 = Embedder(model="default", device="cpu", threads=2, dtype="bfloat16")
    got = bf16.embed(texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    reference = embedder.embed(texts)
    assert np.min(np.sum(got * reference, axis=1)) >= 0.999
    query = embedder.embed(["a family and a spice on a desert planet"])[0]
    assert np.argmax(got @ query) == np.argmax(reference @ query) == 0


def test_auto_dtype_follows_the_hardware():
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    for explicit in ("float32", "float16", "bfloat16"):
        assert resolve_dtype(explicit, "cpu") == resolve_dtype(explicit, "cuda") == explicit


def test_native_bf16_probe_matches_cpu_flags():
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:  # the project runs on Linux (CI included)
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    assert flags, "no CPU flags in /proc/cpuinfo"
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


# -- truncation ------------------------------------------------------------------------


def test_long_text_is_truncated_and_counted(embedder):
    text = long_text(600)
    ids, truncated = embedder.tokenize([text, "short"])
    assert truncated == 1
    assert len(ids[0]) == embedder.max_length
    assert ids[0][0] == embedder.tokenizer.cls_token_id and ids[0][-1] == embedder.tokenizer.sep_token_id
    out, d = delta(embedder, lambda: embedder.embed([text, "short"]))
    assert d["truncated"] == 1
    assert d["tokens"] == embedder.max_length + len(ids[1])
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, atol=1e-5)


def test_text_beyond_the_limit_does_not_change_the_vector(embedder):
    base = long_text(400)
    out = embedder.embed([base, base + " completely different tail about oceans and ships"])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_short_text_not_counted_as_truncated(embedder):
    _, d = delta(embedder, lambda: embedder.embed(["short one", "another short one"]))
    assert d["truncated"] == 0


# -- batching ---------------------------------------------------------------------------


def test_output_order_matches_input_after_length_sorting(embedder, monkeypatch):
    texts = [long_text(n) for n in (12, 3, 30, 1, 20, 6, 8)] + ["z"]
    singles = np.stack([embedder.embed([t])[0] for t in texts])
    monkeypatch.setattr(embedder, "batch_size", 2)
    monkeypatch.setattr("actors.embedder.MAX_PADDING_FRACTION", 1.0)  # cut by count only
    out, d = delta(embedder, lambda: embedder.embed(texts))
    assert d["forward_passes"] == 4  # 8 distinct texts, 2 per pass
    np.testing.assert_allclose(out, singles, atol=1e-5)
    # a permutation of the input permutes the output the same way
    perm = list(reversed(range(len(texts))))
    out2 = embedder.embed([texts[i] for i in perm])
    np.testing.assert_allclose(out2, out[perm], atol=1e-5)


def test_padded_tokens_counted_per_pass(embedder, monkeypatch):
    texts = ["a b c d e f g h", "a", "a b"]
    ids, _ = embedder.tokenize(texts)
    lengths = sorted(len(x) for x in ids)
    monkeypatch.setattr(embedder, "batch_size", 2)
    monkeypatch.setattr("actors.embedder.MAX_PADDING_FRACTION", 1.0)  # cut by count only
    _, d = delta(embedder, lambda: embedder.embed(texts))
    # passes: [two shortest], [longest]
    assert d["padded_tokens"] == 2 * lengths[1] + lengths[2]
    assert d["tokens"] == sum(lengths)


def bare(batch_size: int, max_batch_tokens: int) -> Embedder:
    e = Embedder.__new__(Embedder)  # plan_batches needs no model
    e.batch_size = batch_size
    e.max_batch_tokens = max_batch_tokens
    return e


def check_plan(batches: list[list[int]], lengths: list[int], batch_size: int, budget: int) -> None:
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(b for b in batches)
    for b in batches:
        assert len(b) <= batch_size
        assert len(b) * max(lengths[i] for i in b) <= budget or len(b) == 1
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    widths = [lengths[i] for i in flat]
    assert widths == sorted(widths)  # passes go shortest to longest


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("batch_size", "budget"), [(1, 512), (4, 64), (8, 256), (64, 16384), (3, 100)])
def test_plan_batches_random(seed, batch_size, budget):
    rng = random.Random(seed * 31 + batch_size)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(0, 120))]
    batches = bare(batch_size, budget).plan_batches(lengths)
    check_plan(batches, lengths, batch_size, budget)


def test_plan_batches_cut_by_batch_size():
    assert bare(2, 10_000).plan_batches([5, 5, 5, 5, 5]) == [[0, 1], [2, 3], [4]]


def test_plan_batches_cut_by_token_budget():
    # budget 100: 10 texts of 10 tokens fit; a width-50 text allows 2 per pass
    lengths = [10] * 10 + [50, 50, 50]
    batches = bare(64, 100).plan_batches(lengths)
    assert batches == [list(range(10)), [10, 11], [12]]


def test_plan_batches_sorts_by_length():
    assert bare(2, 1000).plan_batches([30, 28, 29, 27]) == [[3, 1], [2, 0]]


def test_plan_batches_cuts_before_padding_dominates():
    # 5 and 10 in one pass would be 25 % padding (> 10 %): separate passes;
    # 27 and 29 pad 3 %: together
    assert bare(8, 1000).plan_batches([29, 10, 27, 5]) == [[3], [1], [2, 0]]
    lengths = [8] * 10 + [200] * 3
    batches = bare(64, 16384).plan_batches(lengths)
    assert batches == [list(range(10)), [10, 11, 12]]


def test_plan_passes_evens_out_over_the_workers():
    e = bare(64, 4096)
    e.workers = 2
    long = [136] * 72  # the budget alone gives passes of 30, 30 and 12
    assert [len(b) for b in e.plan_batches(long)] == [30, 30, 12]
    evened = e.plan_passes(long)
    assert [len(b) for b in evened] == [18, 18, 18, 18]
    assert sorted(i for b in evened for i in b) == list(range(72))
    # already a multiple of the workers, or a single worker: the plan is kept
    assert e.plan_passes([10] * 256) == e.plan_batches([10] * 256)
    assert e.plan_passes(long, workers=1) == e.plan_batches(long)  # an explicit count wins
    e.workers = 1
    assert e.plan_passes(long) == e.plan_batches(long)


def test_plan_passes_caps_a_pass_the_padding_rule_left_large():
    e = bare(64, 16384)
    e.workers = 2
    lengths = [100] * 14 + [130] * 2  # padding cuts after the 14 short ones: passes of 14 and 2
    assert [len(b) for b in e.plan_batches(lengths)] == [14, 2]
    evened = e.plan_passes(lengths)
    assert max(len(b) for b in evened) == 8
    assert sorted(i for b in evened for i in b) == list(range(16))


def test_plan_passes_splits_a_small_call_for_two_workers():
    e = bare(64, 4096)
    e.workers = 2
    assert [len(b) for b in e.plan_passes([12] * 3)] == [2, 1]
    assert e.plan_passes([12]) == [[0]]
    assert e.plan_passes([]) == []


def test_plan_batches_empty():
    assert bare(4, 100).plan_batches([]) == []


def test_plan_batches_single_oversized_text_gets_own_pass():
    batches = bare(8, 64).plan_batches([10, 100, 10])
    assert batches == [[0, 2], [1]]


def test_forward_passes_run_on_the_single_thread_model_workers_whoever_calls(embedder, monkeypatch):
    """A threaded Ray actor calls from several threads; the passes still run only on
    the embedder's model workers (threads=2: two workers of one torch thread each),
    never on a caller's thread, and each worker keeps its own torch thread count."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    assert (embedder.workers, embedder.threads_per_worker) == (2, 1)
    seen: dict[int, int] = {}
    forward = embedder._forward

    def recording_forward(input_ids, mask):
        seen[threading.get_ident()] = torch.get_num_threads()
        return forward(input_ids, mask)

    monkeypatch.setattr(embedder, "_forward", recording_forward)
    callers = ThreadPoolExecutor(max_workers=3)
    texts = [f"caller thread text {i}" for i in range(12)]
    results = list(callers.map(lambda t: embedder.embed([t]), texts))
    results.append(embedder.embed(["from the test's own thread"]))
    callers.shutdown()
    assert 1 <= len(seen) <= 2 and threading.get_ident() not in seen
    assert set(seen.values()) == {1}
    assert all(r.shape == (1, DIM) for r in results)


def test_passes_of_one_call_run_in_parallel_on_the_workers(embedder, monkeypatch):
    """Two passes of one call must be in the model at the same time (a barrier
    of two is only passed then); the result is still in input order."""
    import threading

    together = threading.Barrier(2, timeout=30)
    forward = embedder._forward

    def meeting_forward(input_ids, mask):
        together.wait()
        return forward(input_ids, mask)

    texts = ["short one", "a somewhat longer text than the short one, to get a pass of its own " * 3]
    expected = embedder.embed(texts)
    monkeypatch.setattr(embedder, "_forward", meeting_forward)
    monkeypatch.setattr(embedder, "batch_size", 1)  # one pass per text
    got = embedder.embed(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_threads_per_worker_makes_fewer_wider_workers():
    wide = Embedder(model="default", device="cpu", threads=2, dtype="float32", threads_per_worker=2)
    assert (wide.workers, wide.threads_per_worker) == (1, 2)
    assert wide._model_pool.submit(__import__("torch").get_num_threads).result() == 2
    assert wide.embed(["one text"]).shape == (1, DIM)


# -- huge texts ----------------------------------------------------------------------------


class _RecordingTokenizer:
    """The embedder's tokenizer, recording the length of every text it is given."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self._tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_a_100_mb_text_costs_what_a_max_length_text_does(embedder, monkeypatch):
    import time
    import tracemalloc

    from actors.embedder import CHARS_PER_TOKEN

    huge = "lorem ipsum dolor sit amet, " * (100_000_000 // 28)  # 100 MB, ~20M tokens
    recording = _RecordingTokenizer(embedder.tokenizer)
    monkeypatch.setattr(embedder, "tokenizer", recording)
    window = embedder.max_length * CHARS_PER_TOKEN
    started = time.perf_counter()
    tracemalloc.start()
    try:
        (out,), d = delta(embedder, lambda: (embedder.embed([huge]),))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    # the tokenizer read a bounded head, not the 100 MB (which took ~80 s and ~13 GiB here)
    assert recording.lengths and max(recording.lengths) <= window
    assert peak < 20 << 20, peak  # the whole text's token ids alone would be ~1 GB of Python ints
    assert seconds < 30, seconds  # generous: a max-length text takes well under a second
    assert d["truncated"] == 1 and d["tokens"] == embedder.max_length
    # and the vector is the one of the text's first max_length tokens
    np.testing.assert_allclose(out[0], embedder.embed([huge[: 2 * window]])[0], atol=1e-6)


def test_a_head_of_whitespace_is_read_further_until_there_are_tokens(embedder, monkeypatch):
    from actors.embedder import CHARS_PER_TOKEN

    text = " " * (embedder.max_length * CHARS_PER_TOKEN * 3) + "a desert planet and a noble family"
    recording = _RecordingTokenizer(embedder.tokenizer)
    monkeypatch.setattr(embedder, "tokenizer", recording)
    out = embedder.embed([text, "a desert planet and a noble family"])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert max(recording.lengths) <= len(text)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_release_free_memory_hands_freed_heap_pages_back():
    # many small blocks (below the mmap threshold: they live in the heap), freed all but every
    # 64th: the survivors pin the heap's top, so free() alone cannot shrink it; trimming can
    import ctypes

    if not release_free_memory():
        pytest.skip("not glibc: no malloc_trim")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    release_free_memory()
    blocks = [libc.malloc(16 << 10) for _ in range(8192)]  # 128 MiB
    for b in blocks:
        ctypes.memset(b, 1, 16 << 10)
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    before = _rss_mib()
    assert release_free_memory()
    after = _rss_mib()
    for b in blocks[::64]:
        libc.free(b)
    assert before - after > 64, (before, after)


def test_embedding_calls_trim_at_most_once_per_interval(embedder, monkeypatch):
    import actors.embedder as module

    calls = []
    monkeypatch.setattr(module, "release_free_memory", lambda: calls.append(1) or True)
    embedder._trimmed_at = 0.0
    embedder.embed(["one"])
    embedder.embed(["two"])
    assert len(calls) == 1  # the second call came well within TRIM_INTERVAL_S
    embedder._trimmed_at -= module.TRIM_INTERVAL_S
    embedder.embed(["three"])
    assert len(calls) == 2


def test_the_null_model_gives_the_same_unit_vector_for_the_same_text_without_a_model():
    from actors.embedder import NULL_MODEL, EmbeddingConfig, NullEmbedder, model_dimension

    null = Embedder.from_config(EmbeddingConfig(model=NULL_MODEL))
    assert isinstance(null, NullEmbedder) and model_dimension(NULL_MODEL) == null.dimension == DIM
    vectors = null.embed(["a", "b", "a", ""])
    assert vectors.shape == (4, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    assert np.array_equal(NullEmbedder().embed(["a"])[0], vectors[0])  # the same in every process
    assert null.stats.texts == 4 and null.stats.unique_texts == 3
    assert null.embed([]).shape == (0, DIM)
