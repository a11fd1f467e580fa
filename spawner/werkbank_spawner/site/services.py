"""The hub's managed services a site implies: MLflow's server and the authenticating proxy in
front of it (:mod:`werkbank_spawner.tracking`), the idle culler; and where each is reached.

Nothing here starts anything: each function returns what JupyterHub's ``services`` list holds
(a dict per service), or an address, from a validated :class:`Site`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..server_certs import LOCAL_ALT_NAMES, ServiceCerts, alt_name
from ..tracking import NO_TELEMETRY
from ..tracking.auth import KEY_ENV, SECRETS_ENV
from ..workshop.roles import WORKSHOP_SERVICE
from .database import mlflow_db_password
from .schema import Culling, Hub, MLflow, Site, SiteConfigError

#: The managed services for MLflow: the authenticating proxy users reach at /services/mlflow/,
#: and the MLflow server behind it.
MLFLOW_SERVICE = "mlflow"
MLFLOW_SERVER_SERVICE = "mlflow-server"
MLFLOW_ACCESS_SCOPE = f"access:services!service={MLFLOW_SERVICE}"
#: Scopes jupyterhub-idle-culler 2.0 needs (its README, "Permissions"). ``admin:users`` is
#: only needed with ``--cull-users``, which werkbank does not pass: least privilege.
CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")


# --- where things are ----------------------------------------------------------------------


def data_dir(site: Site, config_dir: str | os.PathLike) -> Path:
    """``hub.data_dir``, relative to the site file's folder."""
    return Path(os.path.normpath(Path(config_dir) / site.hub.data_dir))


def mlflow_dir(data_dir: Path) -> Path:
    """MLflow's folder beside the hub's: default stores, the permission configuration."""
    return data_dir.parent / "mlflow"


def workshops_dir(data_dir: Path) -> Path:
    """The course store (:mod:`werkbank_spawner.workshop.store`) beside the hub's folder."""
    return Path(data_dir).parent / "workshops"


def dashboards_dir(data_dir: Path) -> Path:
    """The dashboard shares (:mod:`werkbank_spawner.dashboards`), in the hub's own folder."""
    return Path(data_dir) / "dashboard-shares"


def mlflow_auth_config_path(data_dir: Path) -> Path:
    return mlflow_dir(data_dir) / "auth.ini"


def mlflow_service_prefix(hub: Hub) -> str:
    """The proxy service's path, ``<hub base URL>/services/mlflow`` (no trailing slash); the
    managed server serves under it (``--static-prefix``), so the proxy forwards paths unchanged.
    JupyterHub takes its base URL from ``hub.bind_url``'s path."""
    base = urlsplit(hub.bind_url).path.rstrip("/")
    return f"{base}/services/{MLFLOW_SERVICE}"


def mlflow_proxy_port(mlflow: MLflow) -> int:
    """The proxy service's port: ``tracking.mlflow.proxy_port``, or ``port + 1`` when 0."""
    return mlflow.proxy_port or mlflow.port + 1


def mlflow_proxy_host(hub: Hub) -> str:
    """Where the proxy service listens: the hub API's host (``hub.hub_bind_url``, JupyterHub's
    default 127.0.0.1 when empty). Jobs reach the service where they reach the hub API, without
    the hub's public proxy in between, as JupyterHub's own servers reach its API."""
    if not hub.hub_bind_url:
        return "127.0.0.1"
    return urlsplit(hub.hub_bind_url).hostname or "0.0.0.0"  # no host: every interface


def mlflow_proxy_url(site: Site) -> str:
    """The proxy service's own address, ``http://<mlflow_proxy_host>:<proxy_port>``; https with
    ``hub.internal_ssl`` (the service then serves TLS with the certificate the hub makes for it,
    :func:`mlflow_proxy_with_tls`)."""
    host = host_port(mlflow_proxy_host(site.hub), mlflow_proxy_port(site.tracking.mlflow))
    return f"{internal_scheme(site.hub)}://{host}"


