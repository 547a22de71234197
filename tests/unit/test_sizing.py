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


# -- predict_pool_rate: N actors from one actor's figures (benchmarks/bench_sizing.py) -----------

import pytest  # noqa: E402

from benchmarks.sizing import main as sizing_main, predict_pool_rate  # noqa: E402


def test_prediction_scales_with_actors_while_the_cores_can_pay():
    # one actor: 100 texts/s using 0.011 CPU s per text (1.1 cores); 8 cores
    p = predict_pool_rate(100.0, 0.011, actors=4, cores=8)
    assert p["items_per_s"] == 400.0 and p["bound"] == "parallelism"


def test_prediction_stops_at_what_the_cores_can_pay_for():
    # 2 cores at 0.0067 CPU s per text: ~298 texts/s, however many actors share them (one
    # actor alone at 150/s spends 1.005 cores: two cannot quite double it)
    two = predict_pool_rate(150.0, 0.0067, actors=2, cores=2)
    four = predict_pool_rate(150.0, 0.0067, actors=4, cores=2)
    assert two["items_per_s"] == four["items_per_s"] == pytest.approx(2 / 0.0067, abs=0.01)
    assert four["bound"] == "cpu" and four["threads_oversubscribed"] and not two["threads_oversubscribed"]


def test_prediction_of_one_actor_is_its_measurement():
    assert predict_pool_rate(149.0, 0.0067, actors=1, cores=2)["items_per_s"] == 149.0


@pytest.mark.parametrize("bad", [dict(single_rate=0), dict(cpu_s_per_item=0), dict(actors=0), dict(cores=0)])
def test_prediction_refuses_meaningless_inputs(bad):
    args = dict(single_rate=100.0, cpu_s_per_item=0.01, actors=2, cores=2, **{})
    args.update(bad)
    with pytest.raises(ValueError):
        predict_pool_rate(**args)


def test_sizing_keeps_its_plan_mode_and_measure_checks_its_arguments(tmp_path, capsys):
    # the plan mode is unchanged: no results -> exit 2 with a hint
    assert sizing_main(["--rows-per-s", "100", "--results", str(tmp_path)]) == 2
    assert "bench embed" in capsys.readouterr().out
    # --measure goes to bench_sizing, whose arguments are checked before anything starts
    with pytest.raises(SystemExit):
        sizing_main(["--measure", "--actors", "2,4"])
    assert "must include 1" in capsys.readouterr().err
