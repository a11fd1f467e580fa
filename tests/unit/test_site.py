"""The site file (werkbank_spawner.site): schema, loading, validation, application to a Config,
CLI, hub config."""

from __future__ import annotations

import configparser
import copy
import json
import os
import pwd
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest.mock import ANY

import pytest
import yaml
from pydantic import ValidationError
from traitlets.config import Config

from tests.certificates import make_certificates
from werkbank_core import centre as centre_info
from werkbank_core.policy import policy_from_dict
from werkbank_spawner import site as werkbank_site
from werkbank_spawner.site import (
    Site,
    SiteConfigError,
    apply,
    load,
    prepare_state,
    reference,
    rules,
    schema,
    services,
    validate,
)
from werkbank_spawner.site.apply import DEFAULT_SERVER_SCOPES
from werkbank_spawner.site.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO_SITE = REPO / "hub_config" / "site.yaml"
HUB_CONFIG = REPO / "hub_config" / "jupyterhub_config.py"


def minimal() -> dict:
    """The smallest valid site: one profile in one allowed partition."""
    return {
        "profiles": [{"name": "cpu", "partition": "cpu"}],
        "limits": {"default": {"partitions": ["cpu"]}},
    }


def with_value(site: dict, path: str, value: object) -> dict:
    """A copy of ``site`` with the key at ``path`` (``a.b``, ``profiles[0].gpus``) set."""
    site = copy.deepcopy(site)
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node = site
    for part in parts[:-1]:
        if isinstance(part, str):
            node = node.setdefault(part, {})
        else:
            node = node[part]
    node[parts[-1]] = value
    return site


MLFLOW_ACCOUNT = pwd.struct_passwd(
    ("werkbank-mlflow", "x", 990, 990, "", "/nonexistent", "/usr/sbin/nologin")
)


@pytest.fixture(autouse=True)
def accounts(monkeypatch) -> dict[str, pwd.struct_passwd | None]:
    """As a hub running as root on a machine with MLflow's service account (uid 990), whoever
    runs the tests; tests add or replace accounts in the returned mapping."""
    monkeypatch.setattr(services, "running_as_root", lambda: True)
    known = {"werkbank-mlflow": MLFLOW_ACCOUNT}
    real = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name not in known:
            return real(name)
        if known[name] is None:  # a test removed it
            raise KeyError(name)
        return known[name]

    monkeypatch.setattr(services.pwd, "getpwnam", getpwnam)
    return known


def error_of(site: object) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        validate(site)
    return info.value


# --- the demo site and defaults ----------------------------------------------------------


def test_demo_site_validates():
    site = validate(load(DEMO_SITE))
    assert site.auth.type == "shared-password"
    assert site.auth.allowed_users == ("demo",)
    assert [p.name for p in site.profiles] == ["cpu", "gpu1", "fullnode"]
    assert site.limits.groups["workshop"].model_dump(exclude_none=True) == {"gpus": 1, "walltime": "2h"}
    policy = policy_from_dict(site.policy_config())
    assert policy.limits_for(["workshop"]).gpus == 1
    assert policy.limits_for([]).memory_mb == 64 * 1024


def test_missing_keys_take_their_defaults():
    site = validate(minimal())
    assert site.hub.bind_url == "http://127.0.0.1:8000"
    assert site.hub.spawner == "slurm"
    assert site.auth.oauth.scope == ("openid", "profile")
    assert site.slurm.poll_interval == 2.0
    assert site.tracking.mlflow.manage is True
    assert site.culling.model_dump() == {"enabled": True, "timeout": 3600, "every": 300}
    assert site.limits.default.gpus == 0
    assert site.limits.groups == {}
    assert site.profiles[0].memory == "2G"


def test_a_section_with_every_key_commented_out_is_the_defaults():
    site = validate({**minimal(), "hub": None})
    assert site.hub == werkbank_site.defaults().hub


def test_a_site_cannot_be_changed_and_validation_changes_nothing():
    given = minimal()
    given_copy = copy.deepcopy(given)
    site = validate(given)
    with pytest.raises(ValidationError, match="frozen"):
        site.hub.bind_url = "http://0.0.0.0:80"
    with pytest.raises(ValidationError, match="frozen"):
        site.profiles[0].gpus = 8
    with pytest.raises(AttributeError):
        site.limits.default.partitions.append("gpu")  # a tuple
    assert given == given_copy
    # What is handed on (the spawners' policy) is new on every call.
    config = site.policy_config()
    config["profiles"][0]["gpus"] = 8
    config["custom_fields"].append("gpus")
    assert site.policy_config() == validate(minimal()).policy_config()
    assert werkbank_site.defaults() == werkbank_site.defaults()
    assert werkbank_site.defaults().auth.oauth.scope == ("openid", "profile")


def test_int_for_a_float_setting_is_converted():
    site = validate(with_value(minimal(), "slurm.poll_interval", 3))
    assert site.slurm.poll_interval == 3.0
    assert isinstance(site.slurm.poll_interval, float)


def test_documented_profile_defaults_are_the_policys():
    documented = {
        key: list(info.default) if isinstance(info.default, tuple) else info.default
        for key, info in schema.Profile.model_fields.items()
        if not info.is_required()
    }
    bare = minimal()
    explicit = with_value(bare, "profiles[0]", {**bare["profiles"][0], **documented})
    assert policy_from_dict(explicit) == policy_from_dict(bare)


def test_documented_default_limits_are_the_policys():
    filled = policy_from_dict(validate(minimal()).policy_config())
    bare = policy_from_dict(minimal())
    assert filled == bare


def test_a_groups_absent_limits_stay_absent_for_the_policy():
    """Inherited from limits.default, not filled with the most restrictive values."""
    site = with_value(minimal(), "limits.default", {"partitions": ["cpu"], "gpus": 4, "memory": "64G"})
    site = with_value(site, "limits.groups", {"workshop": {"walltime": "2h"}})
    config = validate(site).policy_config()
    assert config["limits"]["groups"] == {"workshop": {"walltime": "2h"}}
    workshop = policy_from_dict(config).limits_for(["workshop"])
    assert (workshop.gpus, workshop.memory_mb, workshop.walltime_min) == (4, 64 * 1024, 120)


# --- unknown keys and types ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "hubb",
        "hub.bindurl",
        "auth.oauth.clientid",
        "tracking.mlflow.prot",
        "profiles[0].gpu",
        "limits.default.gpu",
        "limits.groups.workshop.walltim",
        "centre.helpurl",
        "centre.storage.archive",
        "centre.storage.home.pth",
    ],
)
def test_unknown_key_is_an_error_naming_its_path(path):
    error = error_of(with_value(minimal(), path, 1))
    assert error.path == path
    assert "unknown key" in error.message
    assert str(error).startswith(f"{path}: unknown key")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("hub", [], "expected a mapping"),
        ("hub.bind_url", 8000, "expected a string"),
        ("hub.admin_users", "alice", "expected a list"),
        ("hub.admin_users", ["alice", 7], "expected a string"),
        ("hub.spawner", "kubernetes", "not one of: slurm, local"),
        ("auth.allow_all", "yes please", "expected true or false"),
        ("auth.type", "ldap", "not one of"),
        ("slurm.poll_interval", "fast", "expected a number"),
        ("slurm.poll_interval", True, "expected a number"),
        ("slurm.poll_interval", 0.1, "below the minimum 0.5"),
        ("slurm.poll_interval", float("nan"), "finite"),
        ("slurm.start_timeout", 1.5, "expected a whole number"),
        ("tracking.mlflow.port", 70000, "above the maximum 65535"),
        ("culling.timeout", 10, "below the minimum"),
        ("profiles", {"name": "cpu"}, "expected a list"),
        ("profiles[0]", "cpu", "expected a mapping"),
        ("profiles[0].groups", "staff", "expected a list"),
        ("limits.groups", ["workshop"], "expected a mapping of names"),
        ("centre.name", 7, "expected a string"),
        ("centre.storage.scratch.backed_up", "no", "expected true or false"),
    ],
)
def test_wrong_type_is_an_error_naming_its_path(path, value, message):
    error = error_of(with_value(minimal(), path, value))
    expected_path = "hub.admin_users[1]" if value == ["alice", 7] else path
    assert error.path == expected_path
    assert message in error.message


