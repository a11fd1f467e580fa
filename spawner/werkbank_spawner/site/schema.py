"""The site file's schema: every key with its type, default and meaning, as pydantic models.

:class:`Site` is what the hub, its services and ``werkbank-site`` receive: typed, frozen,
complete (every absent key has its default). It checks the *shape* of a site file: types,
ranges, choices, unknown keys (errors, never ignored). Rules that relate keys to each other
(a shared password only on loopback, a profile's partition allowed somewhere) are in
:mod:`.rules`; :func:`werkbank_spawner.site.validate` runs both and is the one way to get a Site.

YAML is loose in ways an admin does not mean, so the types are strict: ``true`` is never the
number 1, ``"3"`` is not a number, a number is not a string. Lists are tuples, so that a Site
cannot be changed by whoever holds it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from werkbank_core.centre import DEFAULTS as CENTRE_DEFAULTS
from werkbank_core.centre import STORAGE_AREAS
from werkbank_core.policy import MIN_UID
from werkbank_core.script import PORT_RANGE

#: JupyterHub's own default for hub.hub_bind_url.
DEFAULT_HUB_BIND_URL = "http://127.0.0.1:8081"
#: JupyterHub's SharedPasswordAuthenticator refuses shorter passwords; we say so at start.
SHARED_PASSWORD_MIN_LENGTH = 8


class SiteConfigError(ValueError):
    """The site file is not acceptable. ``str(error)`` is ``<key.path>: <what is wrong>``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _int_or_str(value: object) -> int | str:
    """A count or a size (``4``, ``"16G"``), read by the policy (:mod:`werkbank_core.policy`)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PydanticCustomError("int_or_str", "expected a whole number or a string")
    return value


#: A count (``gpus: 2``) or a size or time (``memory: 16G``, ``walltime: 4h``); the policy
#: checks what it means.
Amount = Annotated[int | str, PlainValidator(_int_or_str)]
Names = tuple[StrictStr, ...]


class Section(BaseModel):
    """A mapping with a fixed set of keys; absent keys take their defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _keys_are_known(cls, data: object) -> object:
        if data is None:
            return {}  # a section whose keys are all commented out
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key; known keys here: {known}",
                        {"key": str(key), "known": ", ".join(cls.model_fields)},
                    )
        return data


def setting(default: object, help: str, **constraints) -> object:
    """A key's default and help sentence (and ``ge``/``le`` bounds)."""
    if isinstance(default, (list, dict)):
        raise TypeError("give a tuple: defaults are shared")
    return Field(default, description=help, **constraints)


def section(model: type[Section], help: str) -> object:
    """A section's help sentence; its default is all of its keys' defaults."""
    return Field(default_factory=model, description=help)


