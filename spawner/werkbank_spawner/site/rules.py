"""The rules between a site's keys, checked on a :class:`Site` whose shape is right.

Each ``check_*`` function raises :class:`SiteConfigError` naming the key to change. Profiles,
custom fields and limits are checked by :func:`werkbank_core.policy.policy_from_dict`, the
code the spawner itself runs, whose error paths are site-file paths already.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from werkbank_core.centre import STORAGE_AREAS
from werkbank_core.policy import PolicyError, policy_from_dict

from ..workshop.roles import group_name
from .database import LIBPQ_SCHEMES, refuse_password_in_url
from .schema import (
    DEFAULT_HUB_BIND_URL,
    SHARED_PASSWORD_MIN_LENGTH,
    Auth,
    Centre,
    Hub,
    MLflow,
    OAuth,
    Site,
    SiteConfigError,
    Slurm,
)
from .services import is_unspecified, mlflow_proxy_host, mlflow_proxy_port, mlflow_service_prefix

#: How the JupyterHub groups of workshop courses begin (``course-<name>``).
COURSE_GROUP_PREFIX = group_name("")

#: SQLAlchemy's driver module of a database URI scheme (its default where none is named: psycopg
#: 3 for PostgreSQL since SQLAlchemy 2.1) and the pip package that provides it.
DATABASE_DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
}


def check(site: Site) -> None:
    """Every rule, area by area; the first broken one raises."""
    check_hub(site.hub)
    check_auth(site.auth, site.hub)
    check_slurm(site.slurm)
    check_policy(site)
    check_tracking(site.tracking.mlflow, site.hub)
    check_centre(site.centre)
    check_internal_ssl(site)


def check_url(value: str, path: str) -> None:
    """An http(s) URL with a valid port (an empty host means every interface)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SiteConfigError(path, f"expected an http:// or https:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise SiteConfigError(path, f"{value!r} has an invalid port") from None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False  # no host: every interface
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_hub(hub: Hub) -> None:
    check_url(hub.bind_url, "hub.bind_url")
    if hub.hub_bind_url:
        check_url(hub.hub_bind_url, "hub.hub_bind_url")
    if hub.subdomain_host:
        check_url(hub.subdomain_host, "hub.subdomain_host")
        if urlsplit(hub.subdomain_host).path not in ("", "/"):
            raise SiteConfigError("hub.subdomain_host", "a scheme and host (and port) only, no path")
    if not hub.data_dir.strip():
        raise SiteConfigError("hub.data_dir", "must not be empty")
    check_hub_database(hub)
    check_proxy_tls(hub)


def check_proxy_tls(hub: Hub) -> None:
    """TLS where users connect: ``hub.tls_cert_file`` and ``hub.tls_key_file`` together, absolute,
    with an https ``bind_url``; an https ``bind_url`` only with them (JupyterHub would quietly make
    it http: and serve plain HTTP at an address that promises TLS). A site whose TLS ends in front
    of the hub (nginx, HAProxy) says so with ``hub.public_url``. The files themselves are read at
    start (:func:`.apply.update_proxy_tls`)."""
    files = {"hub.tls_cert_file": hub.tls_cert_file, "hub.tls_key_file": hub.tls_key_file}
    for key, path in files.items():
        other = next(k for k in files if k != key)
        if path and not files[other]:
            raise SiteConfigError(other, f"required with {key}: the proxy needs both to serve TLS")
        if path and not path.startswith("/"):
            raise SiteConfigError(key, f"must be an absolute path, got {path!r}")
    scheme = urlsplit(hub.bind_url).scheme
    if hub.tls_cert_file and scheme != "https":
        raise SiteConfigError(
            "hub.bind_url",
            f"must be https:// with hub.tls_cert_file (the proxy serves TLS there), got {hub.bind_url!r}",
        )
    if scheme == "https" and not hub.tls_cert_file:
        raise SiteConfigError(
            "hub.bind_url",
            "https:// needs hub.tls_cert_file and hub.tls_key_file: without them the proxy serves "
            "plain HTTP there. If TLS ends in front of the hub (nginx, HAProxy), make bind_url the "
            "http:// address the front end forwards to and hub.public_url the https:// address "
            "users open",
        )
    if hub.public_url:
        _check_public_url(hub)


def _check_public_url(hub: Hub) -> None:
    """``hub.public_url``: the https front end's address, whose path (if any) is bind_url's: the
    front end forwards paths unchanged, and JupyterHub routes by them."""
    check_url(hub.public_url, "hub.public_url")
    parts = urlsplit(hub.public_url)
    if parts.scheme != "https":
        raise SiteConfigError(
            "hub.public_url",
            f"an https:// URL, where TLS ends in front of the hub, got {hub.public_url!r}",
        )
    base = urlsplit(hub.bind_url).path.rstrip("/")
    if parts.path.rstrip("/") not in ("", base) or parts.query or parts.fragment:
        raise SiteConfigError(
            "hub.public_url",
            f"scheme, host, port and at most bind_url's path {base or '/'}, got {hub.public_url!r}",
        )
    if hub.subdomain_host:
        raise SiteConfigError(
            "hub.public_url",
            "hub.subdomain_host already is the hub's public address; remove one of them",
        )


#: Database backends the hub may keep its state in: those werkbank tests (SQLite, PostgreSQL).
HUB_DATABASES = ("sqlite", "postgresql")


def check_hub_database(hub: Hub) -> None:
    """``hub.db_url``: SQLite (an absolute path) or PostgreSQL (a database named) with its driver
    installed and no password in it; ``hub.db_password_file`` only with PostgreSQL. Messages
    never repeat the URL: it may hold the very password they complain about."""
    if not hub.db_url:
        if hub.db_password_file:
            raise SiteConfigError(
                "hub.db_password_file", "only used with a postgresql hub.db_url; remove it or set db_url"
            )
        return
    try:
        url = make_url(hub.db_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise SiteConfigError(
            "hub.db_url", "not a database URL; e.g. postgresql+psycopg://jupyterhub@db.cluster/jupyterhub"
        ) from None
    backend = url.get_backend_name()
    if backend not in HUB_DATABASES:
        raise SiteConfigError(
            "hub.db_url",
            f"{backend} is not supported: werkbank keeps the hub's state in sqlite or postgresql",
        )
    refuse_password_in_url(hub.db_url, "hub.db_url", "hub.db_password_file")
    if backend == "sqlite":
        if not url.database or not url.database.startswith("/"):
            raise SiteConfigError("hub.db_url", "sqlite needs an absolute path: sqlite:////var/lib/...")
        if hub.db_password_file:
            raise SiteConfigError("hub.db_password_file", "only used with a postgresql hub.db_url")
    elif not url.database:
        raise SiteConfigError("hub.db_url", "name the database: postgresql+psycopg://user@host/DATABASE")
    if hub.db_password_file and not hub.db_password_file.startswith("/"):
        raise SiteConfigError(
            "hub.db_password_file", f"must be an absolute path, got {hub.db_password_file!r}"
        )
    check_database_driver(hub.db_url, "hub.db_url")


def check_auth(auth: Auth, hub: Hub) -> None:
    if auth.type == "shared-password":
        # The proxy's API is on loopback by construction (apply); the hub's two addresses are
        # the site's: anyone who reaches either could log in as anybody with one password.
        for key in ("bind_url", "hub_bind_url"):
            host = urlsplit(getattr(hub, key) or DEFAULT_HUB_BIND_URL).hostname
            if not is_loopback(host):
                raise SiteConfigError(
                    "auth.type",
                    f"shared-password is for demos on this machine only and is refused when "
                    f"hub.{key} listens on {host or 'every interface'}, which is not a "
                    "loopback address (127.0.0.0/8, ::1, localhost); use pam or oauth",
                )
        if len(auth.shared_password) < SHARED_PASSWORD_MIN_LENGTH:
            raise SiteConfigError(
                "auth.shared_password",
                f"needs at least {SHARED_PASSWORD_MIN_LENGTH} characters with type "
                f"shared-password, got {len(auth.shared_password)}",
            )
    elif auth.shared_password:
        # A password that is silently unused would make an admin believe it protects the hub.
        raise SiteConfigError(
            "auth.shared_password", f"only used with type shared-password (type is {auth.type}); remove it"
        )
    if auth.type == "oauth":
        _check_oauth(auth)


def _check_oauth(auth: Auth) -> None:
    oauth = auth.oauth
    for key in ("client_id", "authorize_url", "token_url", "userdata_url"):
        if not getattr(oauth, key).strip():
            raise SiteConfigError(f"auth.oauth.{key}", "required when auth.type is oauth")
    _check_client_secret(oauth)
    for key in ("authorize_url", "token_url", "userdata_url", "callback_url"):
        if getattr(oauth, key):
            check_url(getattr(oauth, key), f"auth.oauth.{key}")
    if not oauth.username_claim.strip():
        raise SiteConfigError("auth.oauth.username_claim", "must not be empty")
    if oauth.issuer:
        check_url(oauth.issuer, "auth.oauth.issuer")
        if "openid" not in oauth.scope:
            raise SiteConfigError(
                "auth.oauth.scope",
                "must include openid with auth.oauth.issuer: without it there is no id_token",
            )
    _check_provider_groups(auth)


def _check_client_secret(oauth: OAuth) -> None:
    """The client secret in exactly one place: ``client_secret_file`` (an absolute path, read at
    start by :func:`.apply.update_auth`) or ``client_secret``."""
    if oauth.client_secret and oauth.client_secret_file:
        raise SiteConfigError(
            "auth.oauth.client_secret",
            "give the secret in one place: remove client_secret (written in the site file) and "
            "keep client_secret_file",
        )
    if oauth.client_secret_file:
        if not oauth.client_secret_file.startswith("/"):
            raise SiteConfigError(
                "auth.oauth.client_secret_file", f"must be an absolute path, got {oauth.client_secret_file!r}"
            )
    elif not oauth.client_secret.strip():
        raise SiteConfigError(
            "auth.oauth.client_secret_file",
            "required when auth.type is oauth: a file whose first line is the client secret "
            "(or the secret itself in auth.oauth.client_secret)",
        )


def _check_provider_groups(auth: Auth) -> None:
    """groups_claim, group_map and allowed_groups: a claim path that names something, groups
    with names, and no mapping onto the course groups that werkbank-workshop keeps."""
    oauth = auth.oauth
    if oauth.group_map or oauth.allowed_groups:
        parts = oauth.groups_claim.split(".")
        if not all(part.strip() for part in parts):
            raise SiteConfigError(
                "auth.oauth.groups_claim",
                f"a claim name, or names joined by dots for a nested claim (realm_access.roles); "
                f"got {oauth.groups_claim!r}",
            )
    for provider_group, hub_group in oauth.group_map.items():
        key = f"auth.oauth.group_map[{provider_group!r}]"
        if not provider_group.strip():
            raise SiteConfigError("auth.oauth.group_map", "a provider group name must not be empty")
        if not hub_group.strip() or hub_group != hub_group.strip():
            raise SiteConfigError(key, f"a hub group name without surrounding spaces, got {hub_group!r}")
        if hub_group.startswith(COURSE_GROUP_PREFIX):
            # The login would take participants out of a course werkbank-workshop put them in.
            raise SiteConfigError(
                key,
                f"{hub_group!r}: hub groups starting with {COURSE_GROUP_PREFIX!r} are workshop "
                "courses, which werkbank-workshop fills; choose another name",
            )
    for i, group in enumerate(oauth.allowed_groups):
        if not group.strip():
            raise SiteConfigError(f"auth.oauth.allowed_groups[{i}]", "must not be empty")
    if oauth.allowed_groups and auth.allow_all:
        # Unused admission rules would make an admin believe they restrict who logs in.
        raise SiteConfigError(
            "auth.oauth.allowed_groups", "auth.allow_all admits everyone the provider knows; remove one"
        )


def check_internal_ssl(site: Site) -> None:
    """``hub.internal_ssl`` only with the Slurm spawner (the local fallback would stage
    certificates as root in the user's home, as JupyterHub's LocalProcessSpawner does). The
    MLflow proxy then serves TLS with a certificate of the hub's CA: jobs reach it at an https
    ``tracking.mlflow.public_url`` (or its own https address), which they check with that CA."""
    if not site.hub.internal_ssl:
        return
    if site.hub.spawner != "slurm":
        raise SiteConfigError("hub.internal_ssl", "only with hub.spawner: slurm, not the local fallback")
    mlflow = site.tracking.mlflow
    if mlflow.proxy and mlflow.public_url and urlsplit(mlflow.public_url).scheme != "https":
        raise SiteConfigError(
            "tracking.mlflow.public_url",
            "must be https:// with hub.internal_ssl: the proxy service then speaks TLS only, with "
            "a certificate of the hub's internal CA for this host (give jobs its address directly, "
            f"not through another proxy), got {mlflow.public_url!r}",
        )


def check_slurm(slurm: Slurm) -> None:
    ports = slurm.port_range
    if len(ports) != 2 or not 1024 <= ports[0] <= ports[1] <= 65535:
        raise SiteConfigError(
            "slurm.port_range", f"{list(ports)!r}: need [first, last] with 1024 <= first <= last <= 65535"
        )


def check_policy(site: Site) -> None:
    """Profiles, custom fields and limits, by the policy code the spawner itself runs."""
    try:
        policy = policy_from_dict(site.policy_config())
    except PolicyError as e:
        raise SiteConfigError(e.field, e.message) from None
    if not policy.default_limits.partitions:
        raise SiteConfigError("limits.default.partitions", "name at least one partition users may run in")
    allowed = set(policy.default_limits.partitions)
    for limits in policy.group_limits.values():
        allowed.update(limits.partitions)
    for i, profile in enumerate(policy.profiles):
        if profile.partition not in allowed:
            raise SiteConfigError(
                f"profiles[{i}].partition",
                f"partition {profile.partition!r} is in neither limits.default.partitions nor "
                "any group's partitions, so nobody could use this profile",
            )


def check_tracking(mlflow: MLflow, hub: Hub) -> None:
    check_url(mlflow.url, "tracking.mlflow.url")
    if not mlflow.host.strip():
        raise SiteConfigError("tracking.mlflow.host", "must not be empty")
    if not mlflow.service_user.strip():
        raise SiteConfigError("tracking.mlflow.service_user", "must not be empty (MLflow never runs as root)")
    check_mlflow_databases(mlflow)
    if mlflow.manage and mlflow.backend_store_uri:
        check_database_driver(mlflow.backend_store_uri, "tracking.mlflow.backend_store_uri")
    if mlflow.permission_checks and mlflow.auth_database_uri:
        check_database_driver(mlflow.auth_database_uri, "tracking.mlflow.auth_database_uri")
    if mlflow.proxy:
        _check_proxy(mlflow, hub)
    elif mlflow.public_url:
        # An unused public URL would make an admin believe jobs go through the proxy.
        raise SiteConfigError("tracking.mlflow.public_url", "only used with proxy: true; remove it")


def check_mlflow_databases(mlflow: MLflow) -> None:
    """No password in ``backend_store_uri`` or ``auth_database_uri`` (used or not: either way it
    would be in the site file); ``db_password_file`` only where the managed server uses a
    PostgreSQL URI, every such URI through libpq (which reads the password as ``PGPASSWORD``).
    The file itself is read at start (:func:`.database.mlflow_db_password`)."""
    key = "tracking.mlflow.db_password_file"
    uris = {"backend_store_uri": mlflow.backend_store_uri, "auth_database_uri": mlflow.auth_database_uri}
    for name, uri in uris.items():
        if uri:
            refuse_password_in_url(uri, f"tracking.mlflow.{name}", key)
    if not mlflow.db_password_file:
        return
    if not mlflow.db_password_file.startswith("/"):
        raise SiteConfigError(key, f"must be an absolute path, got {mlflow.db_password_file!r}")
    if not mlflow.manage:
        raise SiteConfigError(key, "only used with manage: true (the hub runs the MLflow server); remove it")
    used = {"backend_store_uri": mlflow.backend_store_uri}
    if mlflow.permission_checks:
        used["auth_database_uri"] = mlflow.auth_database_uri
    postgres = {name: uri for name, uri in used.items() if urlsplit(uri).scheme.startswith("postgresql")}
    if not postgres:
        raise SiteConfigError(
            key, f"only used with a postgresql {' or '.join(used)} of the managed server; remove it"
        )
    for name, uri in postgres.items():
        scheme = urlsplit(uri).scheme
        if scheme not in LIBPQ_SCHEMES:
            raise SiteConfigError(
                f"tracking.mlflow.{name}",
                f"{scheme}:// does not connect through libpq, so it would not get the password of "
                f"{key}; use postgresql+psycopg://",
            )


def _check_proxy(mlflow: MLflow, hub: Hub) -> None:
    """Where jobs reach the proxy service, and that only the proxy reaches a managed server."""
    prefix = mlflow_service_prefix(hub)
    if mlflow.public_url:
        check_url(mlflow.public_url, "tracking.mlflow.public_url")
        parts = urlsplit(mlflow.public_url)
        if parts.path.rstrip("/") != prefix or parts.query or parts.fragment:
            raise SiteConfigError(
                "tracking.mlflow.public_url",
                f"must end in the proxy service's path {prefix} (the hub's route to it), "
                f"got {mlflow.public_url!r}",
            )
    elif is_unspecified(mlflow_proxy_host(hub)):
        raise SiteConfigError(
            "tracking.mlflow.public_url",
            f"required when hub.hub_bind_url listens on every interface ({hub.hub_bind_url}): the "
            "address at which compute nodes reach the proxy service, e.g. "
            f"http://hub.cluster:{mlflow_proxy_port(mlflow)}{prefix}",
        )
    url = urlsplit(mlflow.url)
    if url.path.strip("/") or url.query or url.fragment:
        raise SiteConfigError(
            "tracking.mlflow.url",
            f"with proxy: true only scheme, host and port (the proxy forwards {prefix}/... unchanged, "
            f"and the server serves under that prefix), got {mlflow.url!r}",
        )
    if mlflow.manage:
        _check_managed_behind_proxy(mlflow, url.hostname, url.port or 80)
    if mlflow_proxy_port(mlflow) == mlflow.port:
        raise SiteConfigError(
            "tracking.mlflow.proxy_port", f"{mlflow.port} is the MLflow server's own port (port)"
        )


def _check_managed_behind_proxy(mlflow: MLflow, url_host: str | None, url_port: int) -> None:
    if not is_loopback(mlflow.host):
        raise SiteConfigError(
            "tracking.mlflow.host",
            f"{mlflow.host} is not a loopback address (127.0.0.0/8, ::1, localhost); with "
            "proxy: true the managed server must bind one, so that only the hub's "
            "authenticating proxy reaches it (or set proxy: false, and anyone who reaches the "
            "server can read and delete every run)",
        )
    if not is_loopback(url_host) or url_port != mlflow.port:
        raise SiteConfigError(
            "tracking.mlflow.url",
            f"with manage and proxy it is where the proxy reaches the managed server, "
            f"a loopback address with port {mlflow.port}, e.g. http://127.0.0.1:{mlflow.port}; "
            f"got {mlflow.url!r}",
        )


def check_centre(centre: Centre) -> None:
    """A name, a help page that is a URL, and storage paths a session can expand; home is required."""
    if not centre.name.strip():
        raise SiteConfigError("centre.name", "the centre's name must not be empty")
    if centre.help_url:
        check_url(centre.help_url, "centre.help_url")
    for area in STORAGE_AREAS:
        path, key = getattr(centre.storage, area).path, f"centre.storage.{area}.path"
        if not path and area == "home":
            raise SiteConfigError(
                key, "every session has a home folder: give its path (~ for the user's home)"
            )
        if path and not path.startswith(("/", "~", "$")):
            raise SiteConfigError(
                key, f"expected an absolute path, or one starting with ~ or $, got {path!r}"
            )


def check_database_driver(uri: str, key: str) -> None:
    """The hub runs `mlflow server` in its own environment: a database URI whose driver is not
    installed there would make the server exit at every start, restarted forever by the hub."""
    scheme = urlsplit(uri).scheme
    if scheme in DATABASE_DRIVERS:
        module, package = DATABASE_DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise SiteConfigError(
                key,
                f"{scheme}:// needs the Python module {module} (pip package {package}) in the hub's "
                f"environment ({sys.prefix}), which does not have it",
            )