def test_site_that_is_not_a_mapping_is_an_error():
    assert error_of(["hub"]).path == "(top level)"


def test_a_required_profile_key_is_reported():
    error = error_of(with_value(minimal(), "profiles[0]", {"name": "cpu"}))
    assert (error.path, error.message) == ("profiles[0].partition", "required")


# --- profiles, custom fields, limits (through the policy) ---------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("profiles[0].gpus", -1),
        ("profiles[0].memory", "12Q"),
        ("profiles[0].partition", "gpu nodes"),
        ("profiles[0].walltime", "forever"),
        ("profiles[0].name", "CPU Large"),
        ("limits.default.memory", "lots"),
        ("limits.groups.workshop.gpus", "one"),
        ("custom_fields", ["gpus", "colour"]),
    ],
)
def test_bad_policy_value_is_reported_at_its_site_path(path, value):
    error = error_of(with_value(minimal(), path, value))
    assert error.path == path


def test_second_profile_error_names_its_index():
    site = minimal()
    site["profiles"].append({"name": "gpu", "partition": "cpu", "gpus": "x"})
    assert error_of(site).path == "profiles[1].gpus"


def test_duplicate_profile_names_are_refused():
    site = minimal()
    site["profiles"].append({"name": "cpu", "partition": "cpu"})
    error = error_of(site)
    assert error.path == "profiles"
    assert "twice" in error.message


def test_no_profiles_are_refused():
    assert error_of(with_value(minimal(), "profiles", [])).path == "profiles"


def test_default_partitions_must_not_be_empty():
    site = with_value(minimal(), "limits.default.partitions", [])
    site["limits"]["groups"] = {"staff": {"partitions": ["cpu"]}}
    assert error_of(site).path == "limits.default.partitions"


def test_profile_partition_must_be_allowed_somewhere():
    site = minimal()
    site["profiles"].append({"name": "gpu", "partition": "gpu"})
    error = error_of(site)
    assert error.path == "profiles[1].partition"
    assert "'gpu'" in error.message


def test_profile_partition_allowed_by_a_group_only_is_fine():
    site = minimal()
    site["profiles"].append({"name": "gpu", "partition": "gpu", "groups": ["gpu-users"]})
    site["limits"]["groups"] = {"gpu-users": {"partitions": ["cpu", "gpu"], "gpus": 1}}
    valid = validate(site)
    assert [(p.name, p.partition) for p in valid.profiles] == [("cpu", "cpu"), ("gpu", "gpu")]
    # Usable by the group it is offered to, which may use the partition; offered to nobody else.
    policy = policy_from_dict(valid.policy_config())
    request = policy.validate({"profile": "gpu"}, ["gpu-users"])
    assert (request.profile, request.partition, request.gpus) == ("gpu", "gpu", 0)
    assert [p.name for p in policy.profiles_for([])] == ["cpu"]


def test_a_group_with_no_keys_inherits_everything():
    site = with_value(minimal(), "limits.groups", {"staff": None})
    groups = validate(site).policy_config()["limits"]["groups"]
    assert groups == {"staff": {}}


# --- authentication ------------------------------------------------------------------------


def shared(bind_url: str, password: str = "werkbank-demo") -> dict:
    site = with_value(minimal(), "auth", {"type": "shared-password", "shared_password": password})
    return with_value(site, "hub.bind_url", bind_url)


@pytest.mark.parametrize(
    "bind_url",
    ["http://0.0.0.0:8000", "http://:8000", "http://hub.example.org", "http://10.0.0.5:8000"],
)
def test_shared_password_is_refused_beyond_loopback(bind_url):
    error = error_of(shared(bind_url))
    assert error.path == "auth.type"
    assert "loopback" in error.message


@pytest.mark.parametrize(
    "bind_url", ["http://127.0.0.1:8000", "http://127.0.0.2:8000", "http://localhost:8000/x/"]
)
def test_shared_password_is_allowed_on_loopback(bind_url):
    assert validate(shared(bind_url)).auth.shared_password == "werkbank-demo"


def test_shared_password_on_ipv6_loopback():
    site = validate(shared("http://[::1]:8000"))
    assert (site.auth.type, site.hub.bind_url) == ("shared-password", "http://[::1]:8000")
    # Whereas IPv6's every-interface address is refused like 0.0.0.0.
    error = error_of(shared("http://[::]:8000"))
    assert error.path == "auth.type"
    assert "listens on ::, which is not a loopback address" in error.message


@pytest.mark.parametrize("hub_bind_url", ["http://0.0.0.0:8081", "http://10.0.0.5:8081", "http://:8081"])
def test_shared_password_is_refused_when_the_hub_api_listens_beyond_loopback(hub_bind_url):
    """Jobs on compute nodes reach the hub API; so would anyone else there, with one password
    for every account."""
    error = error_of(with_value(shared("http://127.0.0.1:8000"), "hub.hub_bind_url", hub_bind_url))
    assert error.path == "auth.type"
    assert "hub.hub_bind_url" in error.message and "loopback" in error.message
    assert validate(with_value(shared("http://127.0.0.1:8000"), "hub.hub_bind_url", "http://127.0.0.1:9081"))


def test_short_shared_password_is_refused():
    error = error_of(shared("http://127.0.0.1:8000", password="short"))
    assert error.path == "auth.shared_password"
    assert "at least 8" in error.message


def test_unused_shared_password_is_refused():
    site = with_value(minimal(), "auth.shared_password", "werkbank-demo")
    error = error_of(site)
    assert error.path == "auth.shared_password"
    assert "type is pam" in error.message


OAUTH = {
    "client_id": "werkbank",
    "client_secret": "s3cret",
    "authorize_url": "https://idp.example.org/auth",
    "token_url": "https://idp.example.org/token",
    "userdata_url": "https://idp.example.org/userinfo",
}


def test_oauth_without_client_id_is_refused():
    oauth = {k: v for k, v in OAUTH.items() if k != "client_id"}
    site = with_value(minimal(), "auth", {"type": "oauth", "oauth": oauth})
    error = error_of(site)
    assert error.path == "auth.oauth.client_id"
    assert "required" in error.message


def test_oauth_url_must_be_a_url():
    oauth = {**OAUTH, "token_url": "idp.example.org/token"}
    site = with_value(minimal(), "auth", {"type": "oauth", "oauth": oauth})
    assert error_of(site).path == "auth.oauth.token_url"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("hub.bind_url", "127.0.0.1:8000"),
        ("hub.hub_bind_url", "http://x:port"),
        ("tracking.mlflow.url", "mlflow:5000"),
    ],
)
def test_urls_are_checked(path, value):
    assert error_of(with_value(minimal(), path, value)).path == path


# --- apply ---------------------------------------------------------------------------------


def applied(site: dict | Site, config_dir: Path = Path("/etc/werkbank")) -> Config:
    c = Config()
    apply(c, site if isinstance(site, Site) else validate(site), config_dir=config_dir)
    return c


def prepared(site: dict, *, config_dir: str) -> None:
    prepare_state(validate(site), config_dir=config_dir)