class Hub(Section):
    bind_url: StrictStr = setting(
        "http://127.0.0.1:8000",
        "Where users reach the hub (the proxy's public URL); the proxy's own API listens on "
        "127.0.0.1 at the next port.",
    )
    hub_bind_url: StrictStr = setting(
        "",
        "Where the hub API listens for jobs on compute nodes; empty: "
        f"{DEFAULT_HUB_BIND_URL}. On a real cluster: an address compute nodes reach.",
    )
    subdomain_host: StrictStr = setting(
        "",
        "e.g. https://hub.example.org: every user's server (and each hub service) on a "
        "subdomain of its own, https://<user>.hub.example.org, so that no user's pages "
        "share an origin with another's (JupyterHub's subdomain_host; needs wildcard "
        "DNS and a wildcard certificate). Recommended in production: on one origin, a "
        "page from any user's server can script the others' and the MLflow UI's.",
    )
    tls_cert_file: StrictStr = setting(
        "",
        "With tls_key_file: configurable-http-proxy serves bind_url over TLS (JupyterHub's "
        "ssl_cert); bind_url must then be https://. An absolute path of a PEM file: the "
        "server's certificate, then the intermediate certificates. Read at every start; "
        "empty: the proxy speaks plain HTTP.",
    )
    tls_key_file: StrictStr = setting(
        "",
        "With tls_cert_file: the certificate's private key (JupyterHub's ssl_key), an "
        "absolute path of an unencrypted PEM file readable by the hub's account only (mode "
        "0600 or 0400); checked against the certificate at every start.",
    )
    public_url: StrictStr = setting(
        "",
        "Where users open the hub when TLS ends in front of it: e.g. https://hub.example.org "
        "when nginx, HAProxy or a load balancer takes https there and forwards to bind_url "
        "(http://, WebSockets included, the path unchanged). JupyterHub's public_url, and "
        "where auth.oauth.callback_url's default starts. https:// only; its path, if any, is "
        "bind_url's. Not with subdomain_host. Empty: users open bind_url (or subdomain_host).",
    )
    data_dir: StrictStr = setting(
        "/var/lib/werkbank/hub",
        "Hub state: the SQLite database (unless db_url), cookie secret, proxy pid file, "
        "dashboard shares. A relative path is relative to the site file's folder.",
    )
    db_url: StrictStr = setting(
        "",
        "The hub's database (users, groups, tokens, servers and each server's Slurm job id): "
        "a SQLAlchemy URL without a password, e.g. "
        "postgresql+psycopg://jupyterhub@db.cluster:5432/jupyterhub (psycopg is installed "
        "with werkbank; libpq options such as ?sslmode=verify-full go in the query). "
        "sqlite:////absolute/path.sqlite and postgresql are accepted. Empty: "
        "sqlite:///<data_dir>/jupyterhub.sqlite. A schema left by an older JupyterHub is "
        "upgraded with `jupyterhub upgrade-db`, never at start.",
    )
    db_password_file: StrictStr = setting(
        "",
        "With a postgresql db_url: an absolute path of a file readable by the hub's account "
        "only (mode 0600 or 0400) whose first line is the password of db_url's user; read "
        "at every start (JupyterHub's log shows it as [redacted]). Empty: no password from werkbank "
        "(PostgreSQL's own ways still apply: peer authentication over a Unix socket, the "
        "hub account's ~/.pgpass). A password written into db_url is refused.",
    )
    admin_users: Names = setting((), "User names with hub admin rights.")
    internal_ssl: StrictBool = setting(
        False,
        "JupyterHub's internal_ssl: the hub API, the proxy and every user's server talk TLS "
        "with certificates from the hub's own CAs (kept in <data_dir>/internal-ssl; keep that "
        "folder: servers running as jobs hold certificates it signed), each side checking the "
        "other's. A server's certificate names every node of its job's partition (NodeAddr, "
        "NodeName, NodeHostname from sinfo) and goes to ~/.werkbank/certs/<server>, written as "
        "the user and removed when the server stops. The MLflow proxy service serves TLS too, "
        "with a certificate of the hub's CA for where jobs reach it (in <data_dir>/../"
        "service-certs/mlflow, its account's only), and jobs check it with the CA they check the "
        "hub with (MLFLOW_TRACKING_SERVER_CERT_PATH); tracking.mlflow.public_url must then be "
        "https://. The trainer console serves TLS and calls the hub API over TLS. Only with "
        "spawner slurm.",
    )
    spawner: Literal["slurm", "local"] = setting(
        "slurm",
        "slurm: servers run as Slurm jobs. local: NO SLURM, servers run as local "
        "processes on the hub machine (for machines without a scheduler).",
    )

    @property
    def users_url(self) -> str:
        """The hub as users' browsers reach it, without a trailing slash: ``public_url`` or
        ``subdomain_host`` (either with bind_url's path, JupyterHub's base URL), else
        ``bind_url``. Links meant for people start here, never at bind_url itself."""
        base = urlsplit(self.bind_url).path.rstrip("/")
        front = self.public_url or self.subdomain_host
        if front:
            parts = urlsplit(front)
            return f"{parts.scheme}://{parts.netloc}{base}"
        return self.bind_url.rstrip("/")


