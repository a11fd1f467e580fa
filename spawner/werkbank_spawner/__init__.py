"""werkbank-spawner: JupyterLab as Slurm jobs, with site profiles, policy and a shared queue poller.

Import :mod:`werkbank_spawner.spawner` for the spawner classes; ``queue`` and the ``site``
package (the site file) are pure and import nothing from JupyterHub. Policy, batch scripts and
Slurm's commands are in :mod:`werkbank_core`, which the sessions share.
"""

__version__ = "0.1.0"