def test_apply_demo_site(tmp_path):
    site = validate(load(DEMO_SITE))
    c = applied(site)
    assert c.JupyterHub.spawner_class == "werkbank_spawner.spawner.WerkbankSlurmSpawner"
    # The demo's shared password, with course logins beside it (workshops).
    assert c.JupyterHub.authenticator_class == (
        "werkbank_spawner.workshop.logins.CourseSharedPasswordAuthenticator"
    )
    assert c.SharedPasswordAuthenticator.user_password == "werkbank-demo"
    assert c.Authenticator.allowed_users == {"demo"}
    assert c.Authenticator.admin_users == set()
    assert c.Authenticator.allow_all is False
    assert c.JupyterHub.cleanup_servers is False
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8001"
    assert "hub_bind_url" not in c.JupyterHub
    assert c.JupyterHub.db_url == "sqlite:////var/lib/werkbank/hub/jupyterhub.sqlite"
    assert c.JupyterHub.cookie_secret_file == "/var/lib/werkbank/hub/jupyterhub_cookie_secret"
    assert c.ConfigurableHTTPProxy.pid_file == "/var/lib/werkbank/hub/proxy.pid"
    assert c.Spawner.poll_interval == 5

    spawner = c.WerkbankSlurmSpawner
    assert spawner.policy_config == site.policy_config()
    assert spawner.policy_config["profiles"][1]["name"] == "gpu1"
    assert spawner.policy_config["limits"]["groups"] == {"workshop": {"gpus": 1, "walltime": "2h"}}
    # Jobs reach MLflow through the hub's authenticating proxy service, with their own token,
    # where they reach the hub API (not through the hub's public proxy).
    assert spawner.mlflow_tracking_uri == "http://127.0.0.1:5001/services/mlflow"
    assert spawner.mlflow_send_token is True
    assert spawner.queue_poll_interval == 2.0
    assert spawner.unreachable_grace == 600
    assert spawner.start_timeout == 300
    assert spawner.slurm_conf == ""
    assert spawner.slurm_bin_dir == "/usr/bin"
    assert spawner.job_prologue == ""
    assert spawner.idle_timeout == c.WerkbankLocalSpawner.idle_timeout == 3600  # the culler's timeout
    assert c.WerkbankLocalSpawner.policy_config == spawner.policy_config
    assert c.WerkbankLocalSpawner.mlflow_tracking_uri == "http://127.0.0.1:5001/services/mlflow"
    assert c.WerkbankLocalSpawner.mlflow_send_token is True

    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"mlflow-server", "mlflow", "idle-culler", "werkbank-workshop"}
    # Only the proxy has a url (the hub's proxy routes /services/mlflow/ to it); the MLflow
    # server is reached through it alone.
    assert [name for name, s in services.items() if "url" in s] == ["mlflow"]
    proxy = services["mlflow"]
    assert proxy["url"] == "http://127.0.0.1:5001"
    assert proxy["command"] == [
        sys.executable,
        "-m",
        "werkbank_spawner.tracking.proxy",
        "--upstream",
        "http://127.0.0.1:5000",
        "--permissions",
    ]
    assert proxy["oauth_no_confirm"] is True
    # MLflow checks permissions (its basic-auth app), trusting assertions the proxy signs with a
    # key that the hub writes into both services' secrets files at its start: never into their
    # environment (JupyterHub keeps it in its database), never onto a command line.
    secret = c.WerkbankSlurmSpawner.mlflow_signing_key
    assert len(secret) >= 32
    server_env = services["mlflow-server"]["environment"]
    for name in ("mlflow-server", "mlflow"):  # MLflow's usage telemetry is off in both
        environment = services[name]["environment"]
        assert (environment["MLFLOW_DISABLE_TELEMETRY"], environment["DO_NOT_TRACK"]) == ("true", "true")
        assert (
            environment["WERKBANK_MLFLOW_SECRETS"] == f"/var/lib/werkbank/service-secrets/{name}/secrets.json"
        )
        assert secret not in repr(environment)
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"] == "/var/lib/werkbank/mlflow/auth.ini"
    assert not any(secret in arg for s in services.values() for arg in s.get("command", []))
    # The server starts through the launcher that sets MLflow's own secrets from its file.
    mlflow = services["mlflow-server"]["command"]
    launcher = [sys.executable, "-I", "-m", "werkbank_spawner.tracking.server_launcher"]
    assert mlflow[: mlflow.index("--")] == [*launcher, server_env["WERKBANK_MLFLOW_SECRETS"]]
    mlflow = mlflow[mlflow.index("--") + 1 :]
    assert mlflow[0] == str(Path(sys.executable).parent / "mlflow")
    assert mlflow[1] == "server"
    flags = dict(zip(mlflow[2::2], mlflow[3::2], strict=False))
    assert flags["--host"] == "127.0.0.1"
    assert flags["--port"] == "5000"
    assert "--backend-store-uri" not in flags  # from the environment: a password must not show in ps
    assert services["mlflow-server"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == (
        "sqlite:////var/lib/werkbank/mlflow/mlflow.db"
    )
    assert flags["--artifacts-destination"] == "/var/lib/werkbank/mlflow/artifacts"
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--workers") + 1] == "1"
    allowed = mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert allowed == ["127.0.0.1:5000", "localhost:5000"]
    # Served under the proxy service's path, so that the proxy forwards paths unchanged.
    assert mlflow[mlflow.index("--static-prefix") + 1] == "/services/mlflow"
    assert mlflow[mlflow.index("--app-name") + 1] == "basic-auth"
    # Both parse every user's requests: they run as MLflow's own account, never as root, and
    # not from the hub's working directory (first on sys.path for `python -m` and uvicorn).
    assert services["mlflow-server"]["user"] == services["mlflow"]["user"] == "werkbank-mlflow"
    assert services["mlflow-server"]["cwd"] == "/var/lib/werkbank/mlflow"
    assert services["mlflow"]["cwd"] == "/"
    assert services["idle-culler"]["command"] == [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=3600",
        "--cull-every=300",
    ]
    # Users (browser logins) and their servers' tokens may use the proxy service.
    assert c.JupyterHub.extra_user_scopes == {"access:services!service=mlflow"}
    server_role, proxy_role, role, workshop_role = c.JupyterHub.load_roles
    assert server_role == {
        "name": "server",
        "scopes": ["users:activity!user", "access:servers!server", "access:services!service=mlflow"],
    }
    # The proxy reads who a shared dashboard's viewer is (their groups) for readable-experiments.
    assert proxy_role == {"name": "werkbank-mlflow-proxy", "services": ["mlflow"], "scopes": ["read:users"]}
    assert role["services"] == ["idle-culler"]
    assert set(role["scopes"]) == {
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    }
    # werkbank-workshop's token (new at every start, written for root alone by prepare_state).
    assert workshop_role["services"] == ["werkbank-workshop"] == [services["werkbank-workshop"]["name"]]
    assert "custom:werkbank:course-roles" in workshop_role["scopes"]
    assert set(services["werkbank-workshop"]) == {"name", "api_token"}
    store = "/var/lib/werkbank/workshops"
    assert c.WerkbankSlurmSpawner.workshops_dir == c.CourseLogins.workshops_dir == store


def test_apply_shares_nothing_with_the_site():
    site = validate(minimal())
    c = applied(site)
    c.WerkbankSlurmSpawner.policy_config["profiles"][0]["gpus"] = 4
    c.WerkbankLocalSpawner.policy_config["custom_fields"].append("gpus")
    assert site.profiles[0].gpus == 0
    assert site.custom_fields == ()
    assert "gpus" not in c.WerkbankSlurmSpawner.policy_config["custom_fields"]


def test_applying_twice_gives_the_same_config():
    site = validate(load(DEMO_SITE))
    once, twice = applied(site), applied(site)
    apply(twice, site, config_dir="/etc/werkbank")
    assert twice == once


def test_apply_sets_whole_lists_and_does_not_append():
    c = Config()
    c.JupyterHub.services = [{"name": "stale", "command": ["true"]}]
    c.JupyterHub.load_roles = [{"name": "stale", "scopes": ["admin:users"]}]
    c.JupyterHub.extra_user_scopes = {"admin:users"}
    apply(c, validate(with_value(minimal(), "tracking.mlflow.proxy", False)), config_dir="/")
    assert [s["name"] for s in c.JupyterHub.services] == ["mlflow-server", "idle-culler", "werkbank-workshop"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["idle-culler", "werkbank-workshop"]
    assert c.JupyterHub.extra_user_scopes == set()


def test_apply_without_services():
    site = with_value(minimal(), "tracking.mlflow.manage", False)
    site = with_value(site, "tracking.mlflow.proxy", False)
    site = with_value(site, "culling.enabled", False)
    site = with_value(site, "workshops.enabled", False)
    c = applied(site)
    assert c.JupyterHub.services == []
    assert c.JupyterHub.load_roles == []
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert c.WerkbankSlurmSpawner.mlflow_send_token is False
    assert c.WerkbankSlurmSpawner.idle_timeout == c.WerkbankLocalSpawner.idle_timeout == 0  # no culler


def test_apply_takes_only_a_validated_site():
    with pytest.raises(TypeError, match="validated Site"):
        apply(Config(), minimal(), config_dir="/")
    with pytest.raises(SiteConfigError, match=r"^hub\.spawner: "):
        applied(with_value(minimal(), "hub.spawner", "docker"))


def test_apply_subdomain_host():
    c = applied(with_value(minimal(), "hub.subdomain_host", "https://hub.example.org/"))
    assert c.JupyterHub.subdomain_host == "https://hub.example.org"
    assert "subdomain_host" not in applied(minimal()).JupyterHub
    for bad in ("hub.example.org", "https://hub.example.org/x"):
        assert error_of(with_value(minimal(), "hub.subdomain_host", bad)).path == "hub.subdomain_host"


def test_apply_min_uid_and_port_range():
    site = with_value(minimal(), "auth.min_uid", 5000)
    site = with_value(site, "slurm.port_range", [41000, 41999])
    c = applied(site)
    assert c.WerkbankSlurmSpawner.min_uid == c.WerkbankLocalSpawner.min_uid == 5000
    assert c.WerkbankSlurmSpawner.port_range == (41000, 41999)
    defaults = applied(minimal())
    assert defaults.WerkbankSlurmSpawner.min_uid == 1000
    assert defaults.WerkbankSlurmSpawner.port_range == (20000, 29999)


@pytest.mark.parametrize("ports", [[80, 9000], [30000, 20000], [20000], [20000, 70000], [1, 2, 3]])
def test_port_range_is_checked(ports):
    error = error_of(with_value(minimal(), "slurm.port_range", ports))
    assert error.path == "slurm.port_range"


def test_min_uid_is_checked():
    assert error_of(with_value(minimal(), "auth.min_uid", 0)).path == "auth.min_uid"


def test_apply_local_spawner_pam_and_hub_bind_url():
    site = with_value(minimal(), "hub.spawner", "local")
    site = with_value(site, "hub.hub_bind_url", "http://10.1.2.3:8081")
    site = with_value(site, "hub.admin_users", ["root"])
    site = with_value(site, "auth.allow_all", True)
    c = applied(site)
    assert c.JupyterHub.spawner_class == "werkbank_spawner.spawner.WerkbankLocalSpawner"
    assert c.JupyterHub.authenticator_class == "werkbank_spawner.workshop.logins.CoursePAMAuthenticator"
    assert c.JupyterHub.hub_bind_url == "http://10.1.2.3:8081"
    assert c.Authenticator.admin_users == {"root"}
    assert c.Authenticator.allow_all is True
    assert "SharedPasswordAuthenticator" not in c


def test_apply_oauth():
    oauth = {**OAUTH, "callback_url": "https://hub.example.org/hub/oauth_callback"}
    site = with_value(minimal(), "auth", {"type": "oauth", "oauth": oauth})
    c = applied(site)
    assert c.JupyterHub.authenticator_class == "werkbank_spawner.oidc.WerkbankOAuthenticator"
    generic = c.GenericOAuthenticator
    for key, value in OAUTH.items():
        assert generic[key] == value
    assert generic.username_claim == "preferred_username"
    assert generic.scope == ["openid", "profile"]
    assert generic.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"


def test_apply_resolves_relative_paths_against_the_config_dir(tmp_path):
    site = with_value(minimal(), "hub.data_dir", "state/hub")
    site = with_value(site, "slurm.conf", "slurm/slurm.conf")
    c = applied(site, config_dir=tmp_path)
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path}/state/hub/jupyterhub.sqlite"
    assert c.WerkbankSlurmSpawner.slurm_conf == f"{tmp_path}/slurm/slurm.conf"
    environment = c.JupyterHub.services[0]["environment"]
    assert environment["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path}/state/mlflow/mlflow.db"


def test_apply_mlflow_settings_without_the_proxy(database_drivers):
    site = with_value(
        minimal(),
        "tracking.mlflow",
        {
            "proxy": False,
            "url": "http://hub.cluster:5001",
            "host": "0.0.0.0",
            "port": 5001,
            "backend_store_uri": "postgresql://mlflow@db/mlflow",
            "artifacts_destination": "s3://bucket/mlflow",
            "workers": 4,
        },
    )
    c = applied(site)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "mlflow-server"]
    mlflow = service["command"]
    assert service["environment"]["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow@db/mlflow"
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert mlflow[mlflow.index("--workers") + 1] == "4"
    allowed = mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert allowed == ["0.0.0.0:5001", "localhost:5001", "127.0.0.1:5001", "hub.cluster:5001"]
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://hub.cluster:5001"
    # A bare MLflow server must never see the servers' hub tokens.
    assert c.WerkbankSlurmSpawner.mlflow_send_token is False
    assert "--static-prefix" not in mlflow
    assert [s["name"] for s in c.JupyterHub.services] == ["mlflow-server", "idle-culler", "werkbank-workshop"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["idle-culler", "werkbank-workshop"]


@pytest.fixture
def database_drivers(monkeypatch):
    """PostgreSQL drivers count as installed (psycopg2 is not in the test environment)."""
    real = rules.importlib.util.find_spec
    monkeypatch.setattr(
        rules.importlib.util,
        "find_spec",
        lambda name, *a: object() if name in ("psycopg2", "psycopg") else real(name, *a),
    )


def test_apply_mlflow_behind_the_proxy(database_drivers):
    site = with_value(
        minimal(),
        "tracking.mlflow",
        {
            "public_url": "https://hub.example.org/services/mlflow/",
            "url": "http://localhost:5100",
            "port": 5100,
            "proxy_port": 5300,
            "backend_store_uri": "postgresql://mlflow@db.cluster/mlflow",
            "artifacts_destination": "/shared/mlflow/artifacts",
        },
    )
    c = applied(site)
    services = {s["name"]: s for s in c.JupyterHub.services}
    server = services["mlflow-server"]["command"]
    assert server[server.index("--host") + 1] == "127.0.0.1"
    assert server[server.index("--port") + 1] == "5100"
    environment = services["mlflow-server"]["environment"]
    assert environment["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow@db.cluster/mlflow"
    assert server[server.index("--static-prefix") + 1] == "/services/mlflow"
    assert services["mlflow"]["url"] == "http://127.0.0.1:5300"
    assert services["mlflow"]["command"][-3:] == ["--upstream", "http://localhost:5100", "--permissions"]
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "https://hub.example.org/services/mlflow"
    # The hub itself creates <user>/default on the server, with the key MLflow trusts.
    assert c.WerkbankSlurmSpawner.mlflow_server_url == "http://localhost:5100/services/mlflow"
    key = c.WerkbankLocalSpawner.mlflow_signing_key
    assert key == c.WerkbankSlurmSpawner.mlflow_signing_key
    assert len(key) >= 32 and key not in repr(environment)
    unchecked = applied(with_value(site, "tracking.mlflow.permissions", False))
    assert (
        unchecked.WerkbankSlurmSpawner.mlflow_server_url
        == unchecked.WerkbankSlurmSpawner.mlflow_signing_key
        == ""
    )


def test_mlflow_proxy_follows_the_hubs_base_url():
    site = with_value(minimal(), "hub.bind_url", "http://10.0.0.5:8000/jhub/")
    c = applied(site)
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://127.0.0.1:5001/jhub/services/mlflow"
    server = next(s["command"] for s in c.JupyterHub.services if s["name"] == "mlflow-server")
    assert server[server.index("--static-prefix") + 1] == "/jhub/services/mlflow"
    bad = with_value(site, "tracking.mlflow.public_url", "http://hub.cluster:8000/services/mlflow")
    assert error_of(bad).path == "tracking.mlflow.public_url"
    good = with_value(site, "tracking.mlflow.public_url", "http://hub.cluster:8000/jhub/services/mlflow")
    assert applied(good).WerkbankSlurmSpawner.mlflow_tracking_uri == good["tracking"]["mlflow"]["public_url"]


def test_mlflow_proxy_in_front_of_a_server_the_hub_does_not_manage():
    site = with_value(minimal(), "tracking.mlflow.manage", False)
    site = with_value(site, "tracking.mlflow.url", "http://mlflow.internal:5000")
    c = applied(site)
    assert [s["name"] for s in c.JupyterHub.services] == ["mlflow", "idle-culler", "werkbank-workshop"]
    assert c.JupyterHub.services[0]["command"][-1] == "http://mlflow.internal:5000"
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://127.0.0.1:5001/services/mlflow"


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"host": "0.0.0.0", "url": "http://0.0.0.0:5000"}, "tracking.mlflow.host", "not a loopback address"),
        ({"url": "http://hub.cluster:5000"}, "tracking.mlflow.url", "a loopback address with port 5000"),
        ({"url": "http://127.0.0.1:5002"}, "tracking.mlflow.url", "with port 5000"),
        ({"url": "http://127.0.0.1:5000/mlflow"}, "tracking.mlflow.url", "only scheme, host and port"),
        ({"public_url": "http://hub:8000/mlflow"}, "tracking.mlflow.public_url", "/services/mlflow"),
        ({"public_url": "hub:8000/services/mlflow"}, "tracking.mlflow.public_url", "http:// or https://"),
        ({"proxy": False, "public_url": "http://h/services/mlflow"}, "tracking.mlflow.public_url", "remove"),
        ({"proxy_port": 5000}, "tracking.mlflow.proxy_port", "the MLflow server's own port"),
        ({"proxy_port": 70000}, "tracking.mlflow.proxy_port", "above the maximum"),
        ({"proxy": "yes"}, "tracking.mlflow.proxy", "true or false"),
    ],
)
def test_mlflow_proxy_settings_are_checked(changes, path, words):
    site = with_value(minimal(), "tracking.mlflow", changes)
    error = error_of(site)
    assert error.path == path
    assert words in error.message


