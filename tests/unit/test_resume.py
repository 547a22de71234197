"""cluster/pipeline.py store_behind: when a store must not resume from the slot."""

from __future__ import annotations

import pytest

from cluster.pipeline import is_permanent, store_behind

SLOT = {"exists": True, "confirmed_lsn": 500, "identity": {"system_id": "71", "database": "app", "slot": "ec"}}


def state(**kw):
    return {"backfill_complete": True, "tables": ["public.books"], **kw}


def test_a_store_at_or_past_the_slot_resumes():
    assert store_behind(state(position=500, identity=SLOT["identity"]), SLOT) is None
    assert store_behind(state(position=900, identity=SLOT["identity"]), SLOT) is None


def test_a_store_behind_the_slot_missed_changes():
    why = store_behind(state(position=400, identity=SLOT["identity"]), SLOT)
    assert why is not None and "0/190" in why and "0/1F4" in why and "missed" in why and "\n" not in why


@pytest.mark.parametrize(("key", "value"), [("system_id", "99"), ("database", "other")])
def test_a_store_that_followed_another_server_or_database(key, value):
    why = store_behind(state(position=900, identity={**SLOT["identity"], key: value}), SLOT)
    assert why is not None and value in why and SLOT["identity"][key] in why


def test_a_store_from_before_positions_were_recorded_is_trusted():
    assert store_behind(state(), SLOT) is None


def test_permanent_errors_are_recognised_through_wrappers():
    class Permanent(Exception):
        permanent = True

    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__(str(cause))
            self.cause = cause

    assert is_permanent(Wrapper(Wrapper(Permanent("x"))))
    assert not is_permanent(Wrapper(ValueError("x")))