def internal_scheme(hub: Hub) -> str:
    """How the hub's services are reached: ``https`` with ``hub.internal_ssl``, else ``http``."""
    return "https" if hub.internal_ssl else "http"


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL or Host header has it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mlflow_tracking_uri(site: Site) -> str:
    """What jobs get as ``MLFLOW_TRACKING_URI``: the proxy service as compute nodes reach it
    (``public_url``, else the service's own address with its path), or the server's ``url``
    without the proxy."""
    mlflow = site.tracking.mlflow
    if not mlflow.proxy:
        return mlflow.url
    if mlflow.public_url:
        return mlflow.public_url.rstrip("/")
    return mlflow_proxy_url(site) + mlflow_service_prefix(site.hub)


# --- MLflow's account, secrets and permission configuration ---------------------------------


def mlflow_service_account(mlflow: MLflow, *, min_uid: int) -> pwd.struct_passwd | None:
    """The account the managed MLflow server and the proxy service run as
    (``tracking.mlflow.service_user``), or None when the hub does not run as root: JupyterHub
    then cannot switch accounts, and both run as the hub's own (ordinary) account.

    Raises :class:`SiteConfigError` (path ``tracking.mlflow.service_user``) for an account that
    does not exist, is root, or may start servers (uid >= ``min_uid``): MLflow's data would
    belong to somebody who can log in."""
    if not running_as_root() or not (mlflow.manage or mlflow.proxy):
        return None
    name, key = mlflow.service_user, "tracking.mlflow.service_user"
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise SiteConfigError(
            key,
            f"no account {name!r} on this machine; deploy/install.sh creates it "
            f"(useradd --system --no-create-home --shell /usr/sbin/nologin {name})",
        ) from None
    if account.pw_uid == 0:
        raise SiteConfigError(key, f"{name!r} is root (uid 0): MLflow and its proxy never run as root")
    if account.pw_uid >= min_uid:
        raise SiteConfigError(
            key,
            f"{name!r} (uid {account.pw_uid}) is an account that may start servers (uid >= auth.min_uid "
            f"{min_uid}); use a system account of its own, which owns MLflow's data and nothing else",
        )
    return account


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_account(service: dict, account: pwd.struct_passwd | None) -> dict:
    """``service`` run as ``account`` (JupyterHub switches to it when the hub is root)."""
    return {**service, "user": account.pw_name} if account else service


def mlflow_auth_database(site: Site, *, config_dir: str | os.PathLike) -> str:
    """The database of MLflow's users and permissions (``tracking.mlflow.auth_database_uri``)."""
    default = f"sqlite:///{mlflow_dir(data_dir(site, config_dir)) / 'auth.db'}"
    return site.tracking.mlflow.auth_database_uri or default


def mlflow_auth_ini(database: str) -> str:
    """The ini file of MLflow's basic-auth app (``MLFLOW_AUTH_CONFIG_PATH``): nobody may do
    anything by default (creators get MANAGE on what they create), users are who the proxy says
    (:mod:`werkbank_spawner.tracking.auth`), and the bootstrap admin is the proxy itself."""
    return (
        "# Written by the hub at every start from the site file (werkbank_spawner.site).\n"
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database.replace('%', '%%')}\n"
        f"admin_username = service:{MLFLOW_SERVICE}\n"
        "authorization_function = werkbank_spawner.tracking.auth:authenticate\n"
        "grant_default_workspace_access = false\n"
    )


def mlflow_auth_secrets() -> dict[str, str]:
    """Two values ``mlflow server --app-name basic-auth`` insists on finding in its environment
    that nobody uses (the CSRF key of its sign-up form; the bootstrap admin's password, needed
    once)."""
    return {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": process_secret("flask"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": process_secret("admin"),
    }


def mlflow_auth_env(config_path: str | os.PathLike, signing_key: str) -> dict[str, str]:
    """The whole environment ``mlflow server --app-name basic-auth`` needs for werkbank, for a
    server started by hand (the tests' own): the ini file, the key the proxy signs its assertions
    with (:data:`~..tracking.auth.KEY_ENV`) and :func:`mlflow_auth_secrets`. The hub's own server
    gets the secret ones from its secrets file (:func:`mlflow_server_secrets`)."""
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config_path), KEY_ENV: signing_key, **mlflow_auth_secrets()}