class OAuth(Section):
    client_id: StrictStr = setting("", "Client id registered with the provider.")
    client_secret: StrictStr = setting(
        "", "Client secret for client_id, written in the site file; prefer client_secret_file."
    )
    client_secret_file: StrictStr = setting(
        "",
        "An absolute path of a file readable by the hub's account only (mode 0600 or 0400) "
        "whose first line is client_id's secret; read at every start. Instead of client_secret, "
        "never beside it.",
    )
    authorize_url: StrictStr = setting("", "The provider's authorization endpoint.")
    token_url: StrictStr = setting("", "The provider's token endpoint.")
    userdata_url: StrictStr = setting("", "The provider's userinfo endpoint.")
    username_claim: StrictStr = setting("preferred_username", "Userinfo field used as user name.")
    scope: Names = setting(("openid", "profile"), "Scopes to ask.")
    callback_url: StrictStr = setting(
        "",
        "Redirect URL registered with the provider, "
        "<bind_url>/hub/oauth_callback; empty: <hub.public_url>/hub/oauth_callback with "
        "hub.public_url, else derived from the request.",
    )
    issuer: StrictStr = setting(
        "",
        "The OpenID Connect issuer, e.g. https://idp.example.org/realms/ai (the provider's "
        "<issuer>/.well-known/openid-configuration names it). Set: a login needs the provider's "
        "id_token, signed by a key the issuer publishes (its jwks_uri), issued by it for client_id, "
        "not expired, about the same user as the userinfo answer; a token signed with another key "
        "or by another issuer is refused. Empty: plain OAuth2, the id_token is not checked.",
    )
    groups_claim: StrictStr = setting(
        "groups",
        "The claim listing the user's groups at the provider (in the userinfo answer or, with "
        "issuer, the id_token): a list of names; names joined by dots reach a nested claim, e.g. "
        "realm_access.roles. Read for group_map and allowed_groups.",
    )
    # Field, not setting(): a mapping's default. pydantic copies it for each Site (so it is never
    # shared), and `werkbank-site defaults` prints it ({}), which a default_factory would not give.
    group_map: dict[StrictStr, StrictStr] = Field(
        {},
        description="Provider group (as in groups_claim) -> hub group (the names limits.groups and "
        "profiles' groups use). At every login the user is put into the hub groups mapped from "
        "their provider groups and taken out of the others named here, so that limits follow the "
        "provider; hub groups not named here (workshop courses, groups made by admins) are left "
        "alone. Several provider groups may map to one hub group. E.g. "
        '{"/ai-factory/power-users": power}.',
    )
    allowed_groups: Names = setting(
        (),
        "Provider groups (as in groups_claim) whose members may log in, besides "
        "auth.allowed_users and hub.admin_users; empty: none (not with auth.allow_all).",
    )


class Auth(Section):
    type: Literal["pam", "shared-password", "oauth"] = setting(
        "pam",
        "pam: system accounts. oauth: an OpenID Connect / OAuth2 provider. "
        "shared-password: one password for all users, for demos on this machine only.",
    )
    shared_password: StrictStr = setting(
        "",
        f"The demo password (at least {SHARED_PASSWORD_MIN_LENGTH} characters); "
        "only with type shared-password, which is refused unless hub.bind_url and "
        "hub.hub_bind_url are loopback addresses.",
    )
    min_uid: StrictInt = setting(
        MIN_UID,
        "Lowest Linux uid a server may run as; root and system accounts below it "
        "never start servers, whoever logs in under their name.",
        ge=1,
        le=2**31 - 1,
    )
    allowed_users: Names = setting((), "User names allowed to log in.")
    allow_all: StrictBool = setting(False, "Allow every user who authenticates, not just allowed_users.")
    oauth: OAuth = section(
        OAuth, "OAuth2 / OpenID Connect provider (GenericOAuthenticator); used when type is oauth."
    )


class Slurm(Section):
    conf: StrictStr = setting(
        "",
        "Path of slurm.conf, exported as SLURM_CONF; empty: Slurm's default (/etc/slurm/slurm.conf).",
    )
    bin_dir: StrictStr = setting("/usr/bin", "Folder with sbatch, squeue, scancel, sinfo, scontrol.")
    poll_interval: StrictFloat = setting(
        2.0, "Seconds between the hub's shared squeue calls.", ge=0.5, le=60, allow_inf_nan=False
    )
    unreachable_grace: StrictInt = setting(
        600, "Seconds a server is kept while the scheduler does not answer.", ge=0, le=7 * 24 * 3600
    )
    start_timeout: StrictInt = setting(
        300,
        "Seconds a job may take to start, time pending in the queue included.",
        ge=1,
        le=7 * 24 * 3600,
    )
    job_prologue: StrictStr = setting(
        "", "Trusted shell lines the job runs before Jupyter (e.g. module load cuda)."
    )
    port_range: tuple[StrictInt, ...] = setting(
        tuple(PORT_RANGE),
        "[first, last]: the ports a server may listen on. The job picks a free one "
        "in the range; the hub refuses any other, so that no server's route points at "
        "another service on a node.",
    )


