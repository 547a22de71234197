"""actors/remote.py: the process environment embedding actors start with (no Ray started)."""

from actors.remote import embedding_runtime_env


def test_embedding_actors_sleep_at_openmp_barriers_by_default(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert embedding_runtime_env() == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


def test_an_exported_wait_policy_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert embedding_runtime_env() == {"env_vars": {"OMP_WAIT_POLICY": "ACTIVE"}}
