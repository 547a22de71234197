"""Embedding throughput: our Embedder / EmbeddingActor pool vs. the usual alternatives.

Run::

    python -m benchmarks.bench_embed            # default run, < 10 min on 2 cores
    python -m benchmarks.bench_embed --quick    # < 3 min on 2 cores
    python -m benchmarks.bench_embed --max-actors 4 --trials 5 --out benchmarks/results/embed_cpu.json

Three synthetic workloads (deterministic pseudo-English from a fixed word list
and a seeded RNG, every text unique): ``short`` (~15 words), ``mixed`` (5 to 180
words) and ``long`` (~120 words).  On the same texts, in the same run, with the
same number of torch threads for every contender:

(a) ``one-per-call``: ``Embedder.embed([t])`` in a loop, the way a naive CDC demo
    embeds each change as it arrives, on one torch thread team of all threads
    (what a plain program gets);
(b) ``sentence-transformers``: ``SentenceTransformer.encode(texts, batch_size=B,
    normalize_embeddings=True)`` for several B, best one reported;
(c) ``ours``: ``Embedder.embed(texts)`` in process at several batch_size /
    max_batch_tokens settings;
(d) ``actors xN``: N ``EmbeddingActor`` Ray actors (threads = cores // N each)
    fed chunks of texts in parallel (dynamic: an actor that finishes gets the
    next chunk), including the Ray transport of texts and vectors.

Every contender runs at each precision of ``--dtypes``: float32, and also
bfloat16 where the CPU multiplies bf16 natively (AVX512-BF16 / AMX), since that
is what ``embedding.dtype = "auto"`` runs there.  Ratios are reported at the same
precision (what batching and scheduling alone give) and "as configured" (the
auto precision against the usual float32 ways).

Contenders run interleaved (round-robin per trial) so load from other
processes on a shared machine hits all of them alike.  Rates are sentences/s
and tokens/s, tokens counted without padding (after truncation to the model's
max_length).  Results: JSON + PNG next to it + a table on stdout.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import (
    RESULTS_DIR,
    Case,
    CLEAN_MAX_OTHER_CORES,
    TrialResult,
    Trials,
    result_header,
    init_ray,
    machine_info,
    plot_bars,
    print_table,
    usable_cores,
    write_json,
)

# fmt: off
WORDS = (
    "the of and to in is was for on that with as by at from his her it an be this are which or had not but "
    "were have one all their they there been has when who more would she will also into its time other "
    "after first new years people two over city war state world government river house school family "
    "music film book history water light story night mountain village garden market king queen army ship "
    "train road bridge island forest winter summer morning evening letter paper language science theory "
    "system energy planet star machine engine computer network signal memory question answer problem "
    "method result model value price company worker farmer doctor teacher student child mother father "
    "friend stranger traveller soldier captain scientist artist writer reader player singer dancer "
    "ancient modern famous quiet strange bright dark cold warm heavy small large young old early late "
    "green red blue golden silver broken hidden secret public private simple complex careful sudden "
    "builds carries finds loses remembers discovers explores follows leaves returns sends opens closes "
    "grows changes begins ends moves writes reads sings plays fights saves watches learns teaches "
    "under above between through across around behind beyond during without against toward within "
    "slowly quickly quietly suddenly finally nearly almost always never often sometimes together "
    "alien empire desert ocean harbour castle tower library museum station kingdom colony journey "
    "voyage battle treaty festival harvest storm fire stone iron glass wood salt coffee bread wine"
).split()
# fmt: on

WORKLOADS = ("short", "mixed", "long")


def make_texts(kind: str, n: int, seed: int = 1234) -> list[str]:
    """``n`` unique pseudo-English texts; the same for the same (kind, n, seed)."""
    rng = random.Random(f"{kind}:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        if kind == "short":
            words = rng.randint(10, 20)
        elif kind == "long":
            words = rng.randint(100, 140)
        elif kind == "mixed":
            r = rng.random()
            words = rng.randint(5, 25) if r < 0.5 else rng.randint(26, 80) if r < 0.85 else rng.randint(81, 180)
        else:
            raise ValueError(kind)
        parts: list[str] = []
        left = words
        while left > 0:
            k = min(left, rng.randint(6, 16))
            sentence = [rng.choice(WORDS) for _ in range(k)]
            if k > 8 and rng.random() < 0.4:
                sentence[rng.randint(2, k - 3)] += ","
            sentence[0] = sentence[0].capitalize()
            parts.append(" ".join(sentence) + ".")
            left -= k
        text = " ".join(parts)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


# -- contenders --------------------------------------------------------------


def actor_pool_runner(actors: list[Any], texts: list[str], chunk: int, in_flight: int = 2) -> Callable[[], int]:
    """A callable that embeds ``texts`` on ``actors``: chunks, at most ``in_flight`` per actor
    (the actor's max_concurrency, as the pipeline sets it)."""
    import ray

    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]

    def run() -> int:
        queue = list(range(len(chunks)))[::-1]
        pending: dict[Any, tuple[Any, int]] = {}
        done = 0
        for actor in actors:
            for _ in range(in_flight):
                if queue:
                    i = queue.pop()
                    pending[actor.embed.remote(chunks[i])] = (actor, i)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor, i = pending.pop(ref)
            vectors = ray.get(ref)
            done += len(vectors)
            if queue:
                j = queue.pop()
                pending[actor.embed.remote(chunks[j])] = (actor, j)
        assert done == len(texts), (done, len(texts))
        return done

    return run


TAGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def main(argv: list[str] | None = None) -> int:
    from actors.embedder import cpu_has_native_bf16, resolve_dtype

    native_bf16 = cpu_has_native_bf16()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_embed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small workloads, fewer settings (< 3 min on 2 cores)")
    ap.add_argument("--out", default=None, help="JSON result path (PNG written next to it)")
    ap.add_argument("--max-actors", type=int, default=0, help="largest actor pool (default: cores)")
    ap.add_argument("--trials", type=int, default=0, help="timed trials per contender (default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per contender (default: cores)")
    ap.add_argument("--chunk", type=int, default=64, help="texts per actor call (default 64)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--no-actors", action="store_true", help="skip the Ray actor pool")
    ap.add_argument(
        "--dtypes", default="float32,bfloat16" if native_bf16 else "float32",
        help="comma-separated precisions; every contender runs at each (default: float32, plus bfloat16 "
             "where the CPU has native bf16, which is what embedding.dtype = auto picks there)",
    )
    args = ap.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in TAGS:
            ap.error(f"--dtypes: unknown precision {d!r} (choose from {', '.join(TAGS)})")
    if "float32" not in dtypes:
        dtypes.insert(0, "float32")  # the baseline every ratio refers to

    logging.basicConfig(level=logging.WARNING)
    cores = usable_cores()
    threads = args.threads or cores
    max_actors = args.max_actors or cores
    trials = args.trials or (2 if args.quick else 3)
    out = Path(args.out) if args.out else RESULTS_DIR / ("embed_cpu_quick.json" if args.quick else "embed_cpu.json")
    sizes = {"short": 96, "mixed": 48, "long": 16} if args.quick else {"short": 384, "mixed": 192, "long": 72}
    st_batches = [16, 64] if args.quick else [16, 32, 64, 128]
    our_settings = (
        [(64, 16384), (64, 4096)]
        if args.quick
        else [(32, 16384), (64, 16384), (128, 8192), (64, 4096)]
    )
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    machine = machine_info()
    auto_dtype = resolve_dtype("auto", "cpu")

    import torch

    from actors.embedder import Embedder, model_workers, pin_torch_threads, resolve_model_path

    pin_torch_threads(threads)  # sentence-transformers runs on this thread
    model_path = resolve_model_path(args.model)
    embedders = {d: Embedder(model=args.model, device="cpu", threads=threads, dtype=d) for d in dtypes}
    # (a) embeds one text per torch call on one team of every thread, as a
    # plain program does (torch's default); our workers split threads instead
    single_team = {d: Embedder(model=args.model, device="cpu", threads=threads, dtype=d, threads_per_worker=threads)
                   for d in dtypes}
    embedder = embedders["float32"]  # tokenizer, batching plan and padding are the same for every dtype
    default_bs, default_mbt = embedder.batch_size, embedder.max_batch_tokens
    from sentence_transformers import SentenceTransformer

    st_models = {}
    for d in dtypes:
        st_models[d] = SentenceTransformer(model_path, device="cpu")
        if d != "float32":
            st_models[d].to(getattr(torch, d))
    st_model = st_models["float32"]
    pin_torch_threads(threads)  # in case a library changed it
    if st_model.max_seq_length != embedder.max_length:
        print(f"note: sentence-transformers max_seq_length {st_model.max_seq_length} != ours {embedder.max_length}")

    texts = {kind: make_texts(kind, sizes[kind]) for kind in WORKLOADS}
    tokens: dict[str, int] = {}
    words: dict[str, float] = {}
    truncated: dict[str, int] = {}
    for kind, tx in texts.items():
        ids, trunc = embedder.tokenize(tx)
        tokens[kind] = sum(len(x) for x in ids)
        truncated[kind] = trunc
        words[kind] = round(statistics.mean(len(t.split()) for t in tx), 1)

    def set_ours(e: Embedder, bs: int, mbt: int) -> None:
        # the two knobs are plain attributes read by plan_batches(); one model, no reload
        e.batch_size = bs
        e.max_batch_tokens = max(mbt, e.max_length)

    cases: list[Case] = []
    meta: dict[str, dict[str, Any]] = {}  # case name -> contender, workload, dtype, params

    def add(contender: str, kind: str, fn: Callable[[], Any], warm: Callable[[], Any], **params: Any) -> None:
        name = f"{contender} | {kind}"
        cases.append(Case(name, fn, len(texts[kind]), warm))
        meta[name] = {"contender": contender, "workload": kind, **params}

    for d in dtypes:
        tag, emb, st, naive = TAGS[d], embedders[d], st_models[d], single_team[d]
        for kind in WORKLOADS:
            tx = texts[kind]
            warm_tx = tx[:16]

            def one_per_call(tx: list[str] = tx, emb: Embedder = naive) -> None:
                for t in tx:
                    emb.embed([t])

            add(f"one-per-call {tag}", kind, one_per_call,
                lambda w=warm_tx, emb=naive: [emb.embed([t]) for t in w], kind_="a", dtype=d)
            for b in st_batches:
                def st_run(tx: list[str] = tx, b: int = b, st: Any = st) -> None:
                    st.encode(tx, batch_size=b, normalize_embeddings=True, show_progress_bar=False,
                              convert_to_numpy=True)

                def st_warm(w: list[str] = tx[:b], b: int = b, st: Any = st) -> None:
                    st.encode(w, batch_size=b, normalize_embeddings=True, show_progress_bar=False)

                add(f"sentence-transformers bs={b} {tag}", kind, st_run, st_warm, kind_="b", batch_size=b,
                    dtype=d)
            for bs, mbt in our_settings:
                def ours(tx: list[str] = tx, bs: int = bs, mbt: int = mbt, emb: Embedder = emb) -> None:
                    set_ours(emb, bs, mbt)
                    emb.embed(tx)

                def ours_warm(w: list[str] = tx[:bs], bs: int = bs, mbt: int = mbt, emb: Embedder = emb) -> None:
                    set_ours(emb, bs, mbt)
                    emb.embed(w)

                add(f"ours bs={bs} mbt={mbt} {tag}", kind, ours, ours_warm, kind_="c", batch_size=bs,
                    max_batch_tokens=mbt, dtype=d)

    pools: dict[tuple[str, int], list[Any]] = {}
    in_flight: dict[tuple[str, int], int] = {}  # calls per actor at once, as the pipeline allows
    ray_started = None
    if not args.no_actors:
        import ray

        from actors.remote import EmbeddingActor, embedding_actor_concurrency, embedding_runtime_env
        from actors.embedder import EmbeddingConfig

        t0 = time.perf_counter()
        init_ray(num_cpus=cores)
        for d in dtypes:
            config = EmbeddingConfig(model=args.model, device="cpu", dtype=d)
            for n in range(1, max_actors + 1):
                per_actor = max(1, cores // n)
                # num_cpus=0: every pool stays alive for the interleaved rounds and
                # only one pool works at a time, so reservations would only block.
                pools[(d, n)] = [
                    EmbeddingActor.options(
                        num_cpus=0, runtime_env=embedding_runtime_env(),
                        max_concurrency=embedding_actor_concurrency(per_actor, config.threads_per_worker),
                    ).remote(config, per_actor, "WARNING")
                    for _ in range(n)
                ]
                in_flight[(d, n)] = embedding_actor_concurrency(per_actor, config.threads_per_worker)
        ray.get([a.info.remote() for pool in pools.values() for a in pool])
        ray_started = round(time.perf_counter() - t0, 1)
        for (d, n), pool in pools.items():
            per_actor = max(1, cores // n)
            for kind in WORKLOADS:
                # at least 4 chunks per actor, so the last chunk does not leave the others idle
                chunk = max(1, min(args.chunk, math.ceil(len(texts[kind]) / (4 * n))))
                run = actor_pool_runner(pool, texts[kind], chunk, in_flight[(d, n)])
                warm = actor_pool_runner(pool, texts[kind][: 16 * n], 16, in_flight[(d, n)])
                add(f"actors x{n} ({per_actor} thr) {TAGS[d]}", kind, run, warm, kind_="d", actors=n,
                    threads_per_actor=per_actor, chunk=chunk, dtype=d)

    phases["setup_s"] = round(time.perf_counter() - t_start, 1)
    print(f"{len(cases)} cases x ({trials} trials + 1 small warm-up), {threads} torch threads, dtypes {dtypes}, "
          f"texts {sizes}, tokens {tokens} (setup {phases['setup_s']} s)")
    t0 = time.perf_counter()
    results = Trials(trials=trials, warmup=1).run_interleaved(cases)
    phases["trials_s"] = round(time.perf_counter() - t0, 1)
    for e in embedders.values():
        set_ours(e, default_bs, default_mbt)

    # agreement with sentence-transformers at float32 (same model, same pooling): the
    # float32 Embedder should match it exactly, a bf16 one to ~1e-4
    import numpy as np

    agreement: dict[str, dict[str, float]] = {}
    for d, e in embedders.items():
        agreement[TAGS[d]] = {}
        for kind in WORKLOADS:
            sample = texts[kind][:64]
            a = e.embed(sample)
            b = st_model.encode(sample, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
            agreement[TAGS[d]][kind] = round(float(np.min(np.sum(a * b, axis=1))), 6)

    if pools:
        import ray

        actor_stats = {f"{TAGS[d]} x{n}": ray.get([a.stats.remote() for a in pool]) for (d, n), pool in pools.items()}
        ray.shutdown()
    else:
        actor_stats = {}

    # -- padding: padded tokens / real tokens each contender's batching implies ---------
    ids_by_kind = {kind: [len(x) for x in embedder.tokenize(texts[kind])[0]] for kind in WORKLOADS}

    def padded_ratio(groups: list[list[int]], lengths: list[int]) -> float:
        real = sum(lengths)
        return round(sum(len(g) * max(lengths[i] for i in g) for g in groups) / real, 3) if real else 1.0

    def st_groups(tx: list[str], b: int) -> list[list[int]]:
        # sentence-transformers sorts by character length (longest first), then cuts every b texts
        order = sorted(range(len(tx)), key=lambda i: -len(tx[i]))
        return [order[i : i + b] for i in range(0, len(order), b)]

    padding: dict[str, dict[str, float]] = {}
    for name, m in meta.items():
        kind, lengths = m["workload"], ids_by_kind[m["workload"]]
        if m["kind_"] == "a":
            ratio = 1.0
        elif m["kind_"] == "b":
            ratio = padded_ratio(st_groups(texts[kind], m["batch_size"]), lengths)
        elif m["kind_"] == "c":
            set_ours(embedder, m["batch_size"], m["max_batch_tokens"])
            ratio = padded_ratio(embedder.plan_passes(lengths), lengths)
        else:  # actors: each chunk (input order) is planned separately, config defaults, the actor's workers
            set_ours(embedder, default_bs, default_mbt)
            workers = model_workers(m["threads_per_actor"])[0]
            groups = []
            for start in range(0, len(lengths), m["chunk"]):
                part = lengths[start : start + m["chunk"]]
                groups += [[start + i for i in g] for g in embedder.plan_passes(part, workers)]
            ratio = padded_ratio(groups, lengths)
        padding.setdefault(m["contender"], {})[kind] = ratio
    set_ours(embedder, default_bs, default_mbt)

    # -- summarise -------------------------------------------------------------
    by: dict[str, dict[str, TrialResult]] = {}
    contender_dtype: dict[str, str] = {}
    for name, res in results.items():
        m = meta[name]
        res.extra.update({k: v for k, v in m.items() if k != "kind_"})
        res.extra["tokens_per_trial"] = tokens[m["workload"]]
        res.extra["padded_over_real_tokens"] = padding[m["contender"]][m["workload"]]
        by.setdefault(m["contender"], {})[m["workload"]] = res
        contender_dtype[m["contender"]] = m["dtype"]

    def rate(contender: str, kind: str) -> float:
        return by[contender][kind].headline_rate

    contenders = list(by)

    def names(prefix: str, d: str) -> list[str]:
        return [c for c in contenders if c.startswith(prefix) and contender_dtype[c] == d]

    def best(prefix: str, d: str, kind: str) -> str | None:
        found = names(prefix, d)
        return max(found, key=lambda c: rate(c, kind)) if found else None

    # Same-precision ratios isolate batching and scheduling; the "as configured"
    # ratios compare what `embedding.dtype = auto` runs against the usual float32 ways.
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for d in dtypes:
        tag = TAGS[d]
        ratios[tag] = {}
        default_name = f"ours bs={default_bs} mbt={default_mbt} {tag}"
        for kind in WORKLOADS:
            st_best, ours_best = best("sentence-transformers", d, kind), best("ours", d, kind)
            one = rate(f"one-per-call {tag}", kind)
            r: dict[str, Any] = {
                "sentence_transformers_best": st_best,
                "ours_best": ours_best,
                "ours_best_over_st_best": round(rate(ours_best, kind) / rate(st_best, kind), 3),
                "ours_best_over_one_per_call": round(rate(ours_best, kind) / one, 3),
                "st_best_over_one_per_call": round(rate(st_best, kind) / one, 3),
            }
            if default_name in by:
                r["ours_default"] = default_name
                r["ours_default_over_st_best"] = round(rate(default_name, kind) / rate(st_best, kind), 3)
                r["ours_default_over_one_per_call"] = round(rate(default_name, kind) / one, 3)
            actors_best = best("actors", d, kind)
            if actors_best:
                r["actors_best"] = actors_best
                r["actors_best_over_st_best"] = round(rate(actors_best, kind) / rate(st_best, kind), 3)
                r["actors_best_over_one_per_call"] = round(rate(actors_best, kind) / one, 3)
                r["actors_best_over_ours_best"] = round(rate(actors_best, kind) / rate(ours_best, kind), 3)
            ratios[tag][kind] = r
    as_configured: dict[str, dict[str, Any]] = {}
    if auto_dtype in dtypes:
        for kind in WORKLOADS:
            pool = best("actors", auto_dtype, kind) or best("ours", auto_dtype, kind)
            st_fp32 = best("sentence-transformers", "float32", kind)
            one_fp32 = rate("one-per-call fp32", kind)
            as_configured[kind] = {
                "ours": pool,
                "sentence_transformers_default_precision_best": st_fp32,
                "over_st_best_fp32": round(rate(pool, kind) / rate(st_fp32, kind), 3),
                "over_one_per_call_fp32": round(rate(pool, kind) / one_fp32, 3),
            }

    rows = []
    for c in contenders:
        row: list[Any] = [c]
        for kind in WORKLOADS:
            res = by[c][kind]
            lo, hi = min(res.rates), max(res.rates)
            flag = "" if not res.contaminated else "*"
            row += [f"{res.headline_rate:,.1f}{flag}", tokens[kind] / len(texts[kind]) * res.headline_rate,
                    f"{lo:.0f}-{hi:.0f} ({len(res.clean_rates())}/{len(res.rates)})", padding[c][kind]]
        others = [x for k in WORKLOADS for x in [by[c][k].cpu_median("other_cores")] if x is not None]
        row.append(statistics.median(others) if others else None)
        rows.append(row)
    columns = ["contender"]
    for kind in WORKLOADS:
        columns += [f"{kind} sent/s", f"{kind} tok/s", f"{kind} all trials (clean)", f"{kind} pad"]
    columns.append("others' load (cores)")
    table = print_table(
        f"Embedding throughput ({threads} torch threads, {embedder.model_name}, {machine['cpu_model']}): median "
        f"of the clean trials of {trials} (others' load <= {CLEAN_MAX_OTHER_CORES} cores; * = none clean, best "
        "trial shown); pad = padded/real tokens",
        columns, rows,
    )
    ratio_rows = [
        [tag, k, r["sentence_transformers_best"], r["ours_best"], r["ours_best_over_st_best"],
         r.get("ours_default_over_st_best"), r["ours_best_over_one_per_call"],
         r.get("actors_best", "-"), r.get("actors_best_over_st_best"), r.get("actors_best_over_one_per_call")]
        for tag, per_kind in ratios.items() for k, r in per_kind.items()
    ]
    ratio_table = print_table(
        "Ratios at the same precision (sentences/s)",
        ["dtype", "workload", "ST best", "ours best", "ours/ST", "ours default/ST", "ours/one-per-call",
         "actors best", "actors/ST", "actors/one-per-call"],
        ratio_rows,
    )
    tables = [table, ratio_table]
    if as_configured:
        tables.append(print_table(
            f"As configured (embedding.dtype = auto -> {auto_dtype} on this CPU) vs the usual float32 ways",
            ["workload", "ours", "ST best fp32", "ours/ST fp32", "ours/one-per-call fp32"],
            [[k, r["ours"], r["sentence_transformers_default_precision_best"], r["over_st_best_fp32"],
              r["over_one_per_call_fp32"]] for k, r in as_configured.items()],
        ))

    elapsed = round(time.perf_counter() - t_start, 1)
    data = {
        **result_header("embed", "benchmarks.bench_embed", {**machine, "cpu_native_bf16": native_bf16}),
        "quick": args.quick,
        "elapsed_s": elapsed,
        "contention_note": (
            "others' load = median CPU cores busy with processes outside this benchmark's process tree "
            "during a trial (from /proc/stat); above ~0.2 on a 2-core machine the wall-clock rates are "
            "depressed by sharing the CPU"
        ),
        "model": {
            "name": args.model,
            "path": os.path.basename(os.path.dirname(model_path)) + "/" + os.path.basename(model_path),
            "dimension": embedder.dimension,
            "max_length": embedder.max_length,
            "sentence_transformers_max_seq_length": st_model.max_seq_length,
        },
        # the precision a pipeline with embedding.dtype = auto runs here (benchmarks.sizing uses it)
        "dtype": auto_dtype,
        "dtypes": dtypes,
        "device": str(embedder.device),
        "settings": {
            "torch_threads": threads,
            "trials": trials,
            "warmup": "1 untimed round per contender on a small slice (16..128 texts) of the same workload",
            "order": "interleaved: each trial round runs every contender once",
            "workloads": {
                k: {"texts": len(texts[k]), "mean_words": words[k], "tokens": tokens[k],
                    "mean_tokens": round(tokens[k] / len(texts[k]), 1), "truncated": truncated[k]}
                for k in WORKLOADS
            },
            "sentence_transformers_batch_sizes": st_batches,
            "sentence_transformers_low_precision": "SentenceTransformer(...).to(torch.<dtype>)",
            "ours_settings": [{"batch_size": b, "max_batch_tokens": m} for b, m in our_settings],
            "ours_default": {"batch_size": default_bs, "max_batch_tokens": default_mbt},
            "actor_pools": {f"{TAGS[d]} x{n}": {"actors": n, "threads_per_actor": max(1, cores // n), "dtype": d}
                            for d, n in pools},
            "actor_chunk": f"min({args.chunk}, ceil(texts / (4 x actors))) texts per call, at most "
                           "(model workers + 1) calls in flight per actor (EmbeddingActor max_concurrency, "
                           "as the pipeline creates it)",
            "phases_s": phases,
            "ray_start_and_actor_load_s": ray_started,
        },
        "results": {c: {k: by[c][k].summary() for k in WORKLOADS} for c in contenders},
        "contender_dtype": contender_dtype,
        "headline_note": (
            f"medians_* = median rate of the clean trials (others' load <= {CLEAN_MAX_OTHER_CORES} cores), "
            "or the best trial when no trial was clean; ratios use these; medians_all_trials_* ignore load"
        ),
        # the key benchmarks.sizing reads (per contender and workload): headline rates
        "medians_sentences_per_s": {c: {k: round(rate(c, k), 2) for k in WORKLOADS} for c in contenders},
        "medians_tokens_per_s": {
            c: {k: round(tokens[k] / len(texts[k]) * rate(c, k), 1) for k in WORKLOADS} for c in contenders
        },
        "medians_all_trials_sentences_per_s": {
            c: {k: round(by[c][k].median_rate, 2) for k in WORKLOADS} for c in contenders
        },
        "padded_over_real_tokens": padding,
        "ratios": ratios,
        "ratios_as_configured": as_configured,
        "agreement_min_cosine_vs_sentence_transformers_fp32": agreement,
        "actor_stats": actor_stats,
        "tables": tables,
    }
    write_json(out, data)

    # plot: tokens/s (comparable across workloads): the float32 baselines, then ours and
    # the best actor pool at each precision
    per_text = [tokens[k] / len(texts[k]) for k in WORKLOADS]

    def bar(per_kind: list[str]) -> tuple[list[float | None], list[tuple[float, float] | None]]:
        return ([t * rate(c, k) for t, c, k in zip(per_text, per_kind, WORKLOADS)],
                [(t * min(by[c][k].rates), t * max(by[c][k].rates)) for t, c, k in zip(per_text, per_kind, WORKLOADS)])

    series: dict[str, list[float | None]] = {}
    errors: dict[str, list[tuple[float, float] | None]] = {}
    for d in dtypes:
        tag = TAGS[d]
        series[f"one-per-call {tag}"], errors[f"one-per-call {tag}"] = bar([f"one-per-call {tag}"] * 3)
        st_best_names = [best("sentence-transformers", d, k) for k in WORKLOADS]
        label = f"sentence-transformers best {tag} (bs " + "/".join(
            c.split("=")[1].split()[0] for c in st_best_names) + ")"
        series[label], errors[label] = bar(st_best_names)
        series[f"ours best {tag}"], errors[f"ours best {tag}"] = bar([best("ours", d, k) for k in WORKLOADS])
        if names("actors", d):
            series[f"actor pool best {tag}"], errors[f"actor pool best {tag}"] = bar(
                [best("actors", d, k) for k in WORKLOADS])
    plot_bars(
        out.with_suffix(".png"),
        f"Embedding throughput ({embedder.model_name}, {threads} threads, {machine['cpu_model']}); "
        f"clean-trial median of {trials}, whiskers min-max",
        [f"{k} ({tokens[k] / len(texts[k]):.0f} tok/text)" for k in WORKLOADS],
        series, "tokens/s (no padding)", errors,
    )
    print(f"done in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
