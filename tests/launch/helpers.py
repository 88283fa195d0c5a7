"""Stand-ins for a SLURM allocation on this machine: fake srun/scontrol and sbatch's variables."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.conftest import REPO, free_port

FAKES = Path(__file__).parent / "fake_slurm"
NODES, PER_NODE, JOB_ID = 2, 2, "4242"
# a launch variable left over from the shell running pytest would change what the job sees
_STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def slurm_env(tmp_path: Path, **extra: str) -> dict:
    """What sbatch gives a batch script on 2 "nodes", with the fake srun/scontrol on PATH:
    the ``env`` for ``launch.run`` (None removes a variable from the test environment)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "scontrol"):
        shutil.copy(FAKES / name, bin_dir / name)
        (bin_dir / name).chmod(0o755)
    strip = {k: None for k in [*os.environ, *_STRIP]
             if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in _STRIP}
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])
    return {**strip, "PATH": path, "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "rehearsal",
            "SLURM_NNODES": str(NODES), "SLURM_JOB_NODELIST": "127.0.0.1,localhost",
            "SLURM_SUBMIT_DIR": str(REPO), "MASTER_PORT": str(free_port()), **extra}
