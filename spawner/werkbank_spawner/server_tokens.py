"""Which server a hub API request's token belongs to: the routes werkbank adds to the hub API
(port reports, job tokens, dashboard shares) answer a session's own token only, never its
user's other tokens (which may be narrower, or broader)."""

from __future__ import annotations

import hmac


def server_of_token(handler):
    """The spawner of the request's user whose own API token (``JUPYTERHUB_API_TOKEN``) the request
    carries, or None (another token, a service, no user)."""
    token = handler.get_auth_token() or ""
    for spawner in getattr(handler.current_user, "spawners", {}).values():
        theirs = getattr(spawner, "api_token", None) or ""
        if theirs and token and hmac.compare_digest(theirs, token):
            return spawner
    return None
