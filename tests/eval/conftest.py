"""Shared fixtures of the 4D-evaluation tests: one small synthetic set per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from megavid.eval import make_synthetic
from megavid.eval.synthetic import generate_scene

MITSUBA_REASON = "the synthetic 4D benchmark needs Mitsuba: pip install -e '.[eval]'"
# 6 scenes (4 train, 2 test) of 8 frames at 64x64, the `tiny` preset's input: ~3 s on 2 cores.
# The camera looks at random points of the room, so about half the clips show no object; with
# seed 22 scene 0 (``synthetic4d_scene``) and both test scenes show objects from frame 0, as
# the label tests and the boxes readout need (checked in test_synthetic), and scene 2 none.
SMALL_SYNTHETIC = dict(num_scenes=6, frames=8, size=64, seed=22, test_fraction=0.34)


@pytest.fixture(scope="session")
def synthetic4d_dir(tmp_path_factory) -> Path:
    """A generated synthetic 4D folder (``train/``, ``test/``, ``synthetic4d.json``)."""
    pytest.importorskip("mitsuba", reason=MITSUBA_REASON)
    return make_synthetic(tmp_path_factory.mktemp("synthetic4d") / "data", workers=1,
                          **SMALL_SYNTHETIC)


@pytest.fixture(scope="session")
def synthetic4d_scene() -> dict:
    """Scene 0 of ``SMALL_SYNTHETIC`` in memory, with its scene description (``spec``)."""
    pytest.importorskip("mitsuba", reason=MITSUBA_REASON)
    settings = {k: SMALL_SYNTHETIC[k] for k in ("frames", "size", "seed")}
    return generate_scene(0, **settings)
