"""A one-process gloo group with TP=PP=1 for the in-process interop tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def single_process():
    from megavid.inference.encoder import _ensure_parallel_state
    from megavid.parallel import runtime

    _ensure_parallel_state()
    yield
    runtime.shutdown()