def test_jobs_reach_the_mlflow_proxy_where_they_reach_the_hub_api():
    site = with_value(minimal(), "hub.hub_bind_url", "http://10.0.0.5:8081")
    c = applied(site)
    proxy = next(s for s in c.JupyterHub.services if s["name"] == "mlflow")
    assert proxy["url"] == "http://10.0.0.5:5001"  # where it listens, and the hub's proxy routes to
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://10.0.0.5:5001/services/mlflow"
    # Through the hub's public proxy instead, if the site prefers one open port.
    site = with_value(site, "tracking.mlflow.public_url", "http://10.0.0.5:8000/services/mlflow")
    assert applied(site).WerkbankSlurmSpawner.mlflow_tracking_uri == "http://10.0.0.5:8000/services/mlflow"


@pytest.mark.parametrize("hub_bind_url", ["http://0.0.0.0:8081", "http://:8081", "http://[::]:8081"])
def test_a_hub_api_on_every_interface_needs_the_public_mlflow_url(hub_bind_url):
    site = with_value(minimal(), "hub.hub_bind_url", hub_bind_url)
    error = error_of(site)
    assert error.path == "tracking.mlflow.public_url"
    assert "every interface" in error.message
    assert "http://hub.cluster:5001/services/mlflow" in error.message
    site = with_value(site, "tracking.mlflow.public_url", "http://hub.cluster:5001/services/mlflow")
    c = applied(site)
    assert c.WerkbankSlurmSpawner.mlflow_tracking_uri == "http://hub.cluster:5001/services/mlflow"
    proxy = next(s for s in c.JupyterHub.services if s["name"] == "mlflow")
    assert proxy["url"].endswith(":5001")
    assert "127.0.0.1" not in proxy["url"]


