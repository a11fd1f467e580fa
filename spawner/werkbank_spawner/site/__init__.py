"""The site file: the one YAML file an admin edits, read into a typed :class:`Site` once.

The flow, used by ``hub_config/jupyterhub_config.py`` and by ``werkbank-site check``::

    site = validate(load(path))              # SiteConfigError("<key.path>", "<what is wrong>")
    apply(c, site, config_dir=path.parent)   # the traits it implies
    prepare_state(site, config_dir=path.parent)

- :mod:`.schema`: every key, its type, default and meaning (pydantic); :class:`Site`.
- :mod:`.load`: the YAML loader (duplicate keys and base-60 numbers refused) and :func:`validate`.
- :mod:`.rules`: what relates keys to each other (a shared password only on loopback, ...).
- :mod:`.services`: the managed services the site implies (MLflow, its proxy, the culler).
- :mod:`.apply`: ``update_*`` functions setting each area's traits; the state folders.
- :mod:`.database`: the hub database's URL, with the password from its file.
- :mod:`.reference` and :mod:`.cli`: ``werkbank-site defaults|check``.
"""

from .apply import SPAWNER_CLASSES, apply, prepare_state
from .load import defaults, load, validate
from .reference import render_defaults
from .schema import Site, SiteConfigError

__all__ = [
    "SPAWNER_CLASSES",
    "Site",
    "SiteConfigError",
    "apply",
    "defaults",
    "load",
    "prepare_state",
    "render_defaults",
    "validate",
]
