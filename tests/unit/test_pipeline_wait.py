"""PipelineCoordinator.wait_acked: a waiter returns when the acked LSN reaches its commit, never before."""

from __future__ import annotations

import threading
import time

from cluster.config import config_from_dict
from cluster.pipeline import PipelineCoordinator


def coordinator() -> PipelineCoordinator:
    config = config_from_dict(
        {
            "source": {"dsn": "postgresql://u@127.0.0.1/db", "slot": "s", "publication": "p"},
            "tables": [{"name": "public.docs", "text": "{body}"}],
        },
        environ={},
    )
    # the loop is not run: the handles are never called
    return PipelineCoordinator(config, reader=None, embedders=[], writer=None, dimension=384)


def test_wait_acked_times_out_below_the_lsn():
    c = coordinator()
    c._advance_acked(100)
    started = time.monotonic()
    assert c.wait_acked(101, timeout=0.2) == 0
    assert time.monotonic() - started >= 0.19


def test_wait_acked_returns_at_once_when_already_acked():
    c = coordinator()
    c._advance_acked(500)
    assert c.wait_acked(500, timeout=0) == 500
    assert c.wait_acked(200, timeout=0) == 500  # what is acked, not what was asked


def test_wait_acked_wakes_when_the_ack_reaches_the_lsn():
    c = coordinator()
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(c.wait_acked(300, timeout=30)))
    waiter.start()
    c._advance_acked(200)  # below: the waiter keeps waiting
    waiter.join(0.1)
    assert waiter.is_alive()
    c._advance_acked(350)
    waiter.join(10)
    assert not waiter.is_alive()
    assert results == [350]