def test_a_public_hub_needs_no_public_mlflow_url():
    # The public proxy on every interface is not where jobs reach MLflow.
    site = with_value(minimal(), "hub.bind_url", "http://0.0.0.0:8000")
    site = with_value(site, "auth.type", "pam")
    assert applied(site).WerkbankSlurmSpawner.mlflow_tracking_uri == "http://127.0.0.1:5001/services/mlflow"


def test_a_database_without_its_driver_stops_the_hub_at_start(monkeypatch):
    real = rules.importlib.util.find_spec
    monkeypatch.setattr(
        rules.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "psycopg" else real(name, *a),
    )
    site = with_value(minimal(), "tracking.mlflow.backend_store_uri", "postgresql://mlflow@db/mlflow")
    error = error_of(site)
    assert error.path == "tracking.mlflow.backend_store_uri"
    assert "psycopg (pip package psycopg[binary])" in error.message
    # The hub does not run a server it does not manage: nothing to check then.
    validate(with_value(site, "tracking.mlflow.manage", False))
    validate(with_value(minimal(), "tracking.mlflow.backend_store_uri", "sqlite:////srv/mlflow.db"))
    error = error_of(with_value(minimal(), "tracking.mlflow.auth_database_uri", "postgresql://db/auth"))
    assert error.path == "tracking.mlflow.auth_database_uri"


def test_the_server_role_keeps_jupyterhubs_default_scopes():
    from jupyterhub.roles import get_default_roles

    (default,) = [role for role in get_default_roles() if role["name"] == "server"]
    assert set(DEFAULT_SERVER_SCOPES) == set(default["scopes"])


def test_prepare_state_creates_private_state_folders(tmp_path):
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "werkbank" / "hub"))
    prepared(site, config_dir="/")
    for folder in (tmp_path / "werkbank" / "hub", tmp_path / "werkbank" / "mlflow"):
        assert folder.is_dir()
        assert folder.stat().st_mode & 0o777 == 0o700


def test_prepare_state_writes_mlflows_permission_config_privately(tmp_path):
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    site = with_value(site, "tracking.mlflow.auth_database_uri", "postgresql://mlflow@db/auth?options=-c%20x")
    prepared(site, config_dir="/")
    ini = tmp_path / "mlflow" / "auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600  # the service account's alone, as all of MLflow's folder
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert dict(parser["mlflow"]) == {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": "postgresql://mlflow@db/auth?options=-c%20x",  # % survives ini interpolation
        "admin_username": "service:mlflow",
        "authorization_function": "werkbank_spawner.tracking.auth:authenticate",
        "grant_default_workspace_access": "false",
    }
    prepared(with_value(site, "tracking.mlflow.auth_database_uri", ""), config_dir="/")
    parser.read(ini)
    assert parser["mlflow"]["database_uri"] == f"sqlite:///{tmp_path}/mlflow/auth.db"


def test_prepare_state_never_writes_through_a_link_planted_in_mlflows_folder(tmp_path):
    """MLflow's folder belongs to the service account, which parses every user's requests: a link
    it puts at auth.ini's name (to /etc/shadow, say) must be replaced, never followed by the hub,
    which runs as root and would truncate the target, write it and give it to that account."""
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    prepared(site, config_dir="/")
    victim = tmp_path / "victim"
    victim.write_text("root:secret-hash:19000::::::\n")
    victim.chmod(0o640)
    ini = tmp_path / "mlflow" / "auth.ini"
    ini.unlink()
    ini.symlink_to(victim)
    prepared(site, config_dir="/")
    assert victim.read_text() == "root:secret-hash:19000::::::\n" and victim.stat().st_mode & 0o777 == 0o640
    assert not ini.is_symlink() and "[mlflow]" in ini.read_text() and ini.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("key", "value"), [("permissions", False), ("proxy", False), ("manage", False)])
def test_mlflow_without_permission_checks(tmp_path, key, value):
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    site = with_value(site, f"tracking.mlflow.{key}", value)
    services = {s["name"]: s for s in applied(site).JupyterHub.services}
    for service in services.values():
        assert "--permissions" not in service.get("command", [])
        assert "--app-name" not in service.get("command", [])
        assert "WERKBANK_MLFLOW_SECRETS" not in service.get("environment", {})
    prepared(site, config_dir="/")
    assert not (tmp_path / "mlflow" / "auth.ini").exists()


@pytest.mark.parametrize(
    ("account", "words"),
    [
        (None, "no account 'werkbank-mlflow' on this machine; deploy/install.sh creates it"),
        (pwd.struct_passwd(("werkbank-mlflow", "x", 0, 0, "", "/root", "/bin/sh")), "is root (uid 0)"),
        (
            pwd.struct_passwd(("werkbank-mlflow", "x", 1000, 1000, "", "/home/x", "/bin/sh")),
            "may start servers",
        ),
    ],
)
def test_mlflow_never_runs_as_root_or_as_a_user(accounts, account, words):
    accounts["werkbank-mlflow"] = account
    with pytest.raises(SiteConfigError, match=r"^tracking\.mlflow\.service_user: ") as info:
        applied(minimal())
    assert words in str(info.value)
    assert error_of(with_value(minimal(), "tracking.mlflow.service_user", " ")).path == (
        "tracking.mlflow.service_user"
    )