_secrets: dict[str, str] = {}


def process_secret(purpose: str) -> str:
    """A random secret for ``purpose``, the same for the life of this process: new at every hub
    start (which restarts the managed services that share it), and applying the site twice
    gives the same configuration."""
    return _secrets.setdefault(purpose, secrets.token_urlsafe(32))


# --- the services' secrets ----------------------------------------------------------------
#
# JupyterHub keeps the ``environment`` it is given for a managed service in its database (the
# services table), and so in every dump and backup of it: no secret goes there. The hub writes
# each service's secrets at every start into a file private to the service's account
# (``apply.prepare_state``), which the service reads (``WERKBANK_MLFLOW_SECRETS``), or its
# launcher for what MLflow and libpq read from the environment only
# (:mod:`werkbank_spawner.tracking.server_launcher`).

#: The name of each service's secrets file, in a folder of its own (:func:`service_secrets_path`).
SECRETS_FILE = "secrets.json"


def service_secrets_dir(data_dir: Path) -> Path:
    """Where the hub puts its managed services' secrets files, a folder per service (0700, the
    service's account's): beside the hub's folder, outside MLflow's (whose files are backed up),
    in a folder of the hub's that the services' accounts cannot change."""
    return Path(data_dir).parent / "service-secrets"


def service_secrets_path(data_dir: Path, service: str) -> Path:
    return service_secrets_dir(data_dir) / service / SECRETS_FILE


def mlflow_server_secrets(mlflow: MLflow, *, signing_key: str) -> dict:
    """What the managed MLflow server's secrets file holds ({} for nothing): the signing key,
    which the auth module inside the server reads, and the ``environment`` its launcher sets: the
    auth app's :func:`mlflow_auth_secrets` and the database password as libpq's ``PGPASSWORD``.
    Reads ``tracking.mlflow.db_password_file`` (raises :class:`SiteConfigError` for a file that
    is not private to the hub)."""
    environment = mlflow_auth_secrets() if signing_key else {}
    password = mlflow_db_password(mlflow)
    if password:
        environment["PGPASSWORD"] = password
    secrets_ = {"signing_key": signing_key} if signing_key else {}
    return {**secrets_, "environment": environment} if environment else secrets_


def mlflow_proxy_secrets(*, signing_key: str) -> dict:
    """What the proxy service's secrets file holds ({} for nothing): the signing key."""
    return {"signing_key": signing_key} if signing_key else {}


def secrets_text(secrets_: dict) -> str:
    """A secrets file's text (:func:`werkbank_spawner.tracking.auth.read_secrets` reads it): JSON,
    ASCII only (every other character escaped)."""
    return json.dumps(secrets_, ensure_ascii=True, sort_keys=True) + "\n"


# --- the services ----------------------------------------------------------------------------


def mlflow_proxy_service(site: Site, data_dir: Path, *, signing_key: str) -> dict:
    """The authenticating proxy (:mod:`werkbank_spawner.tracking.proxy`) as a managed service
    with a ``url`` (where it listens, :func:`mlflow_proxy_url`): the hub's proxy routes
    ``/services/mlflow/`` to it, the hub gives it its OAuth client and API token in the
    environment, and restarts it if it exits. With a ``signing_key`` the proxy reads it from its
    secrets file (:func:`mlflow_proxy_secrets`), whose path is in its environment."""
    secrets_file = {SECRETS_ENV: str(service_secrets_path(data_dir, MLFLOW_SERVICE))} if signing_key else {}
    return {
        "name": MLFLOW_SERVICE,
        "url": mlflow_proxy_url(site),
        "command": [
            sys.executable,
            "-m",
            "werkbank_spawner.tracking.proxy",
            "--upstream",
            site.tracking.mlflow.url,
            *(["--permissions"] if signing_key else []),
        ],
        # Users are sent here from links and from the hub's Services menu; asking them to
        # authorize werkbank's own MLflow every time would teach them to click through.
        "oauth_no_confirm": True,
        "display": True,
        "environment": {**NO_TELEMETRY, **secrets_file},
        # `python -m` puts the working directory first on sys.path: never the hub's (it may be
        # a folder somebody else can write to).
        "cwd": "/",
    }


