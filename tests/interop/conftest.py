"""A one-process gloo group with TP=PP=1 for the in-process interop tests."""

from __future__ import annotations

import pytest

from megavid.parallel import runtime


@pytest.fixture(scope="module")
def single_process():
    runtime.ensure_model_parallel("tests")
    yield
    runtime.shutdown()