def test_another_service_account(accounts):
    accounts["mlflow"] = pwd.struct_passwd(("mlflow", "x", 123, 123, "", "/", "/bin/false"))
    services = applied(with_value(minimal(), "tracking.mlflow.service_user", "mlflow")).JupyterHub.services
    assert {s["name"]: s.get("user") for s in services} == {
        "mlflow-server": "mlflow",
        "mlflow": "mlflow",
        "idle-culler": None,
        "werkbank-workshop": None,
    }


def test_a_hub_that_is_not_root_runs_mlflow_as_itself(monkeypatch, accounts, tmp_path):
    monkeypatch.setattr(services, "running_as_root", lambda: False)
    accounts["werkbank-mlflow"] = None  # not needed: JupyterHub could not switch to it anyway
    assert not any("user" in s for s in applied(minimal()).JupyterHub.services)
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    prepared(site, config_dir="/")
    assert (tmp_path / "mlflow").stat().st_uid == os.geteuid()


def test_prepare_state_gives_mlflows_folder_to_its_account(tmp_path):
    # A site whose MLflow ran as root before: its stores become the account's, links are
    # not followed out of the folder.
    outside = tmp_path / "outside"
    outside.write_text("")
    (tmp_path / "mlflow" / "artifacts" / "1").mkdir(parents=True)
    (tmp_path / "mlflow" / "mlflow.db").write_text("")
    (tmp_path / "mlflow" / "link").symlink_to(outside)
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    prepared(site, config_dir="/")
    mine = MLFLOW_ACCOUNT.pw_uid
    for path in ("mlflow", "mlflow/artifacts", "mlflow/artifacts/1", "mlflow/mlflow.db", "mlflow/auth.ini"):
        assert (tmp_path / path).stat().st_uid == mine, path
    assert (tmp_path / "mlflow" / "link").lstat().st_uid == mine
    assert outside.stat().st_uid == os.geteuid()
    assert (tmp_path / "hub").stat().st_uid == os.geteuid()  # the hub's own state stays the hub's


def test_prepare_state_reports_what_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("")
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "file" / "hub"))
    with pytest.raises(SiteConfigError, match=r"^hub\.data_dir: cannot create "):
        prepared(site, config_dir="/")


# --- the centre: what the first-hour template tells clients ---------------------------------


def test_the_centres_defaults_are_what_a_session_without_the_site_file_shows():
    """One source for both: werkbank_core.centre.DEFAULTS (the session's side needs no hub package)."""
    assert validate(minimal()).centre.model_dump(mode="json") == centre_info.DEFAULTS
    demo = validate(load(DEMO_SITE)).centre
    assert demo == validate(minimal()).centre  # the demo site shows the keys with their defaults
    assert (demo.name, demo.storage.home.path, demo.storage.scratch.path) == (
        "AI Factory (demo)",
        "~",
        "/tmp",
    )
    assert (demo.storage.home.backed_up, demo.storage.scratch.backed_up, demo.storage.project.path) == (
        True,
        False,
        "",
    )


def test_a_storage_area_keeps_the_defaults_it_does_not_name():
    given = {"path": "/project/$USER", "quota": "5 TB per project"}
    centre = validate(with_value(minimal(), "centre.storage.project", given)).centre
    project = centre.storage.project
    assert (project.path, project.quota, project.backed_up) == ("/project/$USER", "5 TB per project", True)
    assert project.purpose == centre_info.DEFAULTS["storage"]["project"]["purpose"]
    assert centre.storage.scratch == werkbank_site.defaults().centre.storage.scratch


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("centre.name", " ", "must not be empty"),
        ("centre.help_url", "support.example.eu", "expected an http:// or https:// URL"),
        ("centre.storage.home.path", "", "every session has a home folder"),
        ("centre.storage.project.path", "projects/acme", "expected an absolute path, or one starting with ~"),
        ("centre.storage.scratch.path", "scratch", "expected an absolute path"),
    ],
)
def test_the_centres_keys_are_checked(path, value, words):
    error = error_of(with_value(minimal(), path, value))
    assert error.path == path
    assert words in error.message


@pytest.mark.parametrize("path", ["/project/acme", "~/work", "$PROJECT/acme", ""])
def test_storage_paths_may_be_absolute_start_with_home_or_name_variables(path):
    assert (
        validate(with_value(minimal(), "centre.storage.project.path", path)).centre.storage.project.path
        == path
    )


