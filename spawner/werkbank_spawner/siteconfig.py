"""The site file: one YAML file an admin edits, its schema, validation and application.

The flow, used by ``hub_config/jupyterhub_config.py`` and by ``werkbank-site check``::

    site = validate(load(path))           # SiteConfigError("<key.path>", "<what is wrong>")
    apply(c, site, config_dir=path.parent)

:data:`SCHEMA` documents every key with its type, default and meaning; unknown keys are
errors, never ignored. ``werkbank-site defaults`` prints it as a commented YAML reference.

Profiles, custom fields and limits are checked by :func:`werkbank_core.policy.policy_from_dict`
(the same code the spawner runs); this module only checks their shape and translates the
policy's errors into site-file key paths.

Nothing here starts a hub or touches the file system beyond reading the site file (and
:func:`prepare_state`, which creates the state folders and MLflow's permission configuration
when the hub starts), so all of it is testable with ``apply(Config(), {...})``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import ipaddress
import math
import os
import pwd
import re
import secrets
import sys
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from traitlets.config import Config

from werkbank_core.policy import MIN_UID, PolicyError, policy_from_dict
from werkbank_core.script import PORT_RANGE

from .tracking.auth import KEY_ENV

#: Spawner classes by ``hub.spawner``. Configured by class name only: importing the
#: spawner module here would make the site file depend on Slurm tooling being importable.
SPAWNER_CLASSES = {
    "slurm": "werkbank_spawner.spawner.WerkbankSlurmSpawner",
    "local": "werkbank_spawner.spawner.WerkbankLocalSpawner",
}
AUTHENTICATOR_CLASSES = {
    "pam": "jupyterhub.auth.PAMAuthenticator",
    "shared-password": "shared-password",
    "oauth": "oauthenticator.generic.GenericOAuthenticator",
}
#: JupyterHub's SharedPasswordAuthenticator refuses shorter passwords; we say so at start.
SHARED_PASSWORD_MIN_LENGTH = 8
#: Scopes jupyterhub-idle-culler 2.0 needs (its README, "Permissions"). ``admin:users`` is
#: only needed with ``--cull-users``, which werkbank does not pass: least privilege.
CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")
#: The managed services for MLflow: the authenticating proxy users reach at /services/mlflow/,
#: and the MLflow server behind it.
MLFLOW_SERVICE = "mlflow"
MLFLOW_SERVER_SERVICE = "mlflow-server"
MLFLOW_ACCESS_SCOPE = f"access:services!service={MLFLOW_SERVICE}"
#: JupyterHub's own scopes of the `server` role (jupyterhub.roles.get_default_roles), which
#: werkbank's `server` role keeps; tests/unit/test_siteconfig.py checks that they agree.
DEFAULT_SERVER_SCOPES = ("users:activity!user", "access:servers!server")


class SiteConfigError(ValueError):
    """The site file is not acceptable. ``str(error)`` is ``<key.path>: <what is wrong>``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- the schema ------------------------------------------------------------------------