def mlflow_server_service(mlflow: MLflow, data_dir: Path, *, prefix: str, signing_key: str) -> dict:
    """The managed ``mlflow server``. Behind the proxy (``proxy: true``) it serves under the
    proxy service's path, so that the proxy forwards requests unchanged; with a
    ``signing_key`` it runs MLflow's basic-auth app, which trusts the proxy's word on who is
    asking (:mod:`werkbank_spawner.tracking.auth`).

    With secrets (:func:`mlflow_server_secrets`: the signing key, the auth app's own, the
    database password) the server starts through :mod:`werkbank_spawner.tracking.server_launcher`,
    which reads them from the server's secrets file and sets what MLflow and libpq read from the
    environment; the auth module reads the key from the same file. The environment and the
    command line name the file only. Reads ``tracking.mlflow.db_password_file``
    (:func:`.database.mlflow_db_password`), which raises :class:`SiteConfigError` for a file that
    is not private to the hub."""
    state = mlflow_dir(data_dir)
    backend = mlflow.backend_store_uri or f"sqlite:///{state / 'mlflow.db'}"
    # The database password as libpq's PGPASSWORD, set by the launcher in the server's own
    # environment (never a command line, never the hub's database), given to no other service.
    # Both of MLflow's connections go through libpq (the tracking store and the basic-auth app's
    # store each open their URI with SQLAlchemy's psycopg, the default for postgresql://), so one
    # variable serves both, and the URIs stay without a password wherever MLflow, SQLAlchemy or
    # this hub print them. On Linux /proc/<pid>/environ is readable by the process's own account
    # (the service account, which may read the secrets file anyway) and root only. Not
    # PGPASSFILE: a second copy of the password, in pgpass syntax (host:port:db:user:password,
    # with its own escaping), for one reader, where the launcher that MLflow's own two secrets
    # need anyway sets PGPASSWORD from the same file.
    secrets_ = mlflow_server_secrets(mlflow, signing_key=signing_key)
    secrets_file = str(service_secrets_path(data_dir, MLFLOW_SERVER_SERVICE))
    launcher = [sys.executable, "-I", "-m", "werkbank_spawner.tracking.server_launcher", secrets_file, "--"]
    return {
        "name": MLFLOW_SERVER_SERVICE,
        "command": [
            # -I: not the working directory (MLflow's folder) first on sys.path, no PYTHON*
            # variables; the launcher passes the environment on to MLflow unchanged.
            *(launcher if secrets_.get("environment") else []),
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            *_mlflow_server_options(mlflow, state),
            *(["--static-prefix", prefix] if mlflow.proxy else []),
            *(["--app-name", "basic-auth"] if signing_key else []),
        ],
        # uvicorn puts its working directory first on sys.path: MLflow's own folder, not the hub's.
        "cwd": str(state),
        # MLflow's job runner (GenAI evaluation jobs) starts about a dozen worker processes of
        # ~100 MB each that werkbank does not use yet.
        "environment": {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # `mlflow server --backend-store-uri` from the environment: a database password in
            # the URI must not be on a command line every user can read with `ps`.
            "MLFLOW_BACKEND_STORE_URI": backend,
            **NO_TELEMETRY,
            **({"MLFLOW_AUTH_CONFIG_PATH": str(mlflow_auth_config_path(data_dir))} if signing_key else {}),
            **({SECRETS_ENV: secrets_file} if secrets_ else {}),
        },
    }


