"""What lands in site-packages: ``kernels/`` installs as ``megavid.kernels``, so Hugging Face's
``kernels`` distribution (which transformers probes for) and megavid live side by side."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile

import pytest

from tests.conftest import REPO

needs_hf_kernels = pytest.mark.skipif(importlib.util.find_spec("kernels") is None,
                                      reason="Hugging Face's kernels is not installed "
                                             "(pip install 'megavid[test]')")


def _python(launch, code: str, cwd) -> str:
    """Run ``code`` outside the repository, where only installed packages import."""
    return launch.run("-c", code, cwd=cwd, timeout=120, check=True).stdout


@needs_hf_kernels
def test_hugging_face_kernels_and_megavid_kernels_both_import(launch, tmp_path):
    out = _python(launch, "import kernels, megavid.kernels as mk\n"
                  "print(kernels.__file__); print(mk.__file__); print(mk.fused_mae_loss.__name__)\n"
                  "import importlib.metadata as m; print(m.version('kernels'))", tmp_path)
    hf, ours, loss, version = out.split()
    assert "site-packages" in hf and hf != str(REPO / "kernels" / "__init__.py")
    assert ours == str(REPO / "kernels" / "__init__.py") and loss == "fused_mae_loss"
    assert version.split(".")[0] == "0"  # Hugging Face's distribution, not a megavid folder


@needs_hf_kernels
def test_demo_trains_with_hugging_face_kernels_installed(launch, tmp_path):
    launch.run("-m", "megavid.pretrain", "--train-iters", "2", "--log-dir", str(tmp_path / "run"),
               "--set", "log.plot=false", "--set", "model.kernels=auto", cwd=tmp_path, check=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2


def test_nothing_named_kernels_is_installed_at_the_top(launch, tmp_path):
    """The wheel's top-level names are megavid and its metadata only (built from a copy:
    setuptools writes build/ next to the sources)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "megavid", "kernels"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if copy is shutil.copytree else {}))
    launch.run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
               str(tmp_path), str(source), check=True)
    (wheel,) = tmp_path.glob("megavid-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = wheel.name.split("-py")[0] + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"megavid", dist_info}
    assert "megavid/kernels/mae_loss.py" in names and "megavid/configs/demo_cpu.yaml" in names
