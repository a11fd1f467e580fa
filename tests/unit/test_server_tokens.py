"""A server's own token after a hub restart (werkbank_spawner.server_tokens): JupyterHub keeps the
token in memory only, so the Slurm spawner keeps its database id in its state, recognises the
server's requests by it and deletes the token when the server stops. A real JupyterHub database
(SQLite in memory), not a stand-in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jupyterhub import orm

from werkbank_spawner.server_tokens import delete_server_token, server_of_token, server_token_id


@pytest.fixture
def db():
    session = orm.new_session_factory("sqlite:///:memory:")()
    session.add(orm.OAuthClient(identifier="jupyterhub"))
    for name in ("alice", "bob"):
        session.add(orm.User(name=name))
    session.commit()
    return session


def user(db, name):
    return db.query(orm.User).filter_by(name=name).one()


class Handler:
    """What server_of_token asks of JupyterHub's API handler."""

    def __init__(self, db, token, current_user):
        self.db, self.token, self.current_user = db, token, current_user

    def get_auth_token(self):
        return self.token

    def get_token(self):
        return orm.APIToken.find(self.db, self.token)


def test_the_server_is_known_by_its_token_id_once_the_hub_forgot_the_token(db):
    alice = user(db, "alice")
    token = alice.new_api_token(note="Server at /user/alice/")
    other = alice.new_api_token(note="alice's own token")
    running = SimpleNamespace(api_token=token, server_token_id=server_token_id(db, token))
    assert running.server_token_id
    owner = SimpleNamespace(spawners={"": running})
    assert server_of_token(Handler(db, token, owner)) is running
    # The hub restarted: the spawner's state has the id, not the token.
    restarted = SimpleNamespace(api_token="", server_token_id=running.server_token_id)
    owner = SimpleNamespace(spawners={"": restarted})
    assert server_of_token(Handler(db, token, owner)) is restarted
    assert server_of_token(Handler(db, other, owner)) is None
    assert server_of_token(Handler(db, "", owner)) is None
    assert (
        server_of_token(Handler(db, token, SimpleNamespace(spawners={"": SimpleNamespace(api_token="")})))
        is None
    )


def test_a_stopped_servers_token_is_deleted_by_its_id_and_nothing_else(db):
    alice, bob = user(db, "alice"), user(db, "bob")
    token = alice.new_api_token(note="Server at /user/alice/")
    own = alice.new_api_token(note="alice's own token")
    bobs = bob.new_api_token(note="Server at /user/bob/")
    token_id = server_token_id(db, token)
    # Not another user's server token, not a token of the user that is no server's.
    assert not delete_server_token(db, server_token_id(db, bobs), alice.id)
    assert not delete_server_token(db, server_token_id(db, own), alice.id)
    assert delete_server_token(db, token_id, alice.id)
    db.commit()
    assert orm.APIToken.find(db, token) is None
    assert orm.APIToken.find(db, own) is not None and orm.APIToken.find(db, bobs) is not None
    assert not delete_server_token(db, token_id, alice.id)  # gone already (JupyterHub's own stop)
    assert server_token_id(db, "") == 0 and server_token_id(None, token) == 0
