"""A :class:`Site` applied: the traits it implies on a traitlets ``Config``, and the state
folders the hub needs before it starts.

One ``update_*`` function per area sets that area's traits (the-littlest-jupyterhub's
configurer does the same); :func:`apply` calls them all. They only *set* traits, to values that
share nothing with the site; applying the same site twice gives the same ``Config``. Nothing
here touches the file system except :func:`prepare_state` and the reading of the secret files the
site names (the hub's and MLflow's database passwords, :mod:`.database`; the OAuth client secret;
the proxy's TLS certificate and key), checked here so that a bad one stops the hub with its key
named. One exception to "only set traits": with ``hub.internal_ssl``, :func:`update_internal_ssl`
patches JupyterHub's wait for TLS services (:func:`..server_certs.fix_service_wait`, an upstream
bug).
"""

from __future__ import annotations

import os
import pwd
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from traitlets.config import Config

from ..private_files import write_private_file, write_private_folder
from ..server_certs import alt_name, fix_service_wait
from ..workshop.hub import write_token
from ..workshop.roles import COURSE_ROLES_SCOPE, COURSE_ROLES_SCOPE_HELP, WORKSHOP_SERVICE, trainer_role
from . import services
from .database import hub_db_url, read_password, read_private
from .schema import Site, SiteConfigError
from .services import (
    MLFLOW_ACCESS_SCOPE,
    MLFLOW_SERVICE,
    data_dir,
    mlflow_dir,
    mlflow_service_account,
    mlflow_service_prefix,
    mlflow_tracking_uri,
)

#: Spawner classes by ``hub.spawner``. Configured by class name only: importing the
#: spawner module here would make the site file depend on Slurm tooling being importable.
SPAWNER_CLASSES = {
    "slurm": "werkbank_spawner.spawner.WerkbankSlurmSpawner",
    "local": "werkbank_spawner.spawner.WerkbankLocalSpawner",
}
AUTHENTICATOR_CLASSES = {
    "pam": "jupyterhub.auth.PAMAuthenticator",
    "shared-password": "shared-password",
    # GenericOAuthenticator with the id_token checked and the provider's groups mapped.
    "oauth": "werkbank_spawner.oidc.WerkbankOAuthenticator",
}
#: With workshops: the same logins, and course logins on the login form (event code, sheet).
COURSE_AUTHENTICATOR_CLASSES = {
    "pam": "werkbank_spawner.workshop.logins.CoursePAMAuthenticator",
    "shared-password": "werkbank_spawner.workshop.logins.CourseSharedPasswordAuthenticator",
}
#: What werkbank-workshop does through the hub's API: make and remove course accounts and their
#: group, stop their servers, grant and remove trainer roles.
WORKSHOP_SCOPES = (
    "admin:users",
    "admin:groups",
    "admin:servers",
    "list:users",
    "read:users",
    "list:groups",
    "read:groups",
    COURSE_ROLES_SCOPE,
)
#: JupyterHub's own scopes of the `server` role (jupyterhub.roles.get_default_roles), which
#: werkbank's `server` role keeps; tests/unit/test_site.py checks that they agree.
DEFAULT_SERVER_SCOPES = ("users:activity!user", "access:servers!server")
SPAWNERS = ("WerkbankSlurmSpawner", "WerkbankLocalSpawner")


def apply(
    c: Config, site: Site, *, config_dir: str | os.PathLike, site_file: str | os.PathLike | None = None
) -> None:
    """Set the traits ``site`` implies on ``c``. Relative paths in it are taken relative to
    ``config_dir`` (the site file's folder). ``site_file`` (the file itself) is what the trainer
    console service reads; without it the service does not run (``werkbank-workshop`` on the
    command line still works). Raises :class:`SiteConfigError` for what only the machine can say
    (MLflow's service account)."""
    if not isinstance(site, Site):
        raise TypeError(f"apply() takes a validated Site (werkbank_spawner.site.validate), not {type(site)}")
    base = Path(config_dir)
    update_hub(c, site, base)
    update_auth(c, site)
    update_spawners(c, site, base)
    mlflow_services, roles = update_tracking(c, site, base)
    culler, culler_roles = services.culler_service(site.culling)
    workshop, workshop_roles = update_workshops(c, site, base, site_file)
    c.JupyterHub.services = internal_ssl_services(site, base, [*mlflow_services, *culler, *workshop])
    c.JupyterHub.load_roles = [*roles, *culler_roles, *workshop_roles]


