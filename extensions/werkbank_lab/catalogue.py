"""The template catalogue: what the lifecycle templates are, read from the templates folder.

A templates folder holds one folder per template, named ``NN-phase`` (``01-onboarding``, ``03-training``),
each with one notebook, and a ``catalogue.yaml`` with what a notebook cannot say about itself::

    templates:
      03-training:
        runtime_minutes: 10      # with the default parameters, on the profile the template is sized for
        needs: [02-data]         # templates to run first (their MLflow output is read)

Title and description come from the notebook itself: its first markdown heading and the paragraph after it.
Parsing is cached by modification time, so listing the catalogue costs a few ``stat`` calls once warm.

Pure module: no Jupyter imports; the server extension (``werkbank_lab.extension``) serves what it returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.yaml"
# A template id is its folder name: two digits, a dash, lower-case words joined by dashes. Ids from URLs are
# only ever looked up in the catalogue, never joined to a path, so this pattern is documentation and a guard.
TEMPLATE_ID = re.compile(r"^(?P<phase>\d\d)-(?P<name>[a-z0-9]+(?:-[a-z0-9]+)*)$")
ENTRY_KEYS = {"runtime_minutes": "minutes with the default parameters", "needs": "templates to run first"}


class CatalogueError(ValueError):
    """The templates folder or its ``catalogue.yaml`` is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Template:
    """One template as the catalogue lists it."""

    id: str  # the folder name, e.g. "03-training"
    phase: int  # 3
    phase_name: str  # "training"
    title: str  # the notebook's first markdown heading
    description: str  # the paragraph after it (markdown, joined into one line)
    runtime_minutes: int | None  # None: the catalogue has no entry for it (a warning was logged)
    needs: tuple[str, ...]  # ids of the templates to run first
    notebook: Path  # the shared original (read only)

    @property
    def runtime(self) -> str:
        """Runtime for people: "about 10 min", or "unknown"."""
        return f"about {self.runtime_minutes} min" if self.runtime_minutes else "unknown"

    @property
    def file_name(self) -> str:
        return self.notebook.name

    def to_json(self) -> dict:
        """What ``GET /werkbank/templates`` lists for it (no server paths)."""
        return {
            "id": self.id,
            "phase": self.phase,
            "phase_name": self.phase_name,
            "title": self.title,
            "description": self.description,
            "runtime_minutes": self.runtime_minutes,
            "runtime": self.runtime,
            "needs": list(self.needs),
            "notebook": self.file_name,
        }


def notebook_summary(path: Path) -> tuple[str, str]:
    """``(title, description)`` of a notebook: its first markdown heading and the first paragraph after it.

    The notebook is read as plain JSON (importing nbformat alone takes seconds). Raises ``CatalogueError``
    when the notebook cannot be read or has no markdown heading.
    """
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CatalogueError(f"{path}: not a readable notebook ({e})") from e
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        lines = ("".join(source) if isinstance(source, list) else source).splitlines()
        for i, line in enumerate(lines):
            if line.startswith("#"):
                title = line.lstrip("#").strip()
                return title, _first_paragraph(lines[i + 1 :])
    raise CatalogueError(f"{path}: no markdown heading to take the title from")


def _first_paragraph(lines: list[str]) -> str:
    paragraph: list[str] = []
    for line in lines:
        text = line.strip()
        if not text:
            if paragraph:
                break
            continue
        if text.startswith("#"):  # the next heading: the first section had no prose
            break
        paragraph.append(text)
    text = " ".join(paragraph)
    # "...two data sets that ship with scikit-learn:" introduces a list the summary leaves out.
    return text[:-1] + "." if text.endswith(":") else text


def template_folders(templates_dir: Path) -> dict[str, Path]:
    """Template id → its notebook, for every ``NN-name`` folder with exactly one notebook.

    Raises ``CatalogueError`` for a template folder with no notebook or several.
    """
    found = {}
    for folder in sorted(p for p in templates_dir.iterdir() if p.is_dir()):
        if not TEMPLATE_ID.match(folder.name):
            continue
        notebooks = sorted(p for p in folder.glob("*.ipynb") if p.is_file())
        if len(notebooks) != 1:
            names = [p.name for p in notebooks] or "none"
            raise CatalogueError(f"{folder}: a template folder has exactly one notebook, found {names}")
        found[folder.name] = notebooks[0]
    return found


