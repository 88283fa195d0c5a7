"""A one-process gloo group with TP=PP=1 for the in-process interop tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def single_process():
    from megavid.parallel import runtime

    runtime.ensure_model_parallel("tests")
    yield
    runtime.shutdown()