def update_hub(c: Config, site: Site, base: Path) -> None:
    """Where the hub listens and keeps its state; which spawner it uses."""
    hub, state = site.hub, data_dir(site, base)
    c.JupyterHub.bind_url = hub.bind_url
    if hub.subdomain_host:
        c.JupyterHub.subdomain_host = hub.subdomain_host.rstrip("/")
    if hub.hub_bind_url:
        c.JupyterHub.hub_bind_url = hub.hub_bind_url
    c.JupyterHub.db_url = hub_db_url(hub, state)
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    # The proxy's REST API on loopback at the port after the public one, so that two hubs on
    # one machine (the demo beside the tests) do not both claim JupyterHub's default 8001.
    api_scheme = "https" if hub.internal_ssl else "http"
    c.ConfigurableHTTPProxy.api_url = f"{api_scheme}://127.0.0.1:{_port_of(hub.bind_url) + 1}"
    update_internal_ssl(c, site, base)
    update_proxy_tls(c, site)
    # Slurm servers are jobs: they keep running while the hub restarts and are found again.
    # Local-process servers (the fallback) stop with the hub, so that stopping it stops all.
    c.JupyterHub.cleanup_servers = hub.spawner != "slurm"
    c.JupyterHub.spawner_class = SPAWNER_CLASSES[hub.spawner]


def update_proxy_tls(c: Config, site: Site) -> None:
    """TLS where users connect: the proxy serves ``hub.bind_url`` with ``hub.tls_cert_file`` and
    ``hub.tls_key_file`` (JupyterHub's ssl_cert and ssl_key, passed to configurable-http-proxy as
    --ssl-cert and --ssl-key); ``hub.public_url`` is JupyterHub's public_url. Reads both files:
    the key private to its owner (:func:`.database.read_private`), the two a certificate and its
    key, so that a wrong file stops the hub with its key named rather than the proxy with a stack
    trace. Raises :class:`SiteConfigError`."""
    hub = site.hub
    if hub.public_url:
        c.JupyterHub.public_url = hub.users_url + "/"
    if not hub.tls_cert_file:
        return
    read_private(Path(hub.tls_key_file), "hub.tls_key_file")
    try:
        with open(hub.tls_cert_file, "rb") as f:
            if b"-----BEGIN CERTIFICATE-----" not in f.read():
                raise SiteConfigError("hub.tls_cert_file", f"{hub.tls_cert_file} holds no PEM certificate")
    except OSError as e:
        raise SiteConfigError("hub.tls_cert_file", f"cannot read {hub.tls_cert_file}: {e.strerror}") from None
    try:
        # The password callback answers a passphrase prompt with nothing: the proxy has no way
        # to decrypt a key either.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            hub.tls_cert_file, hub.tls_key_file, password=lambda: b""
        )
    except OSError as e:  # ssl.SSLError is one; a file gone since it was read is another
        raise SiteConfigError(
            "hub.tls_key_file",
            f"{hub.tls_key_file} is not the unencrypted private key of the certificate in "
            f"{hub.tls_cert_file} ({getattr(e, 'reason', None) or e.strerror or e})",
        ) from None
    c.JupyterHub.ssl_cert = hub.tls_cert_file
    c.JupyterHub.ssl_key = hub.tls_key_file


#: Where JupyterHub keeps its internal CAs and certificates, in ``hub.data_dir``.
INTERNAL_CERTS = "internal-ssl"


def internal_certs_location(site: Site, base: Path) -> Path:
    return data_dir(site, base) / INTERNAL_CERTS


def update_internal_ssl(c: Config, site: Site, base: Path) -> None:
    """``hub.internal_ssl``: JupyterHub's internal TLS, its CAs in ``<data_dir>/internal-ssl``
    (not JupyterHub's default, a folder relative to wherever the hub was started). The hub's
    certificate also names the host of ``hub.hub_bind_url``, where jobs reach the hub API; the
    servers' certificates get their names from the spawner (the nodes of the job's partition)."""
    hub = site.hub
    if not hub.internal_ssl:
        return  # JupyterHub's default: off
    c.JupyterHub.internal_ssl = True
    c.JupyterHub.internal_certs_location = str(internal_certs_location(site, base))
    # The MLflow proxy and the trainer console serve TLS at their urls: JupyterHub's wait for
    # them at its start needs a fix (a class patched, not a trait; see there), and its periodic
    # check of services connects without the internal CA and would only log false alarms (it
    # does nothing else: JupyterHub restarts a managed service whose process exits anyway).
    fix_service_wait()
    c.JupyterHub.service_check_interval = 0
    host = urlsplit(hub.hub_bind_url).hostname if hub.hub_bind_url else None
    names = []
    if host and not services.is_unspecified(host):
        names.append(alt_name(host))
    c.JupyterHub.trusted_alt_names = names