def _mlflow_server_options(mlflow: MLflow, state: Path) -> list[str]:
    # Host headers mlflow accepts (its DNS-rebinding guard): the bound address, the
    # loopback names, and the address jobs are given in tracking.mlflow.url.
    allowed = [host_port(mlflow.host, mlflow.port), f"localhost:{mlflow.port}", f"127.0.0.1:{mlflow.port}"]
    url_host = urlsplit(mlflow.url).netloc.rpartition("@")[2]
    if url_host:
        allowed.append(url_host)
    return [
        "--host",
        mlflow.host,
        "--port",
        str(mlflow.port),
        "--artifacts-destination",
        mlflow.artifacts_destination or str(state / "artifacts"),
        "--serve-artifacts",
        "--workers",
        str(mlflow.workers),
        "--allowed-hosts",
        ",".join(dict.fromkeys(allowed)),
    ]


def workshop_service(site: Site, site_file: str | os.PathLike | None) -> dict:
    """The trainer console (:mod:`werkbank_spawner.workshop.service`) at
    ``<hub>/services/werkbank-workshop/``, run as the hub's own account (root: it makes and
    removes course accounts), with the token ``werkbank-workshop`` on the command line uses too.
    Without ``site_file`` only the token: the console needs the site file to act."""
    service = {"name": WORKSHOP_SERVICE, "api_token": process_secret("workshop")}
    if site_file is None:
        return service
    return {
        **service,
        "url": f"{internal_scheme(site.hub)}://127.0.0.1:{site.workshops.port}",
        "command": [
            sys.executable,
            "-m",
            "werkbank_spawner.workshop.service",
            "--site",
            str(Path(site_file).resolve()),
            "--check-every",
            str(site.workshops.check_every),
        ],
        "oauth_no_confirm": True,
        "display": True,
        "cwd": "/",
    }


# --- internal_ssl ------------------------------------------------------------------------------


def service_certs_dir(data_dir: Path) -> Path:
    """Where the hub puts the TLS files of a managed service that runs as an account of its own
    (:class:`~werkbank_spawner.server_certs.ServiceCerts`), a folder per service: beside the
    hub's folder, which no other account may enter."""
    return Path(data_dir).parent / "service-certs"


def mlflow_proxy_alt_names(site: Site) -> tuple[str, ...]:
    """What the MLflow proxy service's certificate names: this machine's loopback names, the
    address it listens at (:func:`mlflow_proxy_host`, unless every interface) and the host of
    ``tracking.mlflow.public_url``, where jobs reach it."""
    hosts = [mlflow_proxy_host(site.hub)]
    if site.tracking.mlflow.public_url:
        hosts.append(urlsplit(site.tracking.mlflow.public_url).hostname or "")
    names = [*LOCAL_ALT_NAMES, *(alt_name(h) for h in hosts if h and not is_unspecified(h))]
    return tuple(dict.fromkeys(names))


def mlflow_proxy_with_tls(service: dict, site: Site, data_dir: Path) -> dict:
    """The proxy service (:func:`mlflow_proxy_service`, run as ``service["user"]`` when given)
    with ``hub.internal_ssl``: its ``JUPYTERHUB_SSL_*`` point at a key and certificate for
    :func:`mlflow_proxy_alt_names`, signed by the hub's CA, which the hub puts in a folder of the
    service's account when it starts the service (JupyterHub's own, for the hub's account and
    localhost only, would be out of reach)."""
    certs = ServiceCerts(
        service=service["name"],
        folder=str(service_certs_dir(data_dir) / service["name"]),
        account=service.get("user", ""),
        alt_names=mlflow_proxy_alt_names(site),
    )
    return {**service, "environment": {**service.get("environment", {}), **certs.environment()}}


def is_unspecified(host: str) -> bool:
    """Whether ``host`` is the any-address (0.0.0.0, ::): a listening socket's, never a
    certificate's name or an address to connect to."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def culler_service(culling: Culling) -> tuple[list[dict], list[dict]]:
    """The idle culler as a managed service with the least scopes it needs (none if disabled)."""
    if not culling.enabled:
        return [], []
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={culling.timeout}",
        f"--cull-every={culling.every}",
    ]
    role = {"name": "idle-culler", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]}
    return [{"name": "idle-culler", "command": command}], [role]
