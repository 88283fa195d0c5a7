"""4D evaluation: frozen-feature readouts on depth, point tracks, camera pose and boxes.

``datasets.load_dataset`` gives ``Clip4D``s (synthetic or real data), ``metrics``
scores predictions with the published definitions, ``readers`` holds the file formats.
``run_eval(EvalConfig(...))`` trains and scores a readout (``python -m megavid.eval``);
it is imported on first use, so that reading data does not import the model stack.
"""

from megavid.eval.datasets import Clip4D, load_dataset, make_synthetic

__all__ = ["Clip4D", "EvalConfig", "load_dataset", "make_synthetic", "run_eval"]


def __getattr__(name: str):
    if name in ("EvalConfig", "run_eval"):
        from megavid.eval import run

        return getattr(run, name)
    raise AttributeError(f"module 'megavid.eval' has no attribute {name!r}")