def internal_ssl_services(site: Site, base: Path, managed: list[dict]) -> list[dict]:
    """The managed services as they run with ``hub.internal_ssl`` (unchanged without):

    - the idle culler asks the hub API with the hub's own certificate (its ``--ssl-enabled``
      reads it from the certificates' folder); it runs as the hub's account, which may read it;
    - the MLflow proxy serves TLS and asks the hub API with a certificate of its own, which the
      hub puts where the proxy's account reads it (:func:`.services.mlflow_proxy_with_tls`);
    - the trainer console runs as the hub's account and uses JupyterHub's certificate for it as
      JupyterHub hands it over (``JUPYTERHUB_SSL_*``); its ``url`` is https already.
    """
    if not site.hub.internal_ssl:
        return managed
    location, state = internal_certs_location(site, base), data_dir(site, base)
    out = []
    for service in managed:
        if service["name"] == "idle-culler":
            flags = ["--ssl-enabled=true", f"--internal-certs-location={location}"]
            service = {**service, "command": [*service["command"], *flags]}
        elif service["name"] == MLFLOW_SERVICE and "command" in service:
            service = services.mlflow_proxy_with_tls(service, site, state)
        out.append(service)
    return out


#: The site key of the OAuth client secret's file and what its first line is, for errors.
CLIENT_SECRET_FILE = ("auth.oauth.client_secret_file", "the OAuth client secret")


def update_auth(c: Config, site: Site) -> None:
    """Who may log in, and how; the hub's admins."""
    auth = site.auth
    c.JupyterHub.authenticator_class = AUTHENTICATOR_CLASSES[auth.type]
    c.Authenticator.admin_users = set(site.hub.admin_users)
    c.Authenticator.allowed_users = set(auth.allowed_users)
    c.Authenticator.allow_all = auth.allow_all
    if auth.type == "shared-password":
        c.SharedPasswordAuthenticator.user_password = auth.shared_password
    elif auth.type == "oauth":
        oauth, generic, werkbank = auth.oauth, c.GenericOAuthenticator, c.WerkbankOAuthenticator
        for key in ("client_id", "authorize_url", "token_url", "userdata_url"):
            generic[key] = getattr(oauth, key)
        if oauth.client_secret_file:
            # Checked here, so that a bad file stops the hub with its key named; the authenticator
            # reads it again itself, and the secret stays out of the configuration.
            read_password(Path(oauth.client_secret_file), *CLIENT_SECRET_FILE)
            werkbank.client_secret_file = oauth.client_secret_file
        else:
            generic.client_secret = oauth.client_secret
        generic.username_claim = oauth.username_claim
        generic.scope = list(oauth.scope)
        if oauth.callback_url:
            generic.oauth_callback_url = oauth.callback_url
        elif site.hub.public_url:
            # Behind a front end that ends TLS the hub cannot tell https from the request.
            generic.oauth_callback_url = site.hub.users_url + "/hub/oauth_callback"
        werkbank.issuer = oauth.issuer
        werkbank.groups_claim = oauth.groups_claim
        werkbank.group_map = dict(oauth.group_map)
        werkbank.allowed_provider_groups = set(oauth.allowed_groups)


def update_spawners(c: Config, site: Site, base: Path) -> None:
    """Both spawners' policy, limits and tracking environment; the Slurm spawner's commands."""
    slurm, mlflow = site.slurm, site.tracking.mlflow
    # The hub-side poll only reads the shared squeue cache, so it can be frequent.
    c.Spawner.poll_interval = 5
    for spawner in SPAWNERS:
        c[spawner].policy_config = site.policy_config()
        c[spawner].mlflow_tracking_uri = mlflow_tracking_uri(site)
        # The server's own hub token authenticates it to the proxy; a bare MLflow server
        # (proxy: false) must never see hub tokens.
        c[spawner].mlflow_send_token = mlflow.proxy
        c[spawner].start_timeout = slurm.start_timeout
        c[spawner].min_uid = site.auth.min_uid
        # What the first-hour template tells clients about the centre (WERKBANK_CENTRE).
        c[spawner].centre = site.centre.model_dump(mode="json")
        # JupyterLab warns before the culler stops an idle server (the lab extension).
        c[spawner].idle_timeout = site.culling.timeout if site.culling.enabled else 0
        c[spawner].dashboards_dir = str(services.dashboards_dir(data_dir(site, base)))
    slurm_spawner = c.WerkbankSlurmSpawner
    slurm_spawner.slurm_conf = str(base / slurm.conf) if slurm.conf else ""
    slurm_spawner.slurm_bin_dir = str(base / slurm.bin_dir)
    slurm_spawner.queue_poll_interval = slurm.poll_interval
    slurm_spawner.unreachable_grace = slurm.unreachable_grace
    slurm_spawner.job_prologue = slurm.job_prologue
    slurm_spawner.port_range = tuple(slurm.port_range)


