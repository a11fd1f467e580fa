"""werkbank's JupyterHub configuration: load the site file, validate it, apply it.

Admins edit the site file, not this file: ``site.yaml`` beside this file, or the file named
by the environment variable ``WERKBANK_SITE_CONFIG``. ``werkbank-site defaults`` prints every
key with its default and meaning; ``werkbank-site check FILE`` checks a file without starting
anything. A site file with a problem stops the hub at start with ``FATAL: <key.path>: <what>``.

``WERKBANK_SPAWNER=local|slurm`` overrides ``hub.spawner``: ``make demo`` sets it to ``local``
(clearly labelled) where Slurm cannot be set up.

Escape hatch: ``*.py`` files in ``jupyterhub_config.d/`` beside this file run afterwards, in
sorted order, with the same globals as this file (``c``, ``get_config``), so they can read
and override anything the site file set. Use them for what the site file does not cover, and
prefer asking for a site-file key over keeping such a file for long.
"""

import os
import sys
from pathlib import Path

# Imported here, not lazily through spawner_class: the module replaces batchspawner's
# port-report API route, and must do so before the hub builds its handler list.
import werkbank_spawner.spawner
from werkbank_spawner import site as werkbank_site

c = get_config()  # noqa: F821 (provided by JupyterHub's config loader)

HERE = Path(__file__).resolve().parent
SITE_FILE = Path(os.environ.get("WERKBANK_SITE_CONFIG") or HERE / "site.yaml")

try:
    data = werkbank_site.load(SITE_FILE)
    if os.environ.get("WERKBANK_SPAWNER"):
        hub = data.get("hub") or {}
        data["hub"] = {**hub, "spawner": os.environ["WERKBANK_SPAWNER"]} if isinstance(hub, dict) else hub
    # Validated once: the typed, frozen Site is what everything below receives.
    site = werkbank_site.validate(data)
    werkbank_site.apply(c, site, config_dir=SITE_FILE.resolve().parent, site_file=SITE_FILE)
    # JupyterHub writes its cookie secret into hub.data_dir but does not create it; MLflow's
    # permission configuration is written from the site file.
    werkbank_site.prepare_state(site, config_dir=SITE_FILE.resolve().parent)
except werkbank_site.SiteConfigError as error:
    print(f"FATAL: {error}", file=sys.stderr)
    sys.exit(1)

for extra in sorted((HERE / "jupyterhub_config.d").glob("*.py")):
    namespace = {**globals(), "__file__": str(extra), "__name__": "__config__"}
    exec(compile(extra.read_text(encoding="utf-8"), str(extra), "exec"), namespace)

# batchspawner's own settings (req_*, batch_script, exec_prefix, ...) would do nothing here: an
# admin following batchspawner's documentation is told so, instead of seeing no effect.
ignored = werkbank_spawner.spawner.ignored_settings(c)
if ignored and c.JupyterHub.spawner_class == werkbank_site.SPAWNER_CLASSES["slurm"]:
    print(f"FATAL: {werkbank_spawner.spawner.ignored_settings_message(ignored)}", file=sys.stderr)
    sys.exit(1)
