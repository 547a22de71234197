"""The pipeline benchmark end to end at toy sizes: it must run, wait on the real
coordinator (``wait_acked``) and write a complete, self-describing result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import REPO

pytestmark = pytest.mark.integration


def test_bench_pipeline_small_run_writes_a_complete_result(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    cmd = [
        sys.executable, "-m", "benchmarks.bench_pipeline", "--quick", "--rows", "120", "--trials", "1",
        "--light-rate", "10", "--light-seconds", "2", "--steady-fraction", "0.1", "--steady-seconds", "2",
        "--out", str(out),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0

    assert report["machine"]["cores"] >= 1 and report["settings"]["rows_per_trial"] == 120
    embed, burst = report["embed_only_rows_per_s"], report["burst_rows_per_s"]
    assert len(embed["trials"]) == len(burst["trials"]) == 1
    assert embed["median"] > 0 and burst["median"] > 0
    assert report["pipeline_efficiency"] == pytest.approx(burst["median"] / embed["median"], abs=0.002)

    # every row of the light run was seen written, each after its own commit
    light = report["freshness_light_load"]
    assert light["rows"] == 21
    assert 0 < light["latency_ms"]["p50"] <= light["latency_ms"]["p99"] <= light["latency_ms"]["max"] < 60_000
    heavy = report["steady_heavy_load"]
    assert heavy["rows"] > 0 and heavy["sustained_rows_per_s"] > 0

    # warm-up (200 + 200), one burst, both steady runs: all applied by the pipeline
    assert report["pipeline_stats"]["rows_applied"] == 200 + 120 + light["rows"] + heavy["rows"]
    assert report["pipeline_stats"]["errors"] == 0
