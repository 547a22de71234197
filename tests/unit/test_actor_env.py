"""actors/remote.py: the process environment and concurrency embedding actors start with (no Ray started)."""

from actors.remote import embedding_runtime_env


def test_embedding_actors_sleep_at_openmp_barriers_by_default(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert embedding_runtime_env() == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


def test_an_exported_wait_policy_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert embedding_runtime_env() == {"env_vars": {"OMP_WAIT_POLICY": "ACTIVE"}}


def test_embedding_actor_runs_one_call_per_model_worker_plus_one():
    from actors.remote import embedding_actor_concurrency

    assert embedding_actor_concurrency(2, 1) == 3  # 2 single-thread workers + the next batch's tokenizing
    assert embedding_actor_concurrency(2, 2) == 2  # one 2-thread worker
    assert embedding_actor_concurrency(1, 1) == 2
    assert embedding_actor_concurrency(8, 3) == 3  # 2 workers of 3 threads (threads // threads_per_worker)
    assert embedding_actor_concurrency(8, 1, gpu=True) == 2  # an Embedder on a GPU has one worker
