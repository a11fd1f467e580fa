"""Copies of templates in the user's workspace: where they go and how they are named.

The shared originals are never written: a copy is read from the templates folder and saved through the
server's contents manager (so it lands inside ``root_dir``, where JupyterLab can open it, with the usual
save hooks), under a name no file has yet: ``training.ipynb``, then ``training-1.ipynb``,
``training-2.ipynb``...
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path, PurePosixPath

from jupyter_server.utils import ensure_async

from werkbank_lab.catalogue import Template

DEFAULT_FOLDER = "werkbank-templates"


def workspace_api_path(root_dir: str | Path, workspace_dir: str, home: str | Path) -> str:
    """The workspace folder as a contents-API path (relative to ``root_dir``, "/"-separated; "" is the root).

    ``workspace_dir`` is absolute or relative to ``root_dir``; "" means ``~/werkbank-templates`` when the home
    folder is inside ``root_dir``, else ``werkbank-templates`` in ``root_dir``. Raises ``ValueError`` when the
    folder is outside ``root_dir`` (JupyterLab could not open the copies).
    """
    root = Path(root_dir).expanduser().resolve()
    if not workspace_dir:
        candidate = Path(home).expanduser().resolve() / DEFAULT_FOLDER
        if not candidate.is_relative_to(root):
            candidate = root / DEFAULT_FOLDER
    else:
        candidate = Path(workspace_dir).expanduser()
        candidate = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not candidate.is_relative_to(root):
        raise ValueError(
            f"WerkbankLab.workspace_dir: {candidate} is outside the server's root_dir {root}; "
            "JupyterLab could not open the copies"
        )
    relative = candidate.relative_to(root)
    return "" if relative == Path(".") else relative.as_posix()


#: A markdown link to a notebook of another phase folder, as the templates write them:
#: ``[the data template](../02-data/data.ipynb)``, with an optional ``#anchor`` (dropped: the copy
#: opens at its top).
_TEMPLATE_LINK = re.compile(r"\]\(\.\./(\d\d-[a-z0-9-]+)/([A-Za-z0-9_.-]+\.ipynb)(#[^)\s]*)?\)")


def relink(content: dict, open_urls: dict[str, str]) -> dict:
    """``content`` (a notebook's JSON) with its markdown links to other templates
    (``../02-data/data.ipynb``), which do not exist beside a copy, pointed at ``open_urls[id]``
    (the route that copies that template and opens it). Other links are left as they are."""

    def replace(match: re.Match) -> str:
        url = open_urls.get(match.group(1))
        return f"]({url})" if url else match.group(0)

    for cell in content.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            text = "".join(source) if isinstance(source, list) else source
            cell["source"] = _TEMPLATE_LINK.sub(replace, text)
    return content


def copy_names(file_name: str):
    """``training.ipynb``, ``training-1.ipynb``, ``training-2.ipynb``, ... (endless)."""
    stem, suffix = PurePosixPath(file_name).stem, PurePosixPath(file_name).suffix
    yield file_name
    n = 1
    while True:
        yield f"{stem}-{n}{suffix}"
        n += 1


class Workspace:
    """Makes copies of templates in one folder of a contents manager.

    Copies made through one ``Workspace`` are serialised (an ``asyncio.Lock``), so two quick clicks get two
    names, never one file written twice; a file the user created meanwhile is never overwritten either, since
    each name is checked just before it is used.
    """

    def __init__(self, contents_manager, folder: str):
        self.contents_manager = contents_manager
        self.folder = folder
        self._lock = asyncio.Lock()

    async def copy(self, template: Template, open_urls: dict[str, str] | None = None) -> str:
        """Copy ``template`` into the workspace; returns the copy's contents-API path. Links to
        other templates are pointed at ``open_urls`` (template id → URL), see :func:`relink`."""
        content = relink(json.loads(template.notebook.read_text(encoding="utf-8")), open_urls or {})
        cm = self.contents_manager
        async with self._lock:
            await self._ensure_folder()
            for name in copy_names(template.file_name):
                path = f"{self.folder}/{name}" if self.folder else name
                if not await ensure_async(cm.exists(path)):
                    break
            await ensure_async(cm.save({"type": "notebook", "format": "json", "content": content}, path))
        return path

    async def _ensure_folder(self) -> None:
        cm = self.contents_manager
        parts = PurePosixPath(self.folder).parts if self.folder else ()
        for i in range(len(parts)):
            path = "/".join(parts[: i + 1])
            if not await ensure_async(cm.dir_exists(path)):
                await ensure_async(cm.save({"type": "directory"}, path))