def update_tracking(c: Config, site: Site, base: Path) -> tuple[list[dict], list[dict]]:
    """MLflow: the spawners' key for each user's default experiment, the scope users get for
    the proxy service; returns the managed services (server, proxy) and the roles they need."""
    mlflow, prefix = site.tracking.mlflow, mlflow_service_prefix(site.hub)
    managed, roles = [], []
    signing_key = services.process_secret("signing") if mlflow.permission_checks else ""
    account = mlflow_service_account(mlflow, min_uid=site.auth.min_uid)
    for spawner in SPAWNERS:
        # The hub creates each user's <user>/default (as the user) where MLflow checks who owns what.
        c[spawner].mlflow_server_url = mlflow.url + prefix if signing_key else ""
        c[spawner].mlflow_signing_key = signing_key
    if mlflow.manage:
        server = services.mlflow_server_service(
            mlflow, data_dir(site, base), prefix=prefix, signing_key=signing_key
        )
        managed.append(services.as_account(server, account))
    if mlflow.proxy:
        proxy = services.mlflow_proxy_service(site, data_dir(site, base), signing_key=signing_key)
        managed.append(services.as_account(proxy, account))
        # Browsers (the user's own OAuth token for the service) and the tokens of the users'
        # servers (the `server` role) may use the proxy; what they may do there is the proxy's
        # business. JupyterHub's default server scopes are kept (roles.get_default_roles).
        roles.append({"name": "server", "scopes": [*DEFAULT_SERVER_SCOPES, MLFLOW_ACCESS_SCOPE]})
        # The proxy asks the hub who a dashboard's viewer is (groups, admin flag), to tell a
        # shared dashboard what that viewer may read (ReadableExperimentsHandler).
        roles.append(
            {"name": "werkbank-mlflow-proxy", "services": [MLFLOW_SERVICE], "scopes": ["read:users"]}
        )
    c.JupyterHub.extra_user_scopes = {MLFLOW_ACCESS_SCOPE} if mlflow.proxy else set()
    return managed, roles


def update_workshops(
    c: Config, site: Site, base: Path, site_file: str | os.PathLike | None = None
) -> tuple[list[dict], list[dict]]:
    """Courses: the login page's course logins, the spawner's course store, the trainers'
    messages on the hub's pages, the ``werkbank-workshop`` service (the trainer console; its
    token is also the CLI's), and the trainer roles of the courses running now (JupyterHub
    deletes roles its configuration no longer names at start). Reads the course store; returns
    the service and the roles."""
    if not site.workshops.enabled:
        return [], []
    # Imported here: the course store reads course files, whose schema builds on this package.
    from ..workshop.announcement import CourseAnnouncement
    from ..workshop.store import CourseStore, workshops_dir

    store = workshops_dir(data_dir(site, base))
    if site.auth.type in COURSE_AUTHENTICATOR_CLASSES:
        c.JupyterHub.authenticator_class = COURSE_AUTHENTICATOR_CLASSES[site.auth.type]
        c.CourseLogins.workshops_dir = str(store)
    c.WerkbankSlurmSpawner.workshops_dir = str(store)
    c.JupyterHub.custom_scopes = {COURSE_ROLES_SCOPE: {"description": COURSE_ROLES_SCOPE_HELP}}
    c.JupyterHub.template_vars = {"announcement": CourseAnnouncement(str(store))}
    service = services.workshop_service(site, site_file)
    role = {"name": WORKSHOP_SERVICE, "services": [WORKSHOP_SERVICE], "scopes": list(WORKSHOP_SCOPES)}
    trainers = [trainer_role(r.name, r.course.trainers) for r in CourseStore(store).running()]
    return [service], [role, *trainers]


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


# --- state on disk -----------------------------------------------------------------------------


def state_dirs(site: Site, *, config_dir: str | os.PathLike) -> list[Path]:
    """Folders the hub and its managed services write to, for :func:`prepare_state`:
    ``hub.data_dir`` and, when the hub manages MLflow, its folder (default stores, the
    permission configuration)."""
    state = data_dir(site, config_dir)
    folders = [state, mlflow_dir(state)] if site.tracking.mlflow.manage else [state]
    return folders + ([services.workshops_dir(state)] if site.workshops.enabled else [])


