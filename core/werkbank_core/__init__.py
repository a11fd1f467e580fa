"""werkbank-core: what the hub and the sessions share, standard library only.

:mod:`~werkbank_core.policy` (profiles, limits, validated job requests),
:mod:`~werkbank_core.script` (batch scripts and ``sbatch`` arguments from a request),
:mod:`~werkbank_core.slurm` (Slurm's commands, with timeouts, and readers of their output) and
:mod:`~werkbank_core.centre` (what the site file says about the centre, as sessions read it).
"""

__version__ = "0.1.0"
