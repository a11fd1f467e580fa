"""The spawn page's form and the form → user_options step (pure; no hub)."""

from types import SimpleNamespace

import pytest
from tornado import web

from werkbank_spawner.spawner import WerkbankSlurmSpawner, validate_user_options

from .test_policy import SITE


def spawner_for(name="alice", groups=()):
    user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups], url="/user/alice/")
    return WerkbankSlurmSpawner(user=user, policy_config=SITE)


def test_form_fields_become_options_and_xsrf_is_dropped():
    options = spawner_for().options_from_form(
        {"profile": ["gpu1"], "gpus": [" 1 "], "walltime": [""], "_xsrf": ["abc"]}
    )
    assert options == {"profile": "gpu1", "gpus": "1", "walltime": ""}


def test_form_lists_the_users_profiles_with_escaping_and_limits():
    site = dict(
        SITE, profiles=[*SITE["profiles"], {"name": "x", "partition": "cpu", "display_name": "<b>x</b>"}]
    )
    user = SimpleNamespace(name="alice", groups=[SimpleNamespace(name="workshop")], url="/user/alice/")
    html = WerkbankSlurmSpawner(user=user, policy_config=site).options_form(
        WerkbankSlurmSpawner(user=user, policy_config=site)
    )
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert 'value="gpu1"' in html and "Exceeds your limits" in html  # 4 h > workshop's 2 h
    assert 'value="staff"' not in html  # offered to group staff only
    assert 'max="1"' in html  # workshop: at most 1 GPU


def test_last_end_reason_is_shown():
    spawner = spawner_for()
    spawner.last_end_reason = "job 5 ended: TIMEOUT (walltime reached)"
    assert "Your last server ended: job 5 ended: TIMEOUT (walltime reached)" in spawner.options_form(spawner)


def test_invalid_options_become_http_400():
    spawner = spawner_for()
    with pytest.raises(web.HTTPError) as e:
        validate_user_options(spawner, {"profile": "gpu1", "gpus": 9})
    assert e.value.status_code == 400
    assert "9 GPUs requested, your limit is 2" in e.value.log_message
    validate_user_options(spawner, {"profile": "gpu1"})
    assert spawner.job_request.gpus == 1
    assert spawner.job_request.describe().startswith("gpu1: 1 GPU")