def test_sessions_of_both_spawners_get_the_centre_the_site_file_describes():
    from types import SimpleNamespace

    from werkbank_spawner.spawner import WerkbankLocalSpawner, WerkbankSlurmSpawner

    centre = {
        "name": "Example AI Factory",
        "help": "ai-support@example.eu",
        "help_url": "https://support.example.eu/ai",
        "storage": {"project": {"path": "/project/$USER", "quota": "5 TB"}, "scratch": {"backed_up": False}},
    }
    site = validate(with_value(minimal(), "centre", centre))
    c = applied(site)
    hub = SimpleNamespace(public_host="", api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/")
    for cls in (WerkbankSlurmSpawner, WerkbankLocalSpawner):
        assert c[cls.__name__].centre == site.centre.model_dump(mode="json")
        user = SimpleNamespace(name="alice", groups=[], url="/user/alice/", escaped_name="alice")
        env = cls(user=user, hub=hub, config=c).get_env()
        assert json.loads(env["WERKBANK_CENTRE"]) == site.centre.model_dump(mode="json"), cls
        # What the session reads (werkbank_core.centre) is what the site file says.
        seen = centre_info.from_environ(env)
        assert (seen.name, seen.help, seen.help_url, seen.source) == (
            "Example AI Factory",
            "ai-support@example.eu",
            "https://support.example.eu/ai",
            "the site file",
        )
        assert (seen.area("project").path, seen.area("project").quota) == ("/project/$USER", "5 TB")
        assert seen.area("home") == centre_info.from_environ({}).area("home")
    # A spawner configured without a site file gives no WERKBANK_CENTRE: the session shows the defaults.
    assert "WERKBANK_CENTRE" not in WerkbankLocalSpawner().session_env()


def test_a_session_reads_the_centre_with_defaults_for_what_is_missing_or_unreadable():
    absent = centre_info.from_environ({})
    assert absent.source == "defaults (WERKBANK_CENTRE is not set)"
    assert (absent.name, absent.help) == ("AI Factory (demo)", "your trainer or the centre's support")
    assert [area.name for area in absent.storage] == list(centre_info.STORAGE_AREAS)
    assert [area.path for area in absent.storage] == ["~", "", "/tmp"]
    assert centre_info.from_environ({"WERKBANK_CENTRE": "{not json"}).source.startswith(
        "defaults (WERKBANK_CENTRE cannot be read:"
    )
    listed = centre_info.from_environ({"WERKBANK_CENTRE": "[1, 2]"})
    assert (listed.source, listed.name) == (
        "defaults (WERKBANK_CENTRE is not a JSON object)",
        "AI Factory (demo)",
    )
    # Values of the wrong type and unknown keys are left out; the rest is taken.
    given = {
        "name": "X",
        "help_url": 7,
        "storage": {"home": "oops", "project": {"path": "/p", "backed_up": 1}},
    }
    partial = centre_info.from_environ({"WERKBANK_CENTRE": json.dumps({**given, "colour": "blue"})})
    assert (partial.source, partial.name, partial.help_url) == ("the site file", "X", "")
    assert (partial.area("project").path, partial.area("project").backed_up) == ("/p", True)
    assert partial.area("home") == absent.area("home")


def test_storage_paths_expand_in_the_session(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ada")
    monkeypatch.setenv("USER", "ada")
    area = centre_info.StorageArea("scratch", "/scratch/$USER", "", False, "")
    assert area.expanded() == "/scratch/ada"
    assert centre_info.from_environ({}).area("home").expanded() == "/home/ada"
    assert centre_info.from_environ({}).area("project").expanded() == ""  # not offered


# --- loading -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_times_load_as_strings_not_base_60_numbers(tmp_path):
    path = write(tmp_path, "limits:\n  default:\n    walltime: 4:00:00\n    memory: 1:30\n")
    default = load(path)["limits"]["default"]
    assert default == {"walltime": "4:00:00", "memory": "1:30"}


def test_plain_numbers_still_load_as_numbers(tmp_path):
    path = write(tmp_path, "a: 5000\nb: 2.5\nc: -3\nd: 0x10\n")
    assert load(path) == {"a": 5000, "b": 2.5, "c": -3, "d": 16}


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "hub:\n  bind_url: http://127.0.0.1:8000\n  bind_url: http://x\n")
    with pytest.raises(SiteConfigError, match=r"site\.yaml:3: duplicate key 'bind_url'"):
        load(path)


def test_file_that_is_not_a_mapping_is_an_error(tmp_path):
    path = write(tmp_path, "- hub\n- auth\n")
    with pytest.raises(SiteConfigError, match="expected a mapping") as info:
        load(path)
    assert info.value.path == str(path)


def test_empty_file_is_an_empty_site(tmp_path):
    assert load(write(tmp_path, "# nothing yet\n")) == {}


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "hub:\n  bind_url: [unclosed\n")
    with pytest.raises(SiteConfigError, match="not valid YAML") as info:
        load(path)
    assert re.fullmatch(re.escape(str(path)) + r":\d+", info.value.path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SiteConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")


# --- the reference and the CLI ------------------------------------------------------------


def test_rendered_defaults_load_as_the_defaults():
    text = werkbank_site.render_defaults()
    assert yaml.safe_load(text) == werkbank_site.defaults().model_dump(mode="json")
    assert validate({**yaml.safe_load(text), **minimal()}) == validate(minimal())


def test_rendered_defaults_document_every_key():
    text = werkbank_site.render_defaults()
    words = " ".join(text.replace("#", " ").split())
    seen = []

    def walk(model):
        for key, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{key} has no help text"
            assert key in text
            assert " ".join(info.description.split()[:3]) in words, key
            seen.append(key)
            inner = reference.section_of(info) or reference.entries_of(info)
            if inner is not None:
                walk(inner)

    walk(Site)
    assert "profiles" in seen and "walltime" in seen and "service_user" in seen
    assert "# For example:" in text
    assert "gpus (as in limits.default): Most GPUs one server may use." in words
    assert "partition (required): Slurm partition" in words
    assert "From 0.5 to 60." in words


def test_cli_defaults(capsys):
    assert main(["defaults"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["hub"]["spawner"] == "slurm"
    assert "# Where users reach the hub" in out


def test_cli_check_ok(capsys):
    assert main(["check", str(DEMO_SITE)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"ok: {DEMO_SITE}\n"
    assert captured.err == ""


def test_cli_check_fatal(tmp_path, capsys):
    site = shared("http://0.0.0.0:8000")
    path = write(tmp_path, yaml.safe_dump(site))
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("FATAL: auth.type: shared-password is for demos")
    assert captured.err.count("\n") == 1


def test_cli_check_notes_the_local_spawner(tmp_path, capsys):
    path = write(tmp_path, yaml.safe_dump(with_value(minimal(), "hub.spawner", "local")))
    assert main(["check", str(path)]) == 0
    assert "not as Slurm jobs" in capsys.readouterr().err


def test_cli_check_missing_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "absent.yaml")]) == 1
    assert capsys.readouterr().err.startswith(f"FATAL: {tmp_path / 'absent.yaml'}: cannot read")


# --- jupyterhub_config.py -----------------------------------------------------------------

# Runs a jupyterhub_config.py the way JupyterHub's loader does (get_config and __file__ in its
# globals) and prints a few resulting settings as JSON.
RUNNER = """
import json, sys
from traitlets.config import Config
config = Config()
path = sys.argv[1]
namespace = {"get_config": lambda: config, "__file__": path, "__name__": "__config__"}
exec(compile(open(path, encoding="utf-8").read(), path, "exec"), namespace)
print(json.dumps({
    "spawner_class": config.JupyterHub.spawner_class,
    "services": [s["name"] for s in config.JupyterHub.services],
    "extra": config.Extra.order if "order" in config.Extra else [],
}))
"""


def run_hub_config(config_file: Path, site_file: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WERKBANK_SITE_CONFIG": str(site_file)}
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hub_config_stops_the_hub_on_a_bad_site_file(tmp_path):
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    site = with_value(site, "slurm.poll_interval", 100)
    result = run_hub_config(HUB_CONFIG, write(tmp_path, yaml.safe_dump(site)))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr == "FATAL: slurm.poll_interval: 100 is above the maximum 60\n"
    assert not (tmp_path / "hub").exists()


def test_hub_config_applies_a_good_site_file(tmp_path):
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    result = run_hub_config(HUB_CONFIG, write(tmp_path, yaml.safe_dump(site)))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["spawner_class"] == "werkbank_spawner.spawner.WerkbankSlurmSpawner"
    assert out["services"] == ["mlflow-server", "mlflow", "idle-culler", "werkbank-workshop"]
    assert (tmp_path / "hub").is_dir()


def test_hub_config_runs_the_escape_hatch_in_sorted_order(tmp_path):
    config_dir = tmp_path / "hub_config"
    (config_dir / "jupyterhub_config.d").mkdir(parents=True)
    config_file = config_dir / "jupyterhub_config.py"
    config_file.write_text(HUB_CONFIG.read_text())
    extra = config_dir / "jupyterhub_config.d"
    for name in ("20-second.py", "10-first.py"):
        (extra / name).write_text(
            'order = c.Extra.order if "order" in c.Extra else []\n'
            f"c.Extra.order = [*order, {name!r} + ':' + str(len(c.JupyterHub.services))]\n"
        )
    (extra / "30-not-python.txt").write_text("raise SystemExit(3)\n")
    site = with_value(minimal(), "hub.data_dir", str(tmp_path / "hub"))
    result = run_hub_config(config_file, write(tmp_path, yaml.safe_dump(site)))
    assert result.returncode == 0, result.stderr
    # Both ran, in name order, after the site file was applied (they saw its 4 services).
    assert json.loads(result.stdout)["extra"] == ["10-first.py:4", "20-second.py:4"]


def test_local_fallback_servers_stop_with_the_hub():
    site = validate(with_value(load(DEMO_SITE), "hub.spawner", "local"))
    c = applied(site)
    assert c.JupyterHub.spawner_class == "werkbank_spawner.spawner.WerkbankLocalSpawner"
    assert c.JupyterHub.cleanup_servers is True


# --- site files written before the schema moved to pydantic ----------------------------------

DATA = Path(__file__).resolve().parent / "data"
#: Values that are new in every hub process (random), masked in the recorded configuration.
PROCESS_SECRETS = (
    "WERKBANK_MLFLOW_SIGNING_KEY",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "mlflow_signing_key",
)


def recorded_form(value: object, key: str | None = None) -> object:
    """A Config as site-before-pydantic.config.json records it: plain JSON types, per-process
    secrets and this machine's environment folder replaced by placeholders."""
    if isinstance(value, dict):
        return {k: recorded_form(v, k) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(recorded_form(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [recorded_form(v) for v in value]
    if key in PROCESS_SECRETS and value:
        return "<secret>"
    if isinstance(value, str):
        return value.replace(str(Path(sys.executable).parent), "<venv-bin>")
    return value


def assert_workshops_added(config: dict, site: Site) -> None:
    """Check and take out of ``config`` what workshops add to a hub's configuration."""
    hub = config["JupyterHub"]
    before = {"pam": "jupyterhub.auth.PAMAuthenticator", "shared-password": "shared-password"}
    if site.auth.type in before:
        assert hub["authenticator_class"].startswith("werkbank_spawner.workshop.logins.Course")
        hub["authenticator_class"] = before[site.auth.type]
        assert config.pop("CourseLogins")["workshops_dir"].endswith("/workshops")
    assert config["WerkbankSlurmSpawner"].pop("workshops_dir").endswith("/workshops")
    assert hub.pop("custom_scopes") == {"custom:werkbank:course-roles": {"description": ANY}}
    assert set(hub.pop("template_vars")) == {"announcement"}
    assert hub["services"].pop()["name"] == "werkbank-workshop"
    assert hub["load_roles"].pop()["name"] == "werkbank-workshop"


@pytest.mark.parametrize(
    ("name", "path"),
    [("demo", DEMO_SITE), ("before-pydantic", DATA / "site-before-pydantic.yaml")],
)
def test_site_files_from_before_give_the_hub_the_same_configuration(name, path, tmp_path):
    """Recorded from werkbank_spawner.siteconfig (the schema before pydantic) for the same files:
    every trait the hub gets is unchanged, value for value."""
    recorded = json.loads((DATA / "site-before-pydantic.config.json").read_text())[name]
    # Changed on purpose since the recording (issue 19): an https bind_url needs the proxy's
    # certificate and key in the site file (JupyterHub quietly made it http:// without them).
    data, certs = load(path), None
    if data["hub"]["bind_url"].startswith("https://"):
        certs = make_certificates(tmp_path / "tls")
        data["hub"].update(tls_cert_file=str(certs.cert_file), tls_key_file=str(certs.key_file))
    site = validate(data)
    config = recorded_form(applied(site))
    if certs:
        assert config["JupyterHub"].pop("ssl_cert") == str(certs.cert_file)
        assert config["JupyterHub"].pop("ssl_key") == str(certs.key_file)
    # Changed on purpose since the recording (issue 13): MLflow's telemetry is switched off, and
    # the spawners tell sessions the culler's timeout (JupyterLab warns before it).
    culling = site.culling
    for spawner in ("WerkbankSlurmSpawner", "WerkbankLocalSpawner"):
        assert config[spawner].pop("idle_timeout") == (culling.timeout if culling.enabled else 0)
    # Added on purpose since the recording (issue 15): the centre's details for the sessions, and
    # where the hub keeps the dashboard shares (in its own folder).
    data_dir = site.hub.data_dir
    for spawner in ("WerkbankSlurmSpawner", "WerkbankLocalSpawner"):
        assert config[spawner].pop("centre") == centre_info.DEFAULTS
        assert (
            config[spawner]
            .pop("dashboards_dir")
            .endswith(f"{data_dir.rstrip('/').split('/')[-1]}/dashboard-shares")
        )
    for service in config["JupyterHub"]["services"]:
        for variable in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
            if service["name"].startswith("mlflow"):
                assert service["environment"].pop(variable) == "true"
    # Changed on purpose since the recording: no secret in a service's environment (JupyterHub
    # keeps it in its database). The hub writes them into a file per service, which the
    # environment names; the MLflow server starts through a launcher that reads its file.
    for service in config["JupyterHub"]["services"]:
        if not service["name"].startswith("mlflow") or "command" not in service:
            continue
        environment = service["environment"]
        if "WERKBANK_MLFLOW_SECRETS" in environment:
            path = environment.pop("WERKBANK_MLFLOW_SECRETS")
            assert path.endswith(f"/service-secrets/{service['name']}/secrets.json")
            environment["WERKBANK_MLFLOW_SIGNING_KEY"] = "<secret>"
        if service["name"] == "mlflow-server" and "--" in service["command"]:
            launcher = service["command"][: service["command"].index("--") + 1]
            assert launcher == [
                recorded_form(sys.executable),  # the environment's folder masked
                "-I",
                "-m",
                "werkbank_spawner.tracking.server_launcher",
                path,
                "--",
            ]
            service["command"] = service["command"][len(launcher) :]
            environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] = environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = (
                "<secret>"
            )
    # Added on purpose since the recording (issue 15): the MLflow proxy may read users (a shared
    # dashboard's viewer's groups), when there is a proxy.
    roles = config["JupyterHub"]["load_roles"]
    proxy_roles = [r for r in roles if r["name"] == "werkbank-mlflow-proxy"]
    assert proxy_roles == (
        [{"name": "werkbank-mlflow-proxy", "services": ["mlflow"], "scopes": ["read:users"]}]
        if site.tracking.mlflow.proxy
        else []
    )
    roles[:] = [r for r in roles if r["name"] != "werkbank-mlflow-proxy"]
    # Added on purpose since the recording (issue 14): workshops (course logins in the
    # authenticator, the course store, the workshop service and its role and scope).
    assert_workshops_added(config, site)
    # The spawners' policy configuration now names each profile's defaults; the policy built
    # from it (what the spawner runs) is the same.
    for spawner in ("WerkbankSlurmSpawner", "WerkbankLocalSpawner"):
        now, before = config[spawner].pop("policy_config"), recorded[spawner].pop("policy_config")
        assert policy_from_dict(now) == policy_from_dict(before)
    # Changed on purpose since the recording (issue 19): OAuth logins use werkbank's subclass of
    # GenericOAuthenticator (id_token check, provider groups); a site without its keys gets them off.
    hub = config["JupyterHub"]
    if hub["authenticator_class"] == "werkbank_spawner.oidc.WerkbankOAuthenticator":
        hub["authenticator_class"] = "oauthenticator.generic.GenericOAuthenticator"
        assert config.pop("WerkbankOAuthenticator") == {
            "issuer": "",
            "groups_claim": "groups",
            "group_map": {},
            "allowed_provider_groups": [],
        }
    assert config == recorded


def test_launch_links_start_where_users_arrive_behind_a_tls_front_end():
    """With TLS ended in front of the hub (hub.public_url), bind_url is where the proxy listens:
    a link meant for people starts at public_url, with bind_url's path (JupyterHub's base URL)."""
    from werkbank_spawner.site.links import launch_link

    site = with_value(load(DEMO_SITE), "hub.bind_url", "http://127.0.0.1:8000/jhub/")
    site["hub"]["public_url"] = "https://hub.example.org"
    site = validate(with_value(site, "auth", {"type": "pam"}))
    assert launch_link(site, "cpu").startswith("https://hub.example.org/jhub/hub/spawn?")


def test_launch_links():
    from werkbank_spawner.site.links import launch_link

    site = with_value(load(DEMO_SITE), "hub.bind_url", "https://hub.example.org/jhub/")
    site["hub"].update(tls_cert_file="/etc/werkbank/tls/hub.crt", tls_key_file="/etc/werkbank/tls/hub.key")
    site = validate(with_value(site, "auth", {"type": "pam"}))
    assert launch_link(site, "gpu1", template="03-training") == (
        "https://hub.example.org/jhub/hub/spawn?profile=gpu1"
        "&next=%2Fjhub%2Fhub%2Fuser-redirect%2Fwerkbank%2Fopen%2F03-training"
    )
    assert launch_link(site, "cpu", path="course/intro 1.ipynb").endswith(
        "next=%2Fjhub%2Fhub%2Fuser-redirect%2Flab%2Ftree%2Fcourse%2Fintro%25201.ipynb"
    )
    assert launch_link(site, "cpu").endswith("next=%2Fjhub%2Fhub%2Fuser-redirect%2Flab")
    assert launch_link(site, "cpu", dashboard="client/overview.ipynb").endswith(
        "next=%2Fjhub%2Fhub%2Fuser-redirect%2Fvoila%2Frender%2Fclient%2Foverview.ipynb"
    )
    for kwargs, where in (
        ({"profile": "cpu", "dashboard": "../x.ipynb"}, "dashboard"),
        ({"profile": "cpu", "dashboard": "notes.txt"}, "dashboard"),
        ({"profile": "cpu", "dashboard": "a.ipynb", "path": "a.ipynb"}, "open"),
        ({"profile": "gpu9"}, "profile"),
        ({"profile": "cpu", "template": "../x"}, "template"),
        ({"profile": "cpu", "path": "/etc/passwd"}, "path"),
        ({"profile": "cpu", "path": "a/../../b"}, "path"),
        ({"profile": "cpu", "template": "01-onboarding", "path": "x.ipynb"}, "open"),
    ):
        with pytest.raises(SiteConfigError) as info:
            launch_link(site, **kwargs)
        assert info.value.path == where
