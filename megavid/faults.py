"""Fault injection for tests, in one place: which faults to inject, read once from the environment.

    MEGAVID_FAULT_INJECT=hang:1:2,kill_before_commit:4,nan:2

- ``hang:<rank>:<step>``: that rank stops answering as that step starts (the trainer
  asks ``hang_here``);
- ``kill_before_commit:<step>``: SIGKILL after that step's checkpoint is written, before
  it is committed (the checkpointer asks ``crash_point``);
- ``nan:<step>``: that step's training loss is NaN, and so are its gradients (the loss
  asks ``nan_now``).

Each fault names an optimizer step (1 = the first). The NaN enters the loss itself,
so the whole non-finite path runs (backward, the finite check, the skipped update);
``train.inject_nan_steps`` adds ``nan`` faults from the config (``set_config_nan_steps``).
The loss cannot be told the step by its caller (megatron-core's schedules call it),
so the trainer runs each step's forward and backward inside ``training_step(step)``
and ``nan_now()`` reads that; validation's losses, outside it, are never poisoned.

It imports nothing from megavid, so every layer can use it. A malformed spec is a
one-line ``FaultSpecError`` the first time any function here runs (the trainer's
start: ``set_config_nan_steps``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

ENV = "MEGAVID_FAULT_INJECT"
_FORMS = {"hang": ("rank", "step"), "kill_before_commit": ("step",), "nan": ("step",)}
_SPELLED = ", ".join(f"{name}:" + ":".join(f"<{a}>" for a in args) for name, args in _FORMS.items())


class FaultSpecError(ValueError):
    """MEGAVID_FAULT_INJECT does not parse; the message says which entry and the valid forms."""


def parse(spec: str) -> set[tuple]:
    """``"hang:1:2,nan:3"`` -> {("hang", 1, 2), ("nan", 3)}."""
    faults = set()
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, *numbers = entry.split(":")
        if name not in _FORMS or len(numbers) != len(_FORMS[name]) or not all(
                n.isdigit() for n in numbers):
            raise FaultSpecError(f"{ENV}: cannot read {entry!r}; the forms are {_SPELLED}, "
                                 "comma-separated")
        faults.add((name, *map(int, numbers)))
    return faults


_faults: set[tuple] | None = None
_config_nan: frozenset[int] = frozenset()  # ``set_config_nan_steps``
_step: int | None = None  # the training step running now (``training_step``)


def active() -> set[tuple]:
    """The faults of this process (the environment is read on the first call)."""
    global _faults
    if _faults is None:
        _faults = parse(os.environ.get(ENV, ""))
    return _faults


def set_config_nan_steps(steps) -> None:
    """``nan:<step>`` for each of ``steps`` besides the environment's: the config's
    ``train.inject_nan_steps`` (a new trainer's replace an earlier one's)."""
    global _config_nan
    active()  # a malformed environment spec fails here, at the trainer's start
    _config_nan = frozenset(int(step) for step in steps)


def hang_here(rank: int, step: int) -> None:
    """Never return if ``hang:<rank>:<step>`` is injected (a stuck rank, for the hang tests)."""
    if ("hang", rank, step) in active():
        # stuck as in a C call, where megavid's preemption handler never runs: the launcher's
        # SIGTERM ends it (not torchrun's SIGKILL after 30 s of grace)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(3600)


def crash_point(name: str, step: int) -> None:
    """SIGKILL this process if ``<name>:<step>`` is injected (``kill_before_commit``: ``name``
    ``"before_commit"``); a kill, not an exception, so no clean-up runs."""
    if (f"kill_{name}", step) in active():
        os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    """Whether ``nan:<step>`` is injected."""
    return ("nan", step) in active() or step in _config_nan


@contextlib.contextmanager
def training_step(step: int):
    """Mark the forward and backward of training step ``step`` (for ``nan_now``)."""
    global _step
    _step = step
    try:
        yield
    finally:
        _step = None


def nan_now() -> bool:
    """Whether the loss being computed now is to be NaN: inside ``training_step(s)`` with
    ``nan:s`` injected."""
    return _step is not None and nan_at(_step)
