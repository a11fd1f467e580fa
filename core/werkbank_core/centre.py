"""What a client of the centre should know: its name, where to get help, where data may go.

An admin describes the centre in the site file (``centre:``, ``werkbank_spawner.site.schema.Centre``,
whose defaults are :data:`DEFAULTS`); the spawners give it to every session as one environment
variable, :data:`ENV` (compact JSON, :func:`to_environ`); the first-hour template reads it with
:func:`from_environ`. Where the variable is absent (papermill in CI, a laptop) the defaults apply: those
of the single-machine demo. Storage paths may start with ``~`` or name variables (``/scratch/$USER``);
:meth:`StorageArea.expanded` expands them in the session, as the user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

#: The session's environment variable holding the site file's ``centre:`` section as JSON.
ENV = "WERKBANK_CENTRE"
#: The storage areas a centre describes, in the order clients read about them.
STORAGE_AREAS = ("home", "project", "scratch")

#: The defaults, for the demo: the site file's schema takes its defaults from here.
DEFAULTS: dict = {
    "name": "AI Factory (demo)",
    "help": "your trainer or the centre's support",
    "help_url": "",
    "data_protection": (
        "Personal data (anything that identifies a person, directly or together with other data) may be "
        "stored and processed here only as far as the data-processing agreement between your organisation "
        "and the centre allows. Pseudonymise it before you bring it in and keep the key that links "
        "pseudonyms to people outside the AI Factory. Never put personal data in MLflow run names, "
        "parameters or tags: everyone who may see the experiment sees them."
    ),
    "storage": {
        "home": {
            "path": "~",
            "purpose": "Your code, notebooks, settings and small results; yours alone, on every node.",
            "backed_up": True,
            "quota": "",
        },
        "project": {
            "path": "",
            "purpose": "Data sets, models and results shared with your project's members.",
            "backed_up": True,
            "quota": "",
        },
        "scratch": {
            "path": "/tmp",
            "purpose": (
                "Large temporary files: unpacked data sets, checkpoints while a model trains. Fast, but "
                "files may be deleted; copy what you keep to home or project."
            ),
            "backed_up": False,
            "quota": "",
        },
    },
}


@dataclass(frozen=True)
class StorageArea:
    """One place for files, as the centre describes it."""

    name: str  # home, project or scratch
    path: str  # as the admin wrote it; "": the centre offers no such area
    purpose: str
    backed_up: bool
    quota: str  # the centre's words, e.g. "50 GB per user"; "": not stated

    def expanded(self) -> str:
        """The path with ``~`` and ``$VARIABLES`` expanded ("" for an area the centre does not offer)."""
        return os.path.expandvars(os.path.expanduser(self.path)) if self.path else ""


@dataclass(frozen=True)
class Centre:
    name: str
    help: str  # who clients ask: a team, an address
    help_url: str  # a web page for help; "": none
    data_protection: str  # the centre's note on personal data (GDPR)
    storage: tuple[StorageArea, ...]  # in the order of STORAGE_AREAS
    source: str  # where this came from: the site file, or why the defaults apply

    def area(self, name: str) -> StorageArea:
        return next(a for a in self.storage if a.name == name)


def to_environ(centre: Mapping) -> str:
    """The value of :data:`ENV` for a centre given as the site file's ``centre:`` mapping."""
    return json.dumps(centre, separators=(",", ":"), sort_keys=True)


def from_environ(environ: Mapping[str, str] | None = None) -> Centre:
    """The centre that :data:`ENV` describes, every missing or mistyped value from :data:`DEFAULTS`.

    Never raises: a session without the variable (or with one it cannot read) gets the defaults, and
    ``source`` says so.
    """
    text = (os.environ if environ is None else environ).get(ENV, "")
    given: object = {}
    if not text:
        source = f"defaults ({ENV} is not set)"
    else:
        try:
            given = json.loads(text)
            source = "the site file"
        except ValueError as e:
            source = f"defaults ({ENV} cannot be read: {e})"
        if not isinstance(given, dict):
            given, source = {}, f"defaults ({ENV} is not a JSON object)"
    values = _merged(DEFAULTS, given)
    storage = tuple(StorageArea(name=name, **values["storage"][name]) for name in STORAGE_AREAS)
    texts = {key: values[key] for key in ("name", "help", "help_url", "data_protection")}
    return Centre(**texts, storage=storage, source=source)


def _merged(defaults: dict, given: object) -> dict:
    """``defaults`` with the values of ``given`` whose key is known and whose type matches."""
    given = given if isinstance(given, dict) else {}
    merged = {}
    for key, default in defaults.items():
        value = given.get(key)
        if isinstance(default, dict):
            merged[key] = _merged(default, value)
        else:
            merged[key] = value if type(value) is type(default) else default
    return merged