class _Marker:
    """A documentation-only default of a key inside entries (profiles, limits.groups)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


REQUIRED = _Marker("required")  # the key must be given
INHERITED = _Marker("as in limits.default")  # an absent key takes the default limits' value


@dataclass(frozen=True)
class Key:
    """One setting: its type(s), default and a help sentence.

    ``kind`` is a tuple of Python types from the YAML (``bool`` is never an ``int`` here);
    ``items`` is the element type of a list; ``choices`` and ``minimum``/``maximum`` bound
    the value.
    """

    kind: tuple[type, ...]
    default: object
    help: str
    items: type | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Section:
    """A mapping with a fixed set of keys. Missing keys take their defaults on merge."""

    help: str
    keys: Mapping[str, Key | Section | Entries]


@dataclass(frozen=True)
class Entries:
    """A list (``keyed=False``) or a name → entry mapping (``keyed=True``) of entries shaped
    like ``item``. Entries are checked for shape but *not* filled with defaults: what an
    absent key means is the policy's business (the item's defaults only document it).
    ``example`` is YAML shown, commented out, in the reference."""

    help: str
    item: Section
    keyed: bool = False
    default: object = field(default_factory=list)
    example: str = ""


def _profile_item() -> Section:
    # The documented defaults mirror policy.Profile and policy_from_dict;
    # tests/unit/test_siteconfig.py checks that they agree.
    count = (int, str)
    size = (str, int)
    return Section(
        "a resource profile",
        {
            "name": Key((str,), REQUIRED, "Short id: lower-case letters, digits, '_' and '-'."),
            "display_name": Key((str,), "", "Label on the spawn page; empty: derived from the resources."),
            "description": Key((str,), "", "One sentence shown under the label."),
            "partition": Key((str,), REQUIRED, "Slurm partition the job runs in."),
            "gpus": Key(count, 0, "Number of GPUs (Slurm --gres=gpu:N)."),
            "cpus": Key(count, 1, "Number of CPU cores."),
            "memory": Key(size, "2G", "Memory, e.g. 16G or 512M; a plain number is MB."),
            "walltime": Key(size, "1h", "Time limit, e.g. 04:00:00, 4h or 90m; a plain number is minutes."),
            "account": Key((str,), "", "Slurm account; empty: the user's default account."),
            "groups": Key((list,), [], "Offer only to members of these groups; empty: everyone.", items=str),
        },
    )


def _limits_item(help: str, *, inherited: bool) -> Section:
    # The defaults of limits.default are policy_from_dict's "most restrictive" fallbacks;
    # tests/unit/test_siteconfig.py checks that they agree.
    def default(value):
        return INHERITED if inherited else value

    return Section(
        help,
        {
            "gpus": Key((int, str), default(0), "Most GPUs one server may use."),
            "cpus": Key((int, str), default(1), "Most CPU cores one server may use."),
            "memory": Key((str, int), default("2G"), "Most memory one server may use."),
            "walltime": Key((str, int), default("1h"), "Longest time limit a server may ask for."),
            "partitions": Key((list,), default([]), "Partitions users may run in.", items=str),
            "accounts": Key((list,), default([]), "Slurm accounts users may name; empty: none.", items=str),
            "nodes": Key(
                (int, str), default(1), "Most nodes one batch job (`werkbank submit --nodes`) may span."
            ),
        },
    )


#: JupyterHub's own default for hub.hub_bind_url.
DEFAULT_HUB_BIND_URL = "http://127.0.0.1:8081"

SCHEMA = Section(
    "werkbank site configuration",
    {
        "hub": Section(
            "The hub: where it listens, where it keeps its state, who administers it.",
            {
                "bind_url": Key(
                    (str,),
                    "http://127.0.0.1:8000",
                    "Where users reach the hub (the proxy's public URL); the proxy's own API listens on "
                    "127.0.0.1 at the next port.",
                ),
                "hub_bind_url": Key(
                    (str,),
                    "",
                    "Where the hub API listens for jobs on compute nodes; empty: "
                    f"{DEFAULT_HUB_BIND_URL}. On a real cluster: an address compute nodes reach.",
                ),
                "subdomain_host": Key(
                    (str,),
                    "",
                    "e.g. https://hub.example.org: every user's server (and each hub service) on a "
                    "subdomain of its own, https://<user>.hub.example.org, so that no user's pages "
                    "share an origin with another's (JupyterHub's subdomain_host; needs wildcard "
                    "DNS and a wildcard certificate). Recommended in production: on one origin, a "
                    "page from any user's server can script the others' and the MLflow UI's.",
                ),
                "data_dir": Key(
                    (str,),
                    "/var/lib/werkbank/hub",
                    "Hub state: sqlite database, cookie secret, proxy pid file. A relative "
                    "path is relative to the site file's folder.",
                ),
                "admin_users": Key((list,), [], "User names with hub admin rights.", items=str),
                "spawner": Key(
                    (str,),
                    "slurm",
                    "slurm: servers run as Slurm jobs. local: NO SLURM, servers run as local "
                    "processes on the hub machine (for machines without a scheduler).",
                    choices=tuple(SPAWNER_CLASSES),
                ),
            },
        ),
        "auth": Section(
            "Who may log in.",
            {
                "type": Key(
                    (str,),
                    "pam",
                    "pam: system accounts. oauth: an OpenID Connect / OAuth2 provider. "
                    "shared-password: one password for all users, for demos on this machine only.",
                    choices=tuple(AUTHENTICATOR_CLASSES),
                ),
                "shared_password": Key(
                    (str,),
                    "",
                    f"The demo password (at least {SHARED_PASSWORD_MIN_LENGTH} characters); "
                    "only with type shared-password, which is refused unless hub.bind_url and "
                    "hub.hub_bind_url are loopback addresses.",
                ),
                "min_uid": Key(
                    (int,),
                    MIN_UID,
                    "Lowest Linux uid a server may run as; root and system accounts below it "
                    "never start servers, whoever logs in under their name.",
                    minimum=1,
                    maximum=2**31 - 1,
                ),
                "allowed_users": Key((list,), [], "User names allowed to log in.", items=str),
                "allow_all": Key(
                    (bool,), False, "Allow every user who authenticates, not just allowed_users."
                ),
                "oauth": Section(
                    "OAuth2 / OpenID Connect provider (GenericOAuthenticator); used when type is oauth.",
                    {
                        "client_id": Key((str,), "", "Client id registered with the provider."),
                        "client_secret": Key((str,), "", "Client secret for client_id."),
                        "authorize_url": Key((str,), "", "The provider's authorization endpoint."),
                        "token_url": Key((str,), "", "The provider's token endpoint."),
                        "userdata_url": Key((str,), "", "The provider's userinfo endpoint."),
                        "username_claim": Key(
                            (str,), "preferred_username", "Userinfo field used as user name."
                        ),
                        "scope": Key((list,), ["openid", "profile"], "Scopes to ask.", items=str),
                        "callback_url": Key(
                            (str,),
                            "",
                            "Redirect URL registered with the provider, "
                            "<bind_url>/hub/oauth_callback; empty: derived from the request.",
                        ),
                    },
                ),
            },
        ),
        "slurm": Section(
            "How the hub talks to Slurm (ignored with hub.spawner: local).",
            {
                "conf": Key(
                    (str,),
                    "",
                    "Path of slurm.conf, exported as SLURM_CONF; empty: Slurm's default "
                    "(/etc/slurm/slurm.conf).",
                ),
                "bin_dir": Key((str,), "/usr/bin", "Folder with sbatch, squeue, scancel, sinfo."),
                "poll_interval": Key(
                    (float,),
                    2.0,
                    "Seconds between the hub's shared squeue calls.",
                    minimum=0.5,
                    maximum=60,
                ),
                "unreachable_grace": Key(
                    (int,),
                    600,
                    "Seconds a server is kept while the scheduler does not answer.",
                    minimum=0,
                    maximum=7 * 24 * 3600,
                ),
                "start_timeout": Key(
                    (int,),
                    300,
                    "Seconds a job may take to start, time pending in the queue included.",
                    minimum=1,
                    maximum=7 * 24 * 3600,
                ),
                "job_prologue": Key(
                    (str,),
                    "",
                    "Trusted shell lines the job runs before Jupyter (e.g. module load cuda).",
                ),
                "port_range": Key(
                    (list,),
                    list(PORT_RANGE),
                    "[first, last]: the ports a server may listen on. The job picks a free one "
                    "in the range; the hub refuses any other, so that no server's route points at "
                    "another service on a node.",
                    items=int,
                ),
            },
        ),
        "profiles": Entries(
            "Resource profiles the spawn page offers; the first one a user may choose is "
            "preselected. Checked against limits at start.",
            _profile_item(),
            example=(
                "- name: gpu1\n"
                "  display_name: 1 GPU · 4 cores · 16 GB · 4 h\n"
                "  partition: gpu\n"
                "  gpus: 1\n"
                "  cpus: 4\n"
                "  memory: 16G\n"
                "  walltime: 4h\n"
            ),
        ),
        "custom_fields": Key(
            (list,),
            [],
            "Fields users may change on top of a profile: any of gpus, cpus, memory, "
            "walltime, partition, account. Empty: profiles only.",
            items=str,
        ),
        "limits": Section(
            "What one server may use. A user in groups listed under groups gets, field by "
            "field, the most generous value among those groups instead of the default.",
            {
                "default": _limits_item(
                    "Limits of every user; partitions must name at least one.", inherited=False
                ),
                "groups": Entries(
                    "Limits by group name.",
                    _limits_item("Limits of a group's members.", inherited=True),
                    keyed=True,
                    default={},
                    example="workshop:\n  gpus: 1\n  walltime: 2h\n",
                ),
            },
        ),
        "tracking": Section(
            "Experiment tracking offered to every job.",
            {
                "mlflow": Section(
                    "The MLflow tracking server, and how users and jobs reach it.",
                    {
                        "manage": Key(
                            (bool,),
                            True,
                            "The hub starts and supervises `mlflow server` as a managed service.",
                        ),
                        "proxy": Key(
                            (bool,),
                            True,
                            "Users and jobs reach MLflow only through the hub's authenticating proxy "
                            "service at <hub>/services/mlflow (hub login in the browser, the session's "
                            "hub token from jobs), which records the user on the runs it creates. "
                            "false: jobs get url directly and anyone who reaches it can read and "
                            "delete every run.",
                        ),
                        "permissions": Key(
                            (bool,),
                            True,
                            "With manage and proxy: MLflow checks who may see and change what (its "
                            "basic-auth app, told the user by the proxy). Each user sees their own "
                            "experiments and registered models and those of their hub groups' projects "
                            "(experiments named <group>/...); hub admins see everything. false: every "
                            "hub user may read and change every run.",
                        ),
                        "public_url": Key(
                            (str,),
                            "",
                            "With proxy: what jobs get as MLFLOW_TRACKING_URI, the proxy service as "
                            "compute nodes reach it; its path must be the service's, <hub.bind_url "
                            "path>/services/mlflow. Empty: the service where jobs reach the hub API, "
                            "http://<hub.hub_bind_url host>:<proxy_port>/services/mlflow (required when "
                            "hub.hub_bind_url listens on every interface). <hub.bind_url>/services/mlflow "
                            "sends jobs through the hub's public proxy instead (~2 ms more per request).",
                        ),
                        "url": Key(
                            (str,),
                            "http://127.0.0.1:5000",
                            "The MLflow server's own address. With proxy: where the proxy forwards to "
                            "(with manage: http://<host>:<port>). Without proxy: what jobs get as "
                            "MLFLOW_TRACKING_URI; on a real cluster an address compute nodes reach.",
                        ),
                        "host": Key(
                            (str,),
                            "127.0.0.1",
                            "Interface the managed server binds; with proxy a loopback address, so that "
                            "only the proxy reaches it.",
                        ),
                        "port": Key((int,), 5000, "Port the managed server binds.", minimum=1, maximum=65535),
                        "proxy_port": Key(
                            (int,),
                            0,
                            "Port the proxy service listens on, where the hub API does (hub.hub_bind_url's "
                            "host, 127.0.0.1 by default): jobs reach it there, as they reach the hub API; "
                            "browsers through the hub's proxy at <hub.bind_url>/services/mlflow/. "
                            "0: port + 1.",
                            minimum=0,
                            maximum=65535,
                        ),
                        "backend_store_uri": Key(
                            (str,),
                            "",
                            "Database of runs and metrics, e.g. postgresql://mlflow@db.cluster/mlflow "
                            "(its driver psycopg is installed with werkbank); empty: "
                            "sqlite:///<hub.data_dir>/../mlflow/mlflow.db.",
                        ),
                        "auth_database_uri": Key(
                            (str,),
                            "",
                            "With permissions: MLflow's database of users, roles and permissions, e.g. "
                            "postgresql://mlflow@db.cluster/mlflow_auth (may be backend_store_uri's "
                            "database); empty: sqlite:///<hub.data_dir>/../mlflow/auth.db.",
                        ),
                        "artifacts_destination": Key(
                            (str,),
                            "",
                            "Where uploaded artifacts are stored: a folder (shared or local) or e.g. "
                            "s3://bucket/prefix; empty: <hub.data_dir>/../mlflow/artifacts.",
                        ),
                        "workers": Key(
                            (int,),
                            1,
                            "Worker processes of the managed server.",
                            minimum=1,
                            maximum=64,
                        ),
                        "service_user": Key(
                            (str,),
                            "werkbank-mlflow",
                            "System account the managed MLflow server and the proxy service run as "
                            "when the hub runs as root; never root, for both parse every user's "
                            "requests. deploy/install.sh creates it. The hub gives it MLflow's folder "
                            "(<hub.data_dir>/../mlflow) at every start; stores configured elsewhere "
                            "(artifacts_destination, a SQLite backend_store_uri) must be writable by "
                            "it. A hub running as an ordinary account runs both as itself.",
                        ),
                    },
                ),
            },
        ),
        "culling": Section(
            "Stop servers nobody used for a while (jupyterhub-idle-culler), freeing their GPUs.",
            {
                "enabled": Key((bool,), True, "Run the idle culler as a managed service."),
                "timeout": Key((int,), 3600, "Seconds of inactivity before a server is stopped.", minimum=60),
                "every": Key((int,), 300, "Seconds between culler checks.", minimum=10),
            },
        ),
    },
)


# --- load and merge --------------------------------------------------------------------


class _SiteLoader(yaml.SafeLoader):
    """YAML as an admin means it: duplicate keys are errors, and ``4:00:00`` is the string
    a walltime needs, not YAML 1.1's base-60 integer 14400."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SiteLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
