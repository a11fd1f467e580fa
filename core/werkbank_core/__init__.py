"""werkbank-core: what the hub and the sessions share, standard library only.

:mod:`~werkbank_core.policy` (profiles, limits, validated job requests),
:mod:`~werkbank_core.script` (batch scripts and ``sbatch`` arguments from a request) and
:mod:`~werkbank_core.slurm` (Slurm's commands, with timeouts, and readers of their output).
"""

__version__ = "0.1.0"
