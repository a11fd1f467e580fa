"""werkbank-spawner: JupyterLab as Slurm jobs, with site profiles, policy and a shared queue poller.

Import :mod:`werkbank_spawner.spawner` for the spawner classes; the other modules
(``policy``, ``script``, ``queue``, ``siteconfig``) are pure and import nothing from JupyterHub.
"""

__version__ = "0.1.0"
