"""Which server a hub API request's token belongs to: the routes werkbank adds to the hub API
(port reports, end reports, job tokens, dashboard shares) answer a session's own token only, never
its user's other tokens (which may be narrower, or broader).

JupyterHub keeps a server's token (``Spawner.api_token``) in memory only; its database holds the
token's hash. After a hub restart the spawner of a running server no longer knows it: the Slurm
spawner keeps the token's database id in its state instead (:func:`server_token_id`), by which
the server is still recognised, and by which the token is deleted when the server stops
(:func:`delete_server_token`; JupyterHub deletes it only while it still holds it in memory, so a
stopped server's token would otherwise stay valid).
"""

from __future__ import annotations

import hmac

from jupyterhub import orm

#: How JupyterHub names a server's token (``User.spawn``: "Server at <base_url>").
SERVER_TOKEN_NOTE = "Server at "


def server_of_token(handler):
    """The spawner of the request's user whose own API token (``JUPYTERHUB_API_TOKEN``) the request
    carries, or None (another token, a service, no user)."""
    token = handler.get_auth_token() or ""
    if not token:
        return None
    request_token = None
    for spawner in getattr(handler.current_user, "spawners", {}).values():
        theirs = getattr(spawner, "api_token", None) or ""
        if theirs:
            if hmac.compare_digest(theirs, token):
                return spawner
            continue
        token_id = getattr(spawner, "server_token_id", 0)
        if token_id:  # a hub restarted since the server started
            request_token = request_token or handler.get_token()
            if request_token is not None and request_token.id == token_id:
                return spawner
    return None


def server_token_id(db, api_token: str) -> int:
    """The database id of the server token ``api_token`` (0 if there is none)."""
    found = orm.APIToken.find(db, api_token) if api_token and db is not None else None
    return found.id if found is not None else 0


def delete_server_token(db, token_id: int, user_id: int) -> bool:
    """Delete the server token with ``token_id`` if it still exists and is a server token of the
    user ``user_id`` (the caller commits; JupyterHub does right after ``clear_state``)."""
    token = db.get(orm.APIToken, token_id) if token_id else None
    if token is None or token.user_id != user_id or not (token.note or "").startswith(SERVER_TOKEN_NOTE):
        return False
    db.delete(token)
    return True
