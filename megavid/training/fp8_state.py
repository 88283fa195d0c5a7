"""Transformer Engine's FP8 scaling state when a checkpoint changes backend.

Every TE module checkpoints an ``_extra_state`` (amax history, scales); the local spec has
none. Weights carry the same names under both backends (``megavid.models.te_names``), so
only this state needs a decision on load: it is restored when the checkpoint has it and
the layer runs FP8 here (resuming the same backend), and otherwise left out of the request
with one line saying so (a TE checkpoint read by the local spec, a local or BF16 checkpoint
resumed on TE+FP8, FP8 layers resumed without FP8); a module left out keeps the state it
was built with, which starts its scales afresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

from megavid.models.te_names import is_fp8_state
from megavid.training.common_state import read_common, weights_only_loads


def saved_fp8_keys(directory: Path) -> set[str]:
    """The checkpoint keys of the FP8 scaling states ``directory`` holds."""
    with weights_only_loads():
        metadata = load_sharded_metadata(str(directory))
    return {item.key for item in metadata.values() if is_fp8_state(item.key)}  # megatron's keys


def _saved_fp8_stacks(directory: Path) -> set[str]:
    """The stacks that ran FP8 in the run that saved ``directory`` (its config says)."""
    try:
        config = read_common(directory).get("config", {})
    except Exception:  # unreadable common state: the load itself will say so
        return set()
    train, model = config.get("train", {}), config.get("model", {})
    if train.get("fp8") is None:
        return set()
    return {"encoder", "decoder"} if model.get("decoder_fp8") else {"encoder"}


def _stack(name: str) -> str:
    return name.split(".", 1)[0]  # encoder | decoder (the layers' state keys start with it)


def _runs_fp8(chunk, name: str) -> bool:
    block = getattr(chunk, _stack(name), None)
    return getattr(getattr(block, "config", None), "fp8", None) is not None


class FP8StateAside:
    """Takes FP8 states that cannot or should not load out of a sharded load request, and
    puts each module's own state back into the loaded dict for ``load_state_dict``.

    megatron-core's local linears checkpoint an empty ``_extra_state`` too (for TE
    compatibility), so what counts is whether the saving run and this one ran FP8 in
    that stack: both -> restored; only this one -> fresh scales; only the saving one
    -> dropped; neither -> nothing to say.
    """

    def __init__(self, chunks: list, state: dict, directory: Path):
        saved = saved_fp8_keys(directory)
        saved_fp8 = _saved_fp8_stacks(directory)
        self.saved, self.directory = saved, directory
        self.aside: dict[str, dict[str, object]] = {}  # model key -> {state key: own value}
        self.fresh: set[str] = set()  # checkpoint keys (one per module kind and stack)
        self.dropped: set[str] = set()
        requested = set()
        for i, chunk in enumerate(chunks):
            request, own = state[f"model{i}"], None
            for name in [n for n in request if is_fp8_state(n)]:
                key = request[name].key
                requested.add(key)
                here, there = _runs_fp8(chunk, name), _stack(key) in saved_fp8 and key in saved
                if here and there:
                    continue
                (self.fresh if here else self.dropped if there else set()).add(key)
                own = own if own is not None else chunk.state_dict()
                self.aside.setdefault(f"model{i}", {})[name] = own[name]
                del request[name]
        # FP8 states of modules this model does not have (TE attention, read by the local spec)
        self.dropped |= {key for key in saved - requested if _stack(key) in saved_fp8}

    def restore(self, loaded: dict) -> None:
        for model_key, values in self.aside.items():
            loaded[model_key].update(values)

    def report(self, info: Callable[[str], None]) -> None:
        where = self.directory
        if self.fresh:
            info(f"FP8 scaling state: {where} has none for {_kinds(self.fresh)} (saved without "
                 "FP8 there); they start with fresh scales")
        if self.dropped:
            info(f"FP8 scaling state in {where} dropped for {_kinds(self.dropped)}: this run has "
                 "no FP8 there; the weights load as they are")


def _kinds(keys: set[str]) -> str:
    stacks = " and ".join(sorted({_stack(key) for key in keys}))
    return f"{len(keys)} kinds of module in the {stacks}"