def read_entries(path: Path) -> dict[str, dict]:
    """The validated entries of a ``catalogue.yaml``: id → {"runtime_minutes": int, "needs": tuple}.

    Unknown keys, wrong types and ``needs`` naming an id without an entry are errors.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CatalogueError(f"{path}: {e}") from e
    if not isinstance(data, dict) or set(data) - {"templates"}:
        raise CatalogueError(f"{path}: the file has one key, `templates`")
    templates = data.get("templates") or {}
    if not isinstance(templates, dict):
        raise CatalogueError(f"{path}: templates: a mapping of template id to entry")
    entries = {}
    for template_id, entry in templates.items():
        where = f"{path.name}: templates.{template_id}"
        if not isinstance(template_id, str) or not TEMPLATE_ID.match(template_id):
            raise CatalogueError(f"{where}: not a template id (NN-name, like 03-training)")
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: an entry with {', '.join(ENTRY_KEYS)}")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise CatalogueError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(ENTRY_KEYS)})")
        minutes = entry.get("runtime_minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
            raise CatalogueError(
                f"{where}.runtime_minutes: a positive whole number of minutes, not {minutes!r}"
            )
        needs = entry.get("needs", [])
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            raise CatalogueError(f"{where}.needs: a list of template ids, not {needs!r}")
        entries[template_id] = {"runtime_minutes": minutes, "needs": tuple(needs)}
    for template_id, entry in entries.items():
        for need in entry["needs"]:
            if need not in entries:
                raise CatalogueError(f"{path.name}: templates.{template_id}.needs: {need!r} has no entry")
            if need >= template_id:
                raise CatalogueError(
                    f"{path.name}: templates.{template_id}.needs: {need!r} does not come before it"
                )
    return entries


def problems(templates_dir: Path) -> list[str]:
    """Where folders and ``catalogue.yaml`` disagree: a folder without an entry, an entry without a folder.

    The server tolerates both (it lists what it can and logs a warning); the unit tests do not.
    """
    folders = template_folders(templates_dir)
    entries = read_entries(templates_dir / CATALOGUE_FILE)
    return [
        f"{i}: template folder without an entry in {CATALOGUE_FILE}"
        for i in sorted(set(folders) - set(entries))
    ] + [
        f"{i}: entry in {CATALOGUE_FILE} without a template folder"
        for i in sorted(set(entries) - set(folders))
    ]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class Catalogue:
    """The templates under ``templates_dir``, re-read only when a file changed.

    ``templates()`` lists the folders and stats each notebook and ``catalogue.yaml`` on every call (cheap),
    and parses only what changed since the last call. Thread-safe. Errors (``CatalogueError``) are raised to
    the caller each time, until the file is fixed.
    """

    def __init__(self, templates_dir: Path | str):
        self.templates_dir = Path(templates_dir)
        self._lock = threading.Lock()
        self._summaries: dict[Path, tuple[tuple[int, int] | None, tuple[str, str]]] = {}
        self._entries: tuple[tuple[int, int] | None, dict[str, dict]] | None = None
        self._warned: set[str] = set()

    def templates(self) -> list[Template]:
        """All templates, in lifecycle order."""
        if not self.templates_dir.is_dir():
            raise CatalogueError(f"{self.templates_dir}: the templates folder does not exist")
        with self._lock:
            folders = template_folders(self.templates_dir)
            entries = self._read_entries()
            self._warn_once(folders, entries)
            result = []
            for template_id, notebook in folders.items():
                title, description = self._summary(notebook)
                entry = entries.get(template_id, {})
                phase, _, name = template_id.partition("-")
                result.append(
                    Template(
                        id=template_id,
                        phase=int(phase),
                        phase_name=name,
                        title=title,
                        description=description,
                        runtime_minutes=entry.get("runtime_minutes"),
                        needs=tuple(n for n in entry.get("needs", ()) if n in folders),
                        notebook=notebook,
                    )
                )
            return result

    def get(self, template_id: str) -> Template | None:
        """The template with this id, or None. The id is compared, never used as a path."""
        return next((t for t in self.templates() if t.id == template_id), None)

    def _read_entries(self) -> dict[str, dict]:
        path = self.templates_dir / CATALOGUE_FILE
        stamp = _stamp(path)
        if stamp is None:
            return {}
        if self._entries is None or self._entries[0] != stamp:
            self._entries = (stamp, read_entries(path))
        return self._entries[1]

    def _summary(self, notebook: Path) -> tuple[str, str]:
        stamp = _stamp(notebook)
        cached = self._summaries.get(notebook)
        if cached is None or cached[0] != stamp:
            cached = (stamp, notebook_summary(notebook))
            self._summaries[notebook] = cached
        return cached[1]

    def _warn_once(self, folders: dict, entries: dict) -> None:
        if not (self.templates_dir / CATALOGUE_FILE).exists():
            messages = [f"{self.templates_dir}: no {CATALOGUE_FILE}; runtimes and prerequisites unknown"]
        else:
            messages = [
                f"{self.templates_dir}: {i} has no entry in {CATALOGUE_FILE}"
                for i in sorted(set(folders) - set(entries))
            ]
        for message in messages:
            if message not in self._warned:
                self._warned.add(message)
                log.warning(message)


def default_templates_dir() -> str:
    """``$WERKBANK_TEMPLATES_DIR``, else the checkout's ``notebooks/`` when werkbank-lab is installed editable
    from a werkbank checkout, else ``<environment>/share/werkbank/notebooks`` where ``deploy/install.sh`` puts
    them beside an installed package, else "" (no templates)."""
    configured = os.environ.get("WERKBANK_TEMPLATES_DIR", "")
    if configured:
        return configured
    for candidate in (
        Path(__file__).resolve().parents[2] / "notebooks",
        Path(sys.prefix) / "share" / "werkbank" / "notebooks",
    ):
        if (candidate / CATALOGUE_FILE).is_file():
            return str(candidate)
    return ""