class Profile(Section):
    """A resource profile. The defaults are policy_from_dict's (a test checks that they agree)."""

    name: StrictStr = Field(description="Short id: lower-case letters, digits, '_' and '-'.")
    display_name: StrictStr = setting("", "Label on the spawn page; empty: derived from the resources.")
    description: StrictStr = setting("", "One sentence shown under the label.")
    partition: StrictStr = Field(description="Slurm partition the job runs in.")
    gpus: Amount = setting(0, "Number of GPUs (Slurm --gres=gpu:N).")
    cpus: Amount = setting(1, "Number of CPU cores.")
    memory: Amount = setting("2G", "Memory, e.g. 16G or 512M; a plain number is MB.")
    walltime: Amount = setting("1h", "Time limit, e.g. 04:00:00, 4h or 90m; a plain number is minutes.")
    account: StrictStr = setting("", "Slurm account; empty: the user's default account.")
    groups: Names = setting((), "Offer only to members of these groups; empty: everyone.")


class Limits(Section):
    """What one server may use. The defaults are policy_from_dict's most restrictive fallbacks
    (a test checks that they agree)."""

    gpus: Amount = setting(0, "Most GPUs one server may use.")
    cpus: Amount = setting(1, "Most CPU cores one server may use.")
    memory: Amount = setting("2G", "Most memory one server may use.")
    walltime: Amount = setting("1h", "Longest time limit a server may ask for.")
    partitions: Names = setting((), "Partitions users may run in.")
    accounts: Names = setting((), "Slurm accounts users may name; empty: none.")
    nodes: Amount = setting(1, "Most nodes one batch job (`werkbank submit --nodes`) may span.")


class _GroupLimitsBase(Section):
    #: What an absent key means (for the reference): the policy inherits it.
    absent: ClassVar[str] = "as in limits.default"


def _or_absent(info: FieldInfo) -> object:
    """A field's type, its validators kept, or None (absent)."""
    kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return kind | None


#: A group's limits: the keys of :class:`Limits`, each absent one inherited from limits.default.
GroupLimits = create_model(
    "GroupLimits",
    __base__=_GroupLimitsBase,
    __doc__="A group's limits; an absent key is inherited from limits.default.",
    **{
        name: (_or_absent(info), Field(None, description=info.description))
        for name, info in Limits.model_fields.items()
    },
)


class LimitsSection(Section):
    default: Limits = section(Limits, "Limits of every user; partitions must name at least one.")
    groups: dict[StrictStr, GroupLimits] = Field(
        default_factory=dict,
        description="Limits by group name.",
        json_schema_extra={"example": "workshop:\n  gpus: 1\n  walltime: 2h\n"},
    )

    @model_validator(mode="before")
    @classmethod
    def _groups_without_keys_inherit_everything(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("groups"), dict):
            data = {**data, "groups": {name: {} if v is None else v for name, v in data["groups"].items()}}
        return data