for _first in "+-0123456789":
    # First match wins, so this goes in front of the int and float resolvers.
    _SiteLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", _SEXAGESIMAL)
    )


def load(path: str | os.PathLike) -> dict:
    """Read the site file. Returns its top-level mapping (an empty file is ``{}``).

    Raises :class:`SiteConfigError` (path: the file name) if it cannot be read, is not
    YAML, or is not a mapping.
    """
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SiteConfigError(name, f"cannot read the site file: {e}") from None
    try:
        data = yaml.load(text, Loader=_SiteLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        if isinstance(e, yaml.constructor.ConstructorError):
            raise SiteConfigError(where, str(e.problem)) from None
        raise SiteConfigError(where, f"not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SiteConfigError(name, f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteConfigError(
            name, f"expected a mapping of sections (hub:, auth:, ...), got {_kind_of(data)}"
        )
    return data


def defaults() -> dict:
    """The documented defaults, as a new dictionary on every call."""
    return _defaults_of(SCHEMA)


def _defaults_of(section: Section) -> dict:
    out = {}
    for key, node in section.keys.items():
        if isinstance(node, Section):
            out[key] = _defaults_of(node)
        else:
            out[key] = copy.deepcopy(node.default)
    return out


def merge_defaults(site: Mapping) -> dict:
    """``site`` with every absent key of a section filled from the defaults.

    Returns a new dictionary sharing nothing with ``site`` or the schema (deep copies).
    Values of the wrong shape and unknown keys are kept as they are for :func:`validate`
    to report; list and mapping entries (profiles, limits.groups) are not filled.
    """
    return _merge(SCHEMA, site)


def _merge(section: Section, given: object) -> object:
    if given is None:
        given = {}  # a section whose keys are all commented out
    if not isinstance(given, Mapping):
        return copy.deepcopy(given)
    out = {key: copy.deepcopy(value) for key, value in given.items()}
    for key, node in section.keys.items():
        if key not in out:
            out[key] = _defaults_of(node) if isinstance(node, Section) else copy.deepcopy(node.default)
        elif isinstance(node, Section):
            out[key] = _merge(node, given[key])
    return out


# --- validation ------------------------------------------------------------------------


def validate(site: Mapping) -> dict:
    """Check a site configuration (as from :func:`load`) and return it complete.

    Returns a new dictionary with every default filled in (numbers of float settings as
    float); ``site`` is not modified. Raises :class:`SiteConfigError` for the first problem.
    """
    if not isinstance(site, Mapping):
        raise SiteConfigError("(top level)", f"expected a mapping, got {_kind_of(site)}")
    config = merge_defaults(site)
    _check_section(SCHEMA, config, "")
    _check_hub(config["hub"])
    _check_auth(config["auth"], config["hub"])
    _check_slurm(config["slurm"])
    _check_policy(config)
    _check_tracking(config["tracking"], config["hub"])
    return config


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_section(section: Section, value: object, path: str) -> None:
    """Check shape, types and ranges in place (converting ints of float settings)."""
    if not isinstance(value, dict):
        raise SiteConfigError(path or "(top level)", f"expected a mapping, got {_kind_of(value)}")
    for key in value:
        if key not in section.keys:
            known = ", ".join(section.keys)
            raise SiteConfigError(_join(path, key), f"unknown key; known keys here: {known}")
    for key, node in section.keys.items():
        where = _join(path, key)
        if key not in value:
            # Only inside entries (sections are filled by merge): a required key is absent.
            if isinstance(node, Key) and node.default is REQUIRED:
                raise SiteConfigError(where, "required")
            continue
        if isinstance(node, Section):
            _check_section(node, value[key], where)
        elif isinstance(node, Entries):
            _check_entries(node, value[key], where)
        else:
            value[key] = _check_key(node, value[key], where)


def _check_entries(node: Entries, value: object, path: str) -> None:
    if node.keyed:
        if not isinstance(value, dict):
            raise SiteConfigError(path, f"expected a mapping of names, got {_kind_of(value)}")
        for name, entry in value.items():
            if not isinstance(name, str):
                raise SiteConfigError(path, f"expected names as keys, got {_kind_of(name)}")
            _check_section(node.item, {} if entry is None else entry, _join(path, name))
            if entry is None:
                value[name] = {}
    else:
        if not isinstance(value, list):
            raise SiteConfigError(path, f"expected a list, got {_kind_of(value)}")
        for i, entry in enumerate(value):
            _check_section(node.item, entry, f"{path}[{i}]")


def _check_key(key: Key, value: object, path: str) -> object:
    if not any(_is(value, kind) for kind in key.kind):
        wanted = " or ".join(_TYPE_NAMES[kind] for kind in key.kind)
        raise SiteConfigError(path, f"expected {wanted}, got {_kind_of(value)}")
    if key.items is not None:
        for i, item in enumerate(value):
            if not _is(item, key.items):
                raise SiteConfigError(
                    f"{path}[{i}]", f"expected {_TYPE_NAMES[key.items]}, got {_kind_of(item)}"
                )
    if key.choices and value not in key.choices:
        raise SiteConfigError(path, f"{value!r} is not one of: {', '.join(key.choices)}")
    if key.kind == (float,):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise SiteConfigError(path, f"expected a finite number, got {value!r}")
        if key.minimum is not None and value < key.minimum:
            raise SiteConfigError(path, f"{value!r} is below the minimum {key.minimum:g}")
        if key.maximum is not None and value > key.maximum:
            raise SiteConfigError(path, f"{value!r} is above the maximum {key.maximum:g}")
    return value


_TYPE_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def _is(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {text}"


def _check_url(value: str, path: str) -> None:
    """An http(s) URL with a valid port (an empty host means every interface)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SiteConfigError(path, f"expected an http:// or https:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise SiteConfigError(path, f"{value!r} has an invalid port") from None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False  # no host: every interface
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _check_hub(hub: dict) -> None:
    _check_url(hub["bind_url"], "hub.bind_url")
    if hub["hub_bind_url"]:
        _check_url(hub["hub_bind_url"], "hub.hub_bind_url")
    if hub["subdomain_host"]:
        _check_url(hub["subdomain_host"], "hub.subdomain_host")
        if urlsplit(hub["subdomain_host"]).path not in ("", "/"):
            raise SiteConfigError("hub.subdomain_host", "a scheme and host (and port) only, no path")
    if not hub["data_dir"].strip():
        raise SiteConfigError("hub.data_dir", "must not be empty")


def _check_auth(auth: dict, hub: dict) -> None:
    kind = auth["type"]
    password = auth["shared_password"]
    if kind == "shared-password":
        # The proxy's API is on loopback by construction (apply); the hub's two addresses are
        # the site's: anyone who reaches either could log in as anybody with one password.
        for key in ("bind_url", "hub_bind_url"):
            host = urlsplit(hub[key] or DEFAULT_HUB_BIND_URL).hostname
            if not _is_loopback(host):
                raise SiteConfigError(
                    "auth.type",
                    f"shared-password is for demos on this machine only and is refused when "
                    f"hub.{key} listens on {host or 'every interface'}, which is not a "
                    "loopback address (127.0.0.0/8, ::1, localhost); use pam or oauth",
                )
        if len(password) < SHARED_PASSWORD_MIN_LENGTH:
            raise SiteConfigError(
                "auth.shared_password",
                f"needs at least {SHARED_PASSWORD_MIN_LENGTH} characters with type "
                f"shared-password, got {len(password)}",
            )
    elif password:
        # A password that is silently unused would make an admin believe it protects the hub.
        raise SiteConfigError(
            "auth.shared_password",
            f"only used with type shared-password (type is {kind}); remove it",
        )
    if kind == "oauth":
        oauth = auth["oauth"]
        for key in ("client_id", "client_secret", "authorize_url", "token_url", "userdata_url"):
            if not oauth[key].strip():
                raise SiteConfigError(f"auth.oauth.{key}", "required when auth.type is oauth")
        for key in ("authorize_url", "token_url", "userdata_url", "callback_url"):
            if oauth[key]:
                _check_url(oauth[key], f"auth.oauth.{key}")
        if not oauth["username_claim"].strip():
            raise SiteConfigError("auth.oauth.username_claim", "must not be empty")


def _check_slurm(slurm: dict) -> None:
    ports = slurm["port_range"]
    if len(ports) != 2 or not 1024 <= ports[0] <= ports[1] <= 65535:
        raise SiteConfigError(
            "slurm.port_range", f"{ports!r}: need [first, last] with 1024 <= first <= last <= 65535"
        )


def _check_policy(config: dict) -> None:
    """Profiles, custom fields and limits, by the policy code the spawner itself runs."""
    try:
        policy = policy_from_dict(policy_config(config))
    except PolicyError as e:
        # policy_from_dict is given the site's own profiles/custom_fields/limits, so its
        # field paths are site-file paths already: profiles[0].gpus, limits.groups.x.memory.
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


def _check_tracking(tracking: dict, hub: dict) -> None:
    mlflow = tracking["mlflow"]
    _check_url(mlflow["url"], "tracking.mlflow.url")
    if not mlflow["host"].strip():
        raise SiteConfigError("tracking.mlflow.host", "must not be empty")
    if not mlflow["service_user"].strip():
        raise SiteConfigError("tracking.mlflow.service_user", "must not be empty (MLflow never runs as root)")
    if mlflow["manage"] and mlflow["backend_store_uri"]:
        _check_database_driver(mlflow["backend_store_uri"], "tracking.mlflow.backend_store_uri")
    if mlflow_permissions(mlflow) and mlflow["auth_database_uri"]:
        _check_database_driver(mlflow["auth_database_uri"], "tracking.mlflow.auth_database_uri")
    if not mlflow["proxy"]:
        if mlflow["public_url"]:
            # An unused public URL would make an admin believe jobs go through the proxy.
            raise SiteConfigError("tracking.mlflow.public_url", "only used with proxy: true; remove it")
        return
    prefix = mlflow_service_prefix(hub)
    if mlflow["public_url"]:
        _check_url(mlflow["public_url"], "tracking.mlflow.public_url")
        parts = urlsplit(mlflow["public_url"])
        if parts.path.rstrip("/") != prefix or parts.query or parts.fragment:
            raise SiteConfigError(
                "tracking.mlflow.public_url",
                f"must end in the proxy service's path {prefix} (the hub's route to it), "
                f"got {mlflow['public_url']!r}",
            )
    elif _is_unspecified(mlflow_proxy_host(hub)):
        port = mlflow_proxy_port(mlflow)
        raise SiteConfigError(
            "tracking.mlflow.public_url",
            f"required when hub.hub_bind_url listens on every interface ({hub['hub_bind_url']}): the "
            f"address at which compute nodes reach the proxy service, e.g. http://hub.cluster:{port}{prefix}",
        )
    url = urlsplit(mlflow["url"])
    if url.path.strip("/") or url.query or url.fragment:
        raise SiteConfigError(
            "tracking.mlflow.url",
            f"with proxy: true only scheme, host and port (the proxy forwards {prefix}/... unchanged, "
            f"and the server serves under that prefix), got {mlflow['url']!r}",
        )
    if mlflow["manage"]:
        if not _is_loopback(mlflow["host"]):
            raise SiteConfigError(
                "tracking.mlflow.host",
                f"{mlflow['host']} is not a loopback address (127.0.0.0/8, ::1, localhost); with "
                "proxy: true the managed server must bind one, so that only the hub's "
                "authenticating proxy reaches it (or set proxy: false, and anyone who reaches the "
                "server can read and delete every run)",
            )
        if not _is_loopback(url.hostname) or (url.port or 80) != mlflow["port"]:
            raise SiteConfigError(
                "tracking.mlflow.url",
                f"with manage and proxy it is where the proxy reaches the managed server, "
                f"a loopback address with port {mlflow['port']}, e.g. http://127.0.0.1:{mlflow['port']}; "
                f"got {mlflow['url']!r}",
            )
    if mlflow_proxy_port(mlflow) == mlflow["port"]:
        raise SiteConfigError(
            "tracking.mlflow.proxy_port", f"{mlflow['port']} is the MLflow server's own port (port)"
        )


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


def _check_database_driver(uri: str, key: str) -> None:
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


# --- application to a traitlets Config ---------------------------------------------------


def policy_config(site: Mapping) -> dict:
    """The part of a site configuration :func:`policy_from_dict` takes (deep copies)."""
    return copy.deepcopy({key: site[key] for key in ("profiles", "custom_fields", "limits") if key in site})


def apply(c: Config, site: Mapping, *, config_dir: str | os.PathLike) -> None:
    """Set the traits a site configuration implies on the traitlets ``Config`` ``c``.

    ``site`` is validated (and completed with defaults) first, so a partial dictionary is
    fine. Relative paths in it are taken relative to ``config_dir`` (the site file's folder).
    Only *sets* traits, to values that share nothing with ``site``; applying the same site
    twice gives the same ``c``. Raises :class:`SiteConfigError` like :func:`validate`.

    One ``update_*`` function per area (the-littlest-jupyterhub's configurer does the same),
    each given the validated site.
    """
    site = validate(site)
    base = Path(config_dir)
    update_hub(c, site, base)
    update_auth(c, site)
    update_spawners(c, site, base)
    services, roles = update_tracking(c, site, base)
    culler, culler_roles = culler_service(site)
    c.JupyterHub.services = [*services, *culler]
    c.JupyterHub.load_roles = [*roles, *culler_roles]


def update_hub(c: Config, site: Mapping, base: Path) -> None:
    """Where the hub listens and keeps its state; which spawner it uses."""
    hub = site["hub"]
    data_dir = _data_dir(site, base)
    c.JupyterHub.bind_url = hub["bind_url"]
    if hub["subdomain_host"]:
        c.JupyterHub.subdomain_host = hub["subdomain_host"].rstrip("/")
    if hub["hub_bind_url"]:
        c.JupyterHub.hub_bind_url = hub["hub_bind_url"]
    c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "proxy.pid")
    # The proxy's REST API on loopback at the port after the public one, so that two hubs on
    # one machine (the demo beside the tests) do not both claim JupyterHub's default 8001.
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{_port_of(hub['bind_url']) + 1}"
    # Slurm servers are jobs: they keep running while the hub restarts and are found again.
    # Local-process servers (the fallback) stop with the hub, so that stopping it stops all.
    c.JupyterHub.cleanup_servers = hub["spawner"] != "slurm"
    c.JupyterHub.spawner_class = SPAWNER_CLASSES[hub["spawner"]]


def update_auth(c: Config, site: Mapping) -> None:
    """Who may log in, and how; the hub's admins."""
    auth = site["auth"]
    c.JupyterHub.authenticator_class = AUTHENTICATOR_CLASSES[auth["type"]]
    c.Authenticator.admin_users = set(site["hub"]["admin_users"])
    c.Authenticator.allowed_users = set(auth["allowed_users"])
    c.Authenticator.allow_all = auth["allow_all"]
    if auth["type"] == "shared-password":
        c.SharedPasswordAuthenticator.user_password = auth["shared_password"]
    elif auth["type"] == "oauth":
        oauth = auth["oauth"]
        generic = c.GenericOAuthenticator
        for key in ("client_id", "client_secret", "authorize_url", "token_url", "userdata_url"):
            generic[key] = oauth[key]
        generic.username_claim = oauth["username_claim"]
        generic.scope = list(oauth["scope"])
        if oauth["callback_url"]:
            generic.oauth_callback_url = oauth["callback_url"]


def update_spawners(c: Config, site: Mapping, base: Path) -> None:
    """Both spawners' policy, limits and tracking environment; the Slurm spawner's commands."""
    auth, slurm, mlflow = site["auth"], site["slurm"], site["tracking"]["mlflow"]
    # The hub-side poll only reads the shared squeue cache, so it can be frequent.
    c.Spawner.poll_interval = 5
    for spawner in ("WerkbankSlurmSpawner", "WerkbankLocalSpawner"):
        c[spawner].policy_config = policy_config(site)
        c[spawner].mlflow_tracking_uri = mlflow_tracking_uri(site)
        # The server's own hub token authenticates it to the proxy; a bare MLflow server
        # (proxy: false) must never see hub tokens.
        c[spawner].mlflow_send_token = mlflow["proxy"]
        c[spawner].start_timeout = slurm["start_timeout"]
        c[spawner].min_uid = auth["min_uid"]
    slurm_spawner = c.WerkbankSlurmSpawner
    slurm_spawner.slurm_conf = str(base / slurm["conf"]) if slurm["conf"] else ""
    slurm_spawner.slurm_bin_dir = str(base / slurm["bin_dir"])
    slurm_spawner.queue_poll_interval = slurm["poll_interval"]
    slurm_spawner.unreachable_grace = slurm["unreachable_grace"]
    slurm_spawner.job_prologue = slurm["job_prologue"]
    slurm_spawner.port_range = tuple(slurm["port_range"])


def update_tracking(c: Config, site: Mapping, base: Path) -> tuple[list[dict], list[dict]]:
    """MLflow: the spawners' key for each user's default experiment, the scope users get for
    the proxy service; returns the managed services (server, proxy) and the roles they need."""
    hub, mlflow = site["hub"], site["tracking"]["mlflow"]
    services, roles = [], []
    signing_key = _process_secret("signing") if mlflow_permissions(mlflow) else ""
    account = mlflow_service_account(mlflow, min_uid=site["auth"]["min_uid"])
    for spawner in ("WerkbankSlurmSpawner", "WerkbankLocalSpawner"):
        # The hub creates each user's <user>/default (as the user) where MLflow checks who owns what.
        c[spawner].mlflow_server_url = mlflow["url"] + mlflow_service_prefix(hub) if signing_key else ""
        c[spawner].mlflow_signing_key = signing_key
    if mlflow["manage"]:
        data_dir = _data_dir(site, base)
        server = _mlflow_service(mlflow, data_dir, prefix=mlflow_service_prefix(hub), signing_key=signing_key)
        services.append(_as_account(server, account))
    if mlflow["proxy"]:
        services.append(_as_account(_mlflow_proxy_service(site, signing_key=signing_key), account))
        # Browsers (the user's own OAuth token for the service) and the tokens of the users'
        # servers (the `server` role) may use the proxy; what they may do there is the proxy's
        # business. JupyterHub's default server scopes are kept (roles.get_default_roles).
        roles.append({"name": "server", "scopes": [*DEFAULT_SERVER_SCOPES, MLFLOW_ACCESS_SCOPE]})
    c.JupyterHub.extra_user_scopes = {MLFLOW_ACCESS_SCOPE} if mlflow["proxy"] else set()
    return services, roles


def culler_service(site: Mapping) -> tuple[list[dict], list[dict]]:
    """The idle culler as a managed service with the least scopes it needs (none if disabled)."""
    culling = site["culling"]
    if not culling["enabled"]:
        return [], []
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={culling['timeout']}",
        f"--cull-every={culling['every']}",
    ]
    role = {"name": "idle-culler", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]}
    return [{"name": "idle-culler", "command": command}], [role]


def mlflow_service_account(mlflow: Mapping, *, min_uid: int) -> pwd.struct_passwd | None:
    """The account the managed MLflow server and the proxy service run as
    (``tracking.mlflow.service_user``), or None when the hub does not run as root: JupyterHub
    then cannot switch accounts, and both run as the hub's own (ordinary) account.

    Raises :class:`SiteConfigError` (path ``tracking.mlflow.service_user``) for an account that
    does not exist, is root, or may start servers (uid >= ``min_uid``): MLflow's data would
    belong to somebody who can log in."""
    if not _running_as_root() or not (mlflow["manage"] or mlflow["proxy"]):
        return None
    name = mlflow["service_user"]
    key = "tracking.mlflow.service_user"
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


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_account(service: dict, account: pwd.struct_passwd | None) -> dict:
    """``service`` run as ``account`` (JupyterHub switches to it when the hub is root)."""
    return {**service, "user": account.pw_name} if account else service


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def state_dirs(site: Mapping, *, config_dir: str | os.PathLike) -> list[Path]:
    """Folders the hub and its managed services write to, for :func:`prepare_state`:
    ``hub.data_dir`` and, when the hub manages MLflow, its folder (default stores, the
    permission configuration)."""
    site = validate(site)
    data_dir = _data_dir(site, config_dir)
    dirs = [data_dir]
    mlflow = site["tracking"]["mlflow"]
    if mlflow["manage"]:
        dirs.append(_mlflow_dir(data_dir))
    return dirs


def prepare_state(site: Mapping, *, config_dir: str | os.PathLike) -> None:
    """Create the :func:`state_dirs` that do not exist yet, readable by their owner only
    (JupyterHub writes its cookie secret there but does not create the folder), and write
    MLflow's permission configuration (:func:`mlflow_auth_ini`) where the server reads it.

    Raises :class:`SiteConfigError` (path ``hub.data_dir``) if one cannot be written.
    """
    site = validate(site)
    for folder in state_dirs(site, config_dir=config_dir):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise SiteConfigError("hub.data_dir", f"cannot create {folder}: {e.strerror}") from None
    mlflow, data_dir = site["tracking"]["mlflow"], _data_dir(site, config_dir)
    account = mlflow_service_account(mlflow, min_uid=site["auth"]["min_uid"]) if mlflow["manage"] else None
    if account:
        _give_folder(_mlflow_dir(data_dir), account)
    if mlflow_permissions(mlflow):  # which implies manage: the hub runs the server
        path = _mlflow_auth_config_path(data_dir)
        try:
            # Private: the database URI may hold a password.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                if account:
                    os.fchown(f.fileno(), account.pw_uid, account.pw_gid)
                f.write(mlflow_auth_ini(mlflow_auth_database(site, config_dir=config_dir)))
        except OSError as e:
            raise SiteConfigError("hub.data_dir", f"cannot write {path}: {e.strerror}") from None


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


def mlflow_permissions(mlflow: Mapping) -> bool:
    """Whether MLflow checks permissions: ``permissions``, which needs the hub to run the server
    (``manage``) and the proxy that tells it who is asking (``proxy``)."""
    return mlflow["permissions"] and mlflow["manage"] and mlflow["proxy"]


def mlflow_auth_database(site: Mapping, *, config_dir: str | os.PathLike) -> str:
    """The database of MLflow's users and permissions (``tracking.mlflow.auth_database_uri``)."""
    default = f"sqlite:///{_mlflow_dir(_data_dir(site, config_dir)) / 'auth.db'}"
    return site["tracking"]["mlflow"]["auth_database_uri"] or default


def mlflow_auth_ini(database: str) -> str:
    """The ini file of MLflow's basic-auth app (``MLFLOW_AUTH_CONFIG_PATH``): nobody may do
    anything by default (creators get MANAGE on what they create), users are who the proxy says
    (:mod:`werkbank_spawner.tracking.auth`), and the bootstrap admin is the proxy itself."""
    return (
        "# Written by the hub at every start from the site file (werkbank_spawner.siteconfig).\n"
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database.replace('%', '%%')}\n"
        f"admin_username = service:{MLFLOW_SERVICE}\n"
        "authorization_function = werkbank_spawner.tracking.auth:authenticate\n"
        "grant_default_workspace_access = false\n"
    )


def mlflow_auth_env(config_path: str | os.PathLike, signing_key: str) -> dict[str, str]:
    """The environment ``mlflow server --app-name basic-auth`` needs for werkbank: the ini file,
    the key the proxy signs its assertions with, and two values the auth app insists on that nobody uses
    (the CSRF key of its sign-up form; the bootstrap admin's password, needed once)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config_path),
        KEY_ENV: signing_key,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _process_secret("flask"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": _process_secret("admin"),
    }


_secrets: dict[str, str] = {}


def _process_secret(purpose: str) -> str:
    """A random secret for ``purpose``, the same for the life of this process: new at every hub
    start (which restarts the managed services that share it), and applying the site twice
    gives the same configuration."""
    return _secrets.setdefault(purpose, secrets.token_urlsafe(32))


def _mlflow_auth_config_path(data_dir: Path) -> Path:
    return _mlflow_dir(data_dir) / "auth.ini"


def _data_dir(site: Mapping, config_dir: str | os.PathLike) -> Path:
    return Path(os.path.normpath(Path(config_dir) / site["hub"]["data_dir"]))


def _mlflow_dir(data_dir: Path) -> Path:
    return data_dir.parent / "mlflow"


def mlflow_service_prefix(hub: Mapping) -> str:
    """The proxy service's path, ``<hub base URL>/services/mlflow`` (no trailing slash); the
    managed server serves under it (``--static-prefix``), so the proxy forwards paths unchanged.
    JupyterHub takes its base URL from ``hub.bind_url``'s path."""
    base = urlsplit(hub["bind_url"]).path.rstrip("/")
    return f"{base}/services/{MLFLOW_SERVICE}"


def mlflow_proxy_port(mlflow: Mapping) -> int:
    """The proxy service's port: ``tracking.mlflow.proxy_port``, or ``port + 1`` when 0."""
    return mlflow["proxy_port"] or mlflow["port"] + 1


def mlflow_proxy_host(hub: Mapping) -> str:
    """Where the proxy service listens: the hub API's host (``hub.hub_bind_url``, JupyterHub's
    default 127.0.0.1 when empty). Jobs reach the service where they reach the hub API, without
    the hub's public proxy in between, as JupyterHub's own servers reach its API."""
    if not hub["hub_bind_url"]:
        return "127.0.0.1"
    return urlsplit(hub["hub_bind_url"]).hostname or "0.0.0.0"  # no host: every interface


def mlflow_proxy_url(site: Mapping) -> str:
    """The proxy service's own address, ``http://<mlflow_proxy_host>:<proxy_port>``."""
    return (
        f"http://{_host_port(mlflow_proxy_host(site['hub']), mlflow_proxy_port(site['tracking']['mlflow']))}"
    )


def _host_port(host: str, port: int) -> str:
    """``host:port`` as a URL or Host header has it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mlflow_tracking_uri(site: Mapping) -> str:
    """What jobs get as ``MLFLOW_TRACKING_URI``: the proxy service as compute nodes reach it
    (``public_url``, else the service's own address with its path), or the server's ``url``
    without the proxy. ``site`` is a validated site configuration."""
    mlflow = site["tracking"]["mlflow"]
    if not mlflow["proxy"]:
        return mlflow["url"]
    if mlflow["public_url"]:
        return mlflow["public_url"].rstrip("/")
    return mlflow_proxy_url(site) + mlflow_service_prefix(site["hub"])


def _mlflow_proxy_service(site: Mapping, *, signing_key: str) -> dict:
    """The authenticating proxy (:mod:`werkbank_spawner.tracking.proxy`) as a managed service
    with a ``url`` (where it listens, :func:`mlflow_proxy_url`): the hub's proxy routes
    ``/services/mlflow/`` to it, the hub gives it its OAuth client and API token in the
    environment, and restarts it if it exits."""
    mlflow = site["tracking"]["mlflow"]
    return {
        "name": MLFLOW_SERVICE,
        "url": mlflow_proxy_url(site),
        "command": [
            sys.executable,
            "-m",
            "werkbank_spawner.tracking.proxy",
            "--upstream",
            mlflow["url"],
            *(["--permissions"] if signing_key else []),
        ],
        # Users are sent here from links and from the hub's Services menu; asking them to
        # authorize werkbank's own MLflow every time would teach them to click through.
        "oauth_no_confirm": True,
        "display": True,
        "environment": {KEY_ENV: signing_key} if signing_key else {},
        # `python -m` puts the working directory first on sys.path: never the hub's (it may be
        # a folder somebody else can write to).
        "cwd": "/",
    }


def _mlflow_service(mlflow: Mapping, data_dir: Path, *, prefix: str, signing_key: str) -> dict:
    """The managed ``mlflow server``. Behind the proxy (``proxy: true``) it serves under the
    proxy service's path, so that the proxy forwards requests unchanged; with a
    ``signing_key`` it runs MLflow's basic-auth app, which trusts the proxy's word on who is
    asking (:mod:`werkbank_spawner.tracking.auth`)."""
    state = _mlflow_dir(data_dir)
    backend = mlflow["backend_store_uri"] or f"sqlite:///{state / 'mlflow.db'}"
    artifacts = mlflow["artifacts_destination"] or str(state / "artifacts")
    host, port = mlflow["host"], mlflow["port"]
    # Host headers mlflow accepts (its DNS-rebinding guard): the bound address, the
    # loopback names, and the address jobs are given in tracking.mlflow.url.
    allowed = [_host_port(host, port), f"localhost:{port}", f"127.0.0.1:{port}"]
    url_host = urlsplit(mlflow["url"]).netloc.rpartition("@")[2]
    if url_host:
        allowed.append(url_host)
    prefix_args = ["--static-prefix", prefix] if mlflow["proxy"] else []
    auth_args = ["--app-name", "basic-auth"] if signing_key else []
    auth_env = mlflow_auth_env(_mlflow_auth_config_path(data_dir), signing_key) if signing_key else {}
    return {
        "name": MLFLOW_SERVER_SERVICE,
        "command": [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(port),
            "--artifacts-destination",
            artifacts,
            "--serve-artifacts",
            "--workers",
            str(mlflow["workers"]),
            "--allowed-hosts",
            ",".join(dict.fromkeys(allowed)),
            *prefix_args,
            *auth_args,
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
            **auth_env,
        },
    }


# --- the reference, as commented YAML ----------------------------------------------------


def render_defaults() -> str:
    """Every key with its default, under its help text as comments; loads as :func:`defaults`."""
    lines = [
        "# werkbank site configuration: every key with its default value.",
        "# Generated by `werkbank-site defaults`. A site file needs only the keys it changes;",
        "# unknown keys are errors. Check a file with `werkbank-site check FILE`.",
    ]
    for key, node in SCHEMA.keys.items():
        lines.append("")
        _render(key, node, 0, lines)
    return "\n".join(lines) + "\n"


def _comment(text: str, indent: int, lines: list[str], hang: int = 0) -> None:
    pad = " " * indent
    for line in textwrap.wrap(text, width=92 - indent, subsequent_indent=" " * hang):
        lines.append(f"{pad}# {line}")


def _render(key: str, node: Key | Section | Entries, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(node, Section):
        _comment(node.help, indent, lines)
        lines.append(f"{pad}{key}:")
        for sub_key, sub in node.keys.items():
            _render(sub_key, sub, indent + 2, lines)
    elif isinstance(node, Entries):
        _comment(node.help, indent, lines)
        _comment("Each entry may have:", indent, lines)
        for item_key, item in node.item.keys.items():
            default = item.default if isinstance(item.default, _Marker) else f"default {_flow(item.default)}"
            _comment(f"  {item_key} ({default}): {_describe(item)}", indent, lines, hang=4)
        lines.append(f"{pad}# For example:")
        lines.extend(f"{pad}#   {line}" for line in node.example.splitlines())
        lines.append(f"{pad}{key}: {_flow(node.default)}")
    else:
        _comment(_describe(node), indent, lines)
        lines.append(f"{pad}{key}: {_flow(node.default)}")


def _describe(key: Key) -> str:
    text = key.help
    if key.choices:
        text += f" One of: {', '.join(key.choices)}."
    if key.minimum is not None and key.maximum is not None:
        text += f" From {key.minimum:g} to {key.maximum:g}."
    elif key.minimum is not None:
        text += f" At least {key.minimum:g}."
    return text


def _flow(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``werkbank-site check FILE`` | ``werkbank-site defaults``. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="werkbank-site", description="Check werkbank's site file or print its reference."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a site file without starting anything")
    check.add_argument("file", help="the site file, e.g. hub_config/site.yaml")
    commands.add_parser("defaults", help="print every key, its default and meaning as YAML")
    args = parser.parse_args(argv)

    if args.command == "defaults":
        sys.stdout.write(render_defaults())
        return 0
    try:
        site = validate(load(args.file))
        apply(Config(), site, config_dir=Path(args.file).resolve().parent)
    except SiteConfigError as e:
        print(f"FATAL: {e}", file=sys.stderr)
        return 1
    if site["hub"]["spawner"] == "local":
        print(
            "note: hub.spawner is local: servers run as processes on the hub machine, not as Slurm jobs",
            file=sys.stderr,
        )
    print(f"ok: {args.file}")
    return 0