def prepare_state(site: Site, *, config_dir: str | os.PathLike) -> None:
    """Create the :func:`state_dirs` that do not exist yet, readable by their owner only
    (JupyterHub writes its cookie secret there but does not create the folder), give MLflow's
    folder to its service account, write MLflow's permission configuration
    (:func:`~.services.mlflow_auth_ini`) where the server reads it, and the managed services'
    secrets files (:func:`write_service_secrets`).

    Raises :class:`SiteConfigError` (path ``hub.data_dir``) if one cannot be written.
    """
    for folder in state_dirs(site, config_dir=config_dir):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise SiteConfigError("hub.data_dir", f"cannot create {folder}: {e.strerror}") from None
    mlflow, state = site.tracking.mlflow, data_dir(site, config_dir)
    if site.workshops.enabled:
        # The token werkbank-workshop acts with; new at every start, like the services' own.
        try:
            write_token(state, services.process_secret("workshop"))
        except OSError as e:
            raise SiteConfigError("hub.data_dir", f"cannot write in {state}: {e.strerror}") from None
    account = mlflow_service_account(mlflow, min_uid=site.auth.min_uid) if mlflow.manage else None
    if account:
        _give_folder(mlflow_dir(state), account)
    if mlflow.permission_checks:  # which implies manage: the hub runs the server
        _write_private(
            services.mlflow_auth_config_path(state),
            services.mlflow_auth_ini(services.mlflow_auth_database(site, config_dir=config_dir)),
            account,
        )
    write_service_secrets(site, state)


def write_service_secrets(site: Site, state: Path) -> None:
    """Write each MLflow service's secrets (:func:`.services.mlflow_server_secrets`,
    :func:`.services.mlflow_proxy_secrets`: new at every hub start, :func:`.services.process_secret`)
    into its file (:func:`.services.service_secrets_path`): 0600 in a 0700 folder, both owned by
    the services' account (the hub's own when it is not root), written anew, never through a
    link (:func:`..private_files.write_private_folder`). A service without secrets has no file: one
    from an earlier start is removed. They are never in a service's ``environment``, which
    JupyterHub keeps in its database. Raises :class:`SiteConfigError` (``hub.data_dir``)."""
    mlflow = site.tracking.mlflow
    signing_key = services.process_secret("signing") if mlflow.permission_checks else ""
    wanted = {
        services.MLFLOW_SERVER_SERVICE: (
            services.mlflow_server_secrets(mlflow, signing_key=signing_key) if mlflow.manage else {}
        ),
        MLFLOW_SERVICE: services.mlflow_proxy_secrets(signing_key=signing_key) if mlflow.proxy else {},
    }
    account = mlflow_service_account(mlflow, min_uid=site.auth.min_uid) if any(wanted.values()) else None
    for service, secrets in wanted.items():
        path = services.service_secrets_path(state, service)
        try:
            if secrets:
                write_private_folder(str(path.parent), {path.name: services.secrets_text(secrets)}, account)
            else:
                os.unlink(path)  # a link itself, never what it names
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SiteConfigError("hub.data_dir", f"cannot write {path}: {e.strerror or e}") from None


def _write_private(path: Path, text: str, account: pwd.struct_passwd | None) -> None:
    """Write ``path`` readable by its owner only (MLflow's auth.ini: the database URI, which names
    the database user), owned by ``account`` when given: new, never through a link
    (:func:`..private_files.write_private_file`; the folder is ``account``'s)."""
    try:
        write_private_file(path, text, account)
    except OSError as e:
        raise SiteConfigError("hub.data_dir", f"cannot write {path}: {e.strerror or e}") from None


def _give_folder(folder: Path, account: pwd.struct_passwd) -> None:
    """Make ``account`` the owner of ``folder`` and, if it was not already, of everything in it
    (a site whose MLflow ran as root before), without following symbolic links."""
    if folder.lstat().st_uid == account.pw_uid:
        return
    try:
        for parent, dirs, files in os.walk(folder):
            for name in (*dirs, *files):
                os.chown(os.path.join(parent, name), account.pw_uid, account.pw_gid, follow_symlinks=False)
        os.chown(folder, account.pw_uid, account.pw_gid, follow_symlinks=False)
    except OSError as e:
        raise SiteConfigError(
            "hub.data_dir", f"cannot give {folder} to {account.pw_name}: {e.strerror}"
        ) from None
