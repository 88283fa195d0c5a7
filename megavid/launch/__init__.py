"""Cluster launchers: ``python -m megavid.launch slurm`` renders checked SLURM batch files.

The logic lives here, in Python; the shell templates under ``launch/`` only
hold what a batch file must say (see README, "Launching on SLURM").
"""

from megavid.launch.slurm import CheckedJob, LaunchError, SlurmJob, check, render

__all__ = ["CheckedJob", "LaunchError", "SlurmJob", "check", "render"]
