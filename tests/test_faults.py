"""megavid.faults: one spec, read once; malformed entries are one-line errors."""

from __future__ import annotations

import pytest

from megavid import faults


def test_spec_lists_every_kind_of_fault():
    assert faults.parse("hang:1:2, kill_before_commit:4,nan:2,") == {
        ("hang", 1, 2), ("kill_before_commit", 4), ("nan", 2)}
    assert faults.parse("") == set()


@pytest.mark.parametrize("spec", ["nan", "nan:x", "hang:1", "explode:3", "kill_before_commit:1:2"])
def test_malformed_spec_is_one_line_naming_the_entry(spec):
    with pytest.raises(faults.FaultSpecError) as err:
        faults.parse(spec)
    assert "\n" not in str(err.value) and repr(spec.split(",")[0]) in str(err.value)


def test_nan_only_inside_the_training_step_it_names(monkeypatch):
    monkeypatch.setattr(faults, "_faults", {("nan", 3)})
    assert not faults.nan_now()  # validation, between steps
    with faults.training_step(2):
        assert not faults.nan_now()
    with faults.training_step(3):
        assert faults.nan_now()
    assert not faults.nan_now()
    monkeypatch.setattr(faults, "_config_nan", frozenset())
    faults.set_config_nan_steps([5])  # train.inject_nan_steps
    assert faults.nan_at(5) and faults.nan_at(3)
    faults.set_config_nan_steps([])  # the next trainer's config
    assert not faults.nan_at(5)