class MLflow(Section):
    manage: StrictBool = setting(True, "The hub starts and supervises `mlflow server` as a managed service.")
    proxy: StrictBool = setting(
        True,
        "Users and jobs reach MLflow only through the hub's authenticating proxy "
        "service at <hub>/services/mlflow (hub login in the browser, the session's "
        "hub token from jobs), which records the user on the runs it creates. "
        "false: jobs get url directly and anyone who reaches it can read and "
        "delete every run.",
    )
    permissions: StrictBool = setting(
        True,
        "With manage and proxy: MLflow checks who may see and change what (its "
        "basic-auth app, told the user by the proxy). Each user sees their own "
        "experiments and registered models and those of their hub groups' projects "
        "(experiments named <group>/...); hub admins see everything. false: every "
        "hub user may read and change every run.",
    )
    public_url: StrictStr = setting(
        "",
        "With proxy: what jobs get as MLFLOW_TRACKING_URI, the proxy service as "
        "compute nodes reach it; its path must be the service's, <hub.bind_url "
        "path>/services/mlflow. Empty: the service where jobs reach the hub API, "
        "http://<hub.hub_bind_url host>:<proxy_port>/services/mlflow (required when "
        "hub.hub_bind_url listens on every interface). <hub.bind_url>/services/mlflow "
        "sends jobs through the hub's public proxy instead (~2 ms more per request).",
    )
    url: StrictStr = setting(
        "http://127.0.0.1:5000",
        "The MLflow server's own address. With proxy: where the proxy forwards to "
        "(with manage: http://<host>:<port>). Without proxy: what jobs get as "
        "MLFLOW_TRACKING_URI; on a real cluster an address compute nodes reach.",
    )
    host: StrictStr = setting(
        "127.0.0.1",
        "Interface the managed server binds; with proxy a loopback address, so that "
        "only the proxy reaches it.",
    )
    port: StrictInt = setting(5000, "Port the managed server binds.", ge=1, le=65535)
    proxy_port: StrictInt = setting(
        0,
        "Port the proxy service listens on, where the hub API does (hub.hub_bind_url's "
        "host, 127.0.0.1 by default): jobs reach it there, as they reach the hub API; "
        "browsers through the hub's proxy at <hub.bind_url>/services/mlflow/. "
        "0: port + 1.",
        ge=0,
        le=65535,
    )
    backend_store_uri: StrictStr = setting(
        "",
        "Database of runs and metrics, e.g. postgresql://mlflow@db.cluster/mlflow "
        "(its driver psycopg is installed with werkbank), without a password (see "
        "db_password_file; one written here is refused); empty: "
        "sqlite:///<hub.data_dir>/../mlflow/mlflow.db.",
    )
    auth_database_uri: StrictStr = setting(
        "",
        "With permissions: MLflow's database of users, roles and permissions, e.g. "
        "postgresql://mlflow@db.cluster/mlflow_auth (may be backend_store_uri's "
        "database), without a password (see db_password_file); empty: "
        "sqlite:///<hub.data_dir>/../mlflow/auth.db.",
    )
    db_password_file: StrictStr = setting(
        "",
        "With manage and a postgresql backend_store_uri or auth_database_uri: an absolute "
        "path of a file owned by the hub's account and readable by it only (mode 0600 or "
        "0400) whose first line is the password of those URIs' PostgreSQL user (one "
        "password for both); read at every start, written into the MLflow server's private "
        "secrets file and set as libpq's PGPASSWORD by its launcher: never in the hub "
        "database, on a command line or in MLflow's files. Needs a libpq driver "
        "(postgresql, postgresql+psycopg or +psycopg2). Empty: no password from werkbank "
        "(peer authentication over a Unix socket, service_user's ~/.pgpass).",
    )
    artifacts_destination: StrictStr = setting(
        "",
        "Where uploaded artifacts are stored: a folder (shared or local) or e.g. "
        "s3://bucket/prefix; empty: <hub.data_dir>/../mlflow/artifacts.",
    )
    workers: StrictInt = setting(1, "Worker processes of the managed server.", ge=1, le=64)
    service_user: StrictStr = setting(
        "werkbank-mlflow",
        "System account the managed MLflow server and the proxy service run as "
        "when the hub runs as root; never root, for both parse every user's "
        "requests. deploy/install.sh creates it. The hub gives it MLflow's folder "
        "(<hub.data_dir>/../mlflow) at every start; stores configured elsewhere "
        "(artifacts_destination, a SQLite backend_store_uri) must be writable by "
        "it. A hub running as an ordinary account runs both as itself.",
    )

    @property
    def permission_checks(self) -> bool:
        """Whether MLflow checks permissions: ``permissions``, which needs the hub to run the
        server (``manage``) and the proxy that tells it who is asking (``proxy``)."""
        return self.permissions and self.manage and self.proxy


class Tracking(Section):
    mlflow: MLflow = section(MLflow, "The MLflow tracking server, and how users and jobs reach it.")


class Culling(Section):
    enabled: StrictBool = setting(True, "Run the idle culler as a managed service.")
    timeout: StrictInt = setting(3600, "Seconds of inactivity before a server is stopped.", ge=60)
    every: StrictInt = setting(300, "Seconds between culler checks.", ge=10)


class Workshops(Section):
    enabled: StrictBool = setting(
        True,
        "Trainers' courses (werkbank-workshop create course.yaml): course logins on the login "
        "page, a locked profile for participants, trainer roles scoped to the course.",
    )
    create_accounts: StrictBool = setting(
        True,
        "Pool accounts (<prefix>01, ...) are made for a course (useradd, as the hub runs as root) "
        "and locked or removed at its end. false: the centre provides them; they must exist, "
        "and werkbank only hands them out.",
    )
    retention: Literal["lock", "delete"] = setting(
        "lock",
        "At a course's end, the accounts made for it are locked (homes kept) or deleted with "
        "their homes; either way the participants' work is archived and handed to the trainers.",
    )
    port: StrictInt = setting(
        8082,
        "Port on 127.0.0.1 of the trainer console service (the hub's proxy routes "
        "<bind_url>/services/werkbank-workshop/ to it).",
        ge=1,
        le=65535,
    )
    check_every: StrictInt = setting(
        60,
        "Seconds between the console service's rounds: stopping participants' servers idle for "
        "longer than their course's idle_timeout, ending courses whose window has closed.",
        ge=5,
        le=3600,
    )


