"""benchmarks/sizing.py: actors needed from measured pool rates."""

from benchmarks.sizing import actor_rates, plan


def test_gpu_plan_uses_measured_scaling_and_worst_efficiency_beyond():
    rates = {1: 1000.0, 2: 1800.0, 4: 3200.0}  # per-actor efficiency 1.0, 0.9, 0.8
    result = plan(rates, target=3000, efficiency=1.0, scale_out=False)
    assert result["actors"] == 4 and not result["extrapolated"]
    result = plan(rates, target=6000, efficiency=1.0, scale_out=False)
    # beyond 4 actors: n x 1000 x 0.8 (worst measured), so 8 actors = 6400 rows/s
    assert result["actors"] == 8 and result["extrapolated"]
    assert result["pool_rows_per_s"] == 6400.0


def test_pipeline_efficiency_scales_capacity_down():
    assert plan({1: 1000.0}, target=1000, efficiency=0.5, scale_out=False)["actors"] == 2


def test_cpu_plan_counts_nodes_at_their_best_layout():
    rates = {1: 270.0, 2: 325.0}  # 2 single-thread actors beat 1 two-thread actor on one node
    result = plan(rates, target=1000, efficiency=1.0, scale_out=True)
    assert result["per_actor_rows_per_s"] == 325.0
    assert result["actors"] == 4 and result["pool_rows_per_s"] == 1300.0


def test_actor_rates_reads_pool_sizes_from_bench_embed_json():
    data = {"medians_sentences_per_s": {"actors x1 (2 thr)": {"short": 270.0}, "actors x2 (1 thr)": {"short": 325.0},
                                        "one-per-call": {"short": 100.0}}}
    assert actor_rates(data, "short") == {1: 270.0, 2: 325.0}


def test_actor_rates_use_the_precision_the_pipeline_runs():
    data = {
        "dtype": "bfloat16",
        "contender_dtype": {"actors x1 (2 thr) fp32": "float32", "actors x2 (1 thr) fp32": "float32",
                            "actors x1 (2 thr) bf16": "bfloat16", "actors x2 (1 thr) bf16": "bfloat16"},
        "medians_sentences_per_s": {
            "actors x1 (2 thr) fp32": {"short": 270.0}, "actors x2 (1 thr) fp32": {"short": 325.0},
            "actors x1 (2 thr) bf16": {"short": 480.0}, "actors x2 (1 thr) bf16": {"short": 590.0},
        },
    }
    assert actor_rates(data, "short") == {1: 480.0, 2: 590.0}
    data["dtype"] = "float32"
    assert actor_rates(data, "short") == {1: 270.0, 2: 325.0}
