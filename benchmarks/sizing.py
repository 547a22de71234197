"""Cluster sizing from measured figures: how many embedding actors (GPUs) sustain X rows/s.

Reads the embedding benchmark results (``bench embed``: per-actor throughput
and the measured scaling across 1..N actors) and, when present, the pipeline
benchmark (``bench pipeline``: end-to-end efficiency), for each machine that
was measured with the requested model, and prints:

* rows/s one actor sustains (workload: short / mixed / long texts),
* the scaling efficiency measured across actors (the worst measured per-actor
  efficiency is used beyond the largest pool measured: no optimistic
  extrapolation),
* actors (and GPUs, at ``--gpus-per-actor``) needed for ``--rows-per-s``,
* how long a backfill of ``--backfill-rows`` rows takes on that many actors.

    python -m benchmarks.sizing --rows-per-s 2000 --model default [--backfill-rows 1000000]

``--measure`` runs the measured check of the prediction instead (``benchmarks/bench_sizing.py``):
the throughput of N actors predicted from one actor's figures, against N actors measured on a
multi-node loopback Ray cluster::

    embedcluster bench sizing --measure --actors 1,2,4
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_ACTORS = re.compile(r"actors x(\d+)")


def load_results(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    embeds, pipelines = [], []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["_file"] = str(path)
        if data.get("benchmark") == "embed":
            embeds.append(data)
        elif data.get("benchmark") == "pipeline":
            pipelines.append(data)
    return embeds, pipelines


def model_name(data: dict[str, Any]) -> str:
    model = data.get("model")
    return model.get("name", "") if isinstance(model, dict) else str(model or "")


def hardware(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    gpu = m.get("cuda_device")
    return f"GPU {gpu}" if gpu else f"CPU {m.get('cpu_model', '?')} ({m.get('cores', '?')} cores)"


def actor_rates(data: dict[str, Any], workload: str) -> dict[int, float]:
    """Aggregate sentences/s by actor-pool size, at the precision the pipeline runs.

    A run that measured several precisions names the one ``embedding.dtype =
    "auto"`` picks on that machine in ``dtype``; pools at other precisions are
    left out, so the plan is for what a default pipeline does.
    """
    out: dict[int, float] = {}
    pipeline_dtype = data.get("dtype")
    contender_dtype = data.get("contender_dtype", {})
    for name, per_workload in data.get("medians_sentences_per_s", {}).items():
        if contender_dtype and contender_dtype.get(name) != pipeline_dtype:
            continue
        match = _ACTORS.match(name)
        if match and per_workload.get(workload):
            n = int(match.group(1))
            out[n] = max(out.get(n, 0.0), float(per_workload[workload]))
    return out


def plan(rate_by_actors: dict[int, float], target: float, efficiency: float, scale_out: bool) -> dict[str, Any]:
    """Actors needed for ``target`` rows/s from measured pool rates.

    ``scale_out`` (CPU results): the actors measured there shared one
    machine's cores, which says nothing about adding machines, so one actor is
    one whole node and nodes add up; the shared-core figures are reported only.
    """
    single = rate_by_actors[min(rate_by_actors)] / min(rate_by_actors)
    per_actor_eff = {n: r / (n * single) for n, r in rate_by_actors.items()}
    worst = min(per_actor_eff.values())
    measured_max = 1 if scale_out else max(rate_by_actors)
    node = max(rate_by_actors.values())  # CPU: a node's best measured layout of actors

    def pool_rate(n: int) -> float:
        if scale_out:
            return n * node * efficiency
        if n in rate_by_actors:
            return rate_by_actors[n] * efficiency
        return n * single * worst * efficiency

    n = 1
    while pool_rate(n) < target and n < 100_000:
        n += 1
    return {
        "per_actor_rows_per_s": round((node if scale_out else single) * efficiency, 2),
        "scaling_efficiency": {str(k): round(v, 3) for k, v in sorted(per_actor_eff.items())},
        "extrapolated": n > measured_max,
        "actors": n,
        "pool_rows_per_s": round(pool_rate(n), 2),
    }


def predict_pool_rate(single_rate: float, cpu_s_per_item: float, actors: int, cores: float,
                      threads_per_actor: int = 1) -> dict[str, Any]:
    """Items/s of ``actors`` CPU actors on ``cores`` shared cores, from one actor's figures alone.

    ``single_rate``: items/s one actor sustained with ``threads_per_actor`` torch threads, fed
    enough work to stay busy.  ``cpu_s_per_item``: CPU seconds the whole machine spent per item
    in that same run (the actor, its tokenizer thread, the driver, Ray's daemons), which is what
    makes the prediction honest on a machine with fewer cores than threads: N actors can never
    go faster than the cores can pay for the work.  A roofline, two bounds:

    * parallelism: N actors at most N times one (``N * single_rate``), while their threads fit
      the cores (``N * threads_per_actor <= cores``);
    * CPU: at most ``cores / cpu_s_per_item`` items/s, however many actors share the cores.

    Nothing here is fitted to multi-actor runs; ``bound`` says which limit set the figure.
    """
    if single_rate <= 0 or cpu_s_per_item <= 0 or actors < 1 or cores <= 0 or threads_per_actor < 1:
        raise ValueError("single_rate, cpu_s_per_item, cores > 0 and actors, threads_per_actor >= 1 required")
    parallel = actors * single_rate
    cpu = cores / cpu_s_per_item
    return {"actors": actors, "items_per_s": round(min(parallel, cpu), 2),
            "bound": "parallelism" if parallel <= cpu else "cpu",
            "parallel_bound": round(parallel, 2), "cpu_bound": round(cpu, 2),
            "threads_oversubscribed": actors * threads_per_actor > cores}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if "--measure" in argv:
        # `embedcluster bench sizing --measure ...`: the measured check (the CLI maps "sizing" here)
        from benchmarks import bench_sizing

        return bench_sizing.main([a for a in argv if a != "--measure"])
    ap = argparse.ArgumentParser(prog="embedcluster bench sizing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows-per-s", type=float, required=True, help="sustained change rate to keep up with")
    ap.add_argument("--model", default="default", help="model name as given to bench embed (default: default)")
    ap.add_argument("--workload", default="short", choices=["short", "mixed", "long"], help="text length class")
    ap.add_argument("--backfill-rows", type=int, default=1_000_000, help="rows of an initial backfill")
    ap.add_argument("--gpus-per-actor", type=float, default=1.0)
    ap.add_argument("--results", default=str(RESULTS_DIR), help="folder with bench JSON files")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)

    embeds, pipelines = load_results(Path(args.results))
    embeds = [e for e in embeds if model_name(e) == args.model]
    if not embeds:
        print(f"no embedding results for model {args.model!r} in {args.results}; "
              f"run: embedcluster bench embed --model {args.model}")
        return 2
    efficiency, eff_source = 1.0, "assumed 1.0 (no pipeline benchmark found)"
    for p in pipelines:
        if p.get("model") == args.model and p.get("pipeline_efficiency"):
            efficiency = min(1.0, float(p["pipeline_efficiency"]))
            eff_source = f"measured {p['pipeline_efficiency']} ({Path(p['_file']).name})"
            break
    plans = []
    for data in embeds:
        rates = actor_rates(data, args.workload)
        if not rates:
            continue
        gpu = bool(data.get("machine", {}).get("cuda_device"))
        result = plan(rates, args.rows_per_s, efficiency, scale_out=not gpu)
        result.update({
            "hardware": hardware(data) + (f", {data['dtype']}" if data.get("dtype") else ""),
            "source": Path(data["_file"]).name,
            "gpus": math.ceil(result["actors"] * args.gpus_per_actor) if gpu else 0,
            "backfill_hours": round(args.backfill_rows / result["pool_rows_per_s"] / 3600, 3),
        })
        plans.append(result)
    if not plans:
        print(f"the results for {args.model!r} have no actor-pool figures for the {args.workload} workload")
        return 2
    if args.json:
        print(json.dumps({"target_rows_per_s": args.rows_per_s, "pipeline_efficiency": eff_source, "plans": plans}, indent=2))
        return 0
    print(f"Sizing for {args.rows_per_s:g} rows/s of {args.workload} texts, model {args.model}, "
          f"backfill of {args.backfill_rows:,} rows; pipeline efficiency {eff_source}")
    for p in plans:
        extra = ""
        if p["extrapolated"]:
            extra = (" (nodes assumed to add up; actors sharing this machine's cores measured as scaling)" if not p["gpus"]
                     else " (beyond the largest pool measured: scaled with the worst measured efficiency)")
        units = f"{p['gpus']} GPU(s), one actor each" if p["gpus"] else f"{p['actors']} CPU node(s) like this one"
        unit = "one GPU actor" if p["gpus"] else "one node (best actor layout measured)"
        print(f"- {p['hardware']} [{p['source']}]: {unit} {p['per_actor_rows_per_s']:g} rows/s end to end, "
              f"scaling {p['scaling_efficiency']}; need {units} -> {p['pool_rows_per_s']:g} rows/s{extra}; "
              f"backfill {p['backfill_hours'] * 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
