"""4D evaluation: frozen-feature readouts on depth, point tracks, camera pose and boxes.

``datasets.load_dataset`` gives ``Clip4D``s (synthetic or real data), ``metrics``
scores predictions with the published definitions, ``readers`` holds the file
formats; ``megavid.eval.run.run_eval(EvalConfig(...))`` trains and scores a readout
(``python -m megavid.eval``): the attention readout (``readout``, ``train``) or the
linear probe with its references (``probe``). This package file imports the data side only, so
that reading a dataset does not import the model stack.
"""

from megavid.eval.datasets import Clip4D, load_dataset, make_synthetic

__all__ = ["Clip4D", "load_dataset", "make_synthetic"]