class StorageArea(Section):
    """One place for files as clients read about it (the first-hour template checks it in their session)."""

    path: StrictStr = setting(
        "",
        "Where it is, as sessions see it: an absolute path, or one starting with ~ or naming "
        "variables ($USER), expanded in the session; empty: the centre offers no such area.",
    )
    purpose: StrictStr = setting("", "What it is for, in a sentence for clients.")
    backed_up: StrictBool = setting(False, "Whether the centre backs it up.")
    quota: StrictStr = setting(
        "", "The quota in words, e.g. '50 GB and 1 million files per user'; empty: not stated."
    )


def _storage_area(name: str) -> type[StorageArea]:
    """:class:`StorageArea` with the defaults of area ``name`` (from werkbank_core.centre)."""
    given = CENTRE_DEFAULTS["storage"][name]
    return create_model(
        f"{name.title()}Storage",
        __base__=StorageArea,
        __doc__=StorageArea.__doc__,
        **{
            key: (
                Annotated[(info.annotation, *info.metadata)],
                Field(given[key], description=info.description),
            )
            for key, info in StorageArea.model_fields.items()
        },
    )


HomeStorage, ProjectStorage, ScratchStorage = map(_storage_area, STORAGE_AREAS)


class CentreStorage(Section):
    home: HomeStorage = section(HomeStorage, "Each user's home folder; every session has one.")
    project: ProjectStorage = section(ProjectStorage, "A folder a project's members share.")
    scratch: ScratchStorage = section(ScratchStorage, "Fast space for large temporary files.")


class Centre(Section):
    """What clients read about the centre (the first-hour template); sessions get it as
    WERKBANK_CENTRE. Nothing here changes what a job may do."""

    name: StrictStr = setting(CENTRE_DEFAULTS["name"], "The centre's name as clients know it.")
    help: StrictStr = setting(
        CENTRE_DEFAULTS["help"],
        "Who clients ask for help, in words that follow 'ask': a team, an e-mail address, a phone number.",
    )
    help_url: StrictStr = setting(
        CENTRE_DEFAULTS["help_url"], "An http(s) page with documentation or a ticket form; empty: none."
    )
    data_protection: StrictStr = setting(
        CENTRE_DEFAULTS["data_protection"],
        "The centre's note on personal data (GDPR): where the data-processing agreement allows it, "
        "and what clients must do (pseudonymise; nothing personal in run names, parameters or tags).",
    )
    storage: CentreStorage = section(
        CentreStorage, "Where clients may keep files: home, project and scratch, with what each is for."
    )


class Site(Section):
    """werkbank's site configuration."""

    hub: Hub = section(Hub, "The hub: where it listens, where it keeps its state, who administers it.")
    auth: Auth = section(Auth, "Who may log in.")
    slurm: Slurm = section(Slurm, "How the hub talks to Slurm (ignored with hub.spawner: local).")
    profiles: tuple[Profile, ...] = Field(
        default=(),
        description="Resource profiles the spawn page offers; the first one a user may choose is "
        "preselected. Checked against limits at start.",
        json_schema_extra={
            "example": "- name: gpu1\n"
            "  display_name: 1 GPU · 4 cores · 16 GB · 4 h\n"
            "  partition: gpu\n"
            "  gpus: 1\n"
            "  cpus: 4\n"
            "  memory: 16G\n"
            "  walltime: 4h\n"
        },
    )
    custom_fields: Names = setting(
        (),
        "Fields users may change on top of a profile: any of gpus, cpus, memory, "
        "walltime, partition, account. Empty: profiles only.",
    )
    limits: LimitsSection = section(
        LimitsSection,
        "What one server may use. A user in groups listed under groups gets, field by "
        "field, the most generous value among those groups instead of the default.",
    )
    tracking: Tracking = section(Tracking, "Experiment tracking offered to every job.")
    culling: Culling = section(
        Culling, "Stop servers nobody used for a while (jupyterhub-idle-culler), freeing their GPUs."
    )
    workshops: Workshops = section(Workshops, "Courses for groups of participants (werkbank-workshop).")
    centre: Centre = section(
        Centre, "What the first-hour template tells clients about the centre: its name, help, storage, data."
    )

    def policy_config(self) -> dict:
        """What :func:`werkbank_core.policy.policy_from_dict` takes: profiles, custom fields and
        limits as plain data (a group's absent keys stay absent: they are inherited)."""
        return self.model_dump(
            mode="json", include={"profiles", "custom_fields", "limits"}, exclude_none=True
        )
