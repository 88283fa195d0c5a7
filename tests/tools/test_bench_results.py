"""The one benchmark results format: writer, reader and validator."""

from __future__ import annotations

import json
import math

import pytest

from megavid.tools import bench_results as br


def _rows():
    return [
        {"name": "gemm 4ds-b fc1", "value": 12.5, "unit": "TFLOP/s", "params": {"m": 256}},
        {"name": "decode pyav", "value": 310, "unit": "frames/s"},
    ]


def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "sub" / "out.json"
    written = br.write_results(path, "kernels.gemm", _rows(), {"bf16_vs_fp32": 3.1},
                               notes=["te: skipped"])
    loaded = br.read_results(path)
    assert loaded == json.loads(json.dumps(written))
    assert loaded["benchmark"] == "kernels.gemm"
    assert loaded["results"][0]["params"] == {"m": 256}
    assert loaded["ratios"] == {"bf16_vs_fp32": 3.1} and loaded["notes"] == ["te: skipped"]


def test_machine_info_names_cpu_and_versions():
    info = br.machine_info()
    assert info["cpu"] and info["cpu_cores"] >= 1
    assert "torch" in info["versions"] and "megatron_core" in info["versions"]
    json.dumps(info)  # serialisable as is


def test_ratios_may_be_empty(tmp_path):
    obj = br.write_results(tmp_path / "r.json", "x", _rows())
    assert obj["ratios"] == {} and "notes" not in obj


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.pop("machine"), "missing keys"),
        (lambda o: o.update(benchmark=""), "benchmark"),
        (lambda o: o["results"].append({"name": "x", "value": 1.0}), "needs 'name', 'value'"),
        (lambda o: o["results"][0].update(value=math.nan), "finite number"),
        (lambda o: o["results"][0].update(value="fast"), "finite number"),
        (lambda o: o["results"][0].update(value=True), "finite number"),
        (lambda o: o.update(ratios=[1.0]), "'ratios' must be an object"),
        (lambda o: o.update(ratios={"a": math.inf}), "ratios.a"),
        (lambda o: o.update(notes="skipped"), "'notes' must be a list"),
    ],
)
def test_validation_names_the_broken_field(mutate, message):
    obj = br.make_results("x", _rows())
    mutate(obj)
    with pytest.raises(ValueError, match=message):
        br.validate_results(obj)


def test_write_refuses_invalid_rows(tmp_path):
    with pytest.raises(ValueError, match="finite number"):
        br.write_results(tmp_path / "bad.json", "x", [{"name": "a", "value": math.nan, "unit": "s"}])
    assert not (tmp_path / "bad.json").exists()


def test_extra_keys_are_kept_but_cannot_replace_standard_ones(tmp_path):
    obj = br.write_results(tmp_path / "e.json", "x", _rows(), extra={"settings": {"quick": True}})
    assert br.read_results(tmp_path / "e.json")["settings"] == {"quick": True} == obj["settings"]
    with pytest.raises(ValueError, match="replace standard"):
        br.make_results("x", _rows(), extra={"results": []})
