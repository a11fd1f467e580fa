"""Launch links: one URL that logs a user in (if need be), starts their server with a named
profile (or reuses the running one) and opens a template, a notebook or a dashboard, for course
pages, e-mails and the catalogue.

JupyterHub starts a server from the spawn page's query (``/hub/spawn?profile=gpu1``), through
the spawner's usual validation (an unknown profile is refused on the spawn page, nothing reaches
``sbatch``), and sends the user on to ``next`` once the server is ready. werkbank's session
route ``/werkbank/open/<template>`` copies a template into the user's workspace and opens the
copy; ``/hub/user-redirect/`` makes one link work for every user.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode, urlsplit

from .schema import Site, SiteConfigError

#: A template's id in the catalogue (notebooks/catalogue.yaml), e.g. 03-training.
TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")


def launch_link(site: Site, profile: str, *, template: str = "", path: str = "", dashboard: str = "") -> str:
    """``<hub>/hub/spawn?profile=<profile>&next=<hub base>/hub/user-redirect/<target>``: the
    target is a fresh copy of ``template``, or ``path`` (a notebook or folder in the user's home,
    opened in JupyterLab), or ``dashboard`` (a notebook of theirs, opened as a Voila dashboard),
    or JupyterLab itself."""
    if not any(p.name == profile for p in site.profiles):
        known = ", ".join(p.name for p in site.profiles)
        raise SiteConfigError("profile", f"no profile {profile!r} in the site file; known: {known}")
    if sum(map(bool, (template, path, dashboard))) > 1:
        raise SiteConfigError("open", "one of a template, a path or a dashboard")
    if template and not TEMPLATE_ID.match(template):
        raise SiteConfigError("template", f"{template!r} is not a template id (e.g. 03-training)")
    for key, value in (("path", path), ("dashboard", dashboard)):
        if value and (value.startswith("/") or ".." in value.split("/")):
            raise SiteConfigError(key, f"{value!r}: a path inside the user's home, e.g. course/intro.ipynb")
    if dashboard and not dashboard.endswith(".ipynb"):
        raise SiteConfigError("dashboard", f"{dashboard!r} is not a notebook (.ipynb)")
    if template:
        target = f"werkbank/open/{quote(template)}"
    elif path:
        target = f"lab/tree/{quote(path)}"
    elif dashboard:
        target = f"voila/render/{quote(dashboard)}"
    else:
        target = "lab"
    base = urlsplit(site.hub.bind_url).path.rstrip("/")
    query = urlencode({"profile": profile, "next": f"{base}/hub/user-redirect/{target}"})
    return f"{site.hub.users_url}/hub/spawn?{query}"
