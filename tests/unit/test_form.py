"""The spawn page's form and the form → user_options step (pure; no hub)."""

import re
from types import SimpleNamespace

import pytest
from tornado import web

from werkbank_spawner.spawner import WerkbankSlurmSpawner, validate_user_options

from .test_policy import SITE


def spawner_for(name="alice", groups=()):
    user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups], url="/user/alice/")
    return WerkbankSlurmSpawner(user=user, policy_config=SITE)


def profile_blocks(html: str) -> dict[str, str]:
    """The form's profile choices: each radio button's value → the HTML of its block (label,
    description, warning), in the order shown."""
    blocks = html.split("</fieldset>")[0].split('<div class="form-check mb-2">')[1:]
    named = {re.search(r'name="profile" [^>]*value="([^"]*)"', b).group(1): b for b in blocks}
    assert len(named) == len(blocks), "two profile blocks with one name"
    return named


def warning_of(block: str) -> str | None:
    """What a profile's "Exceeds your limits (...)" warning says, or None if it has none."""
    found = re.findall(r"Exceeds your limits \((.*?)\); adjust it below", block)
    assert len(found) <= 1, block
    return found[0] if found else None


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
    blocks = profile_blocks(html)
    assert list(blocks) == ["cpu", "gpu1", "fullnode", "x"]  # not "staff": offered to group staff only
    # Each refusal is shown on the profile it is about, naming the limit that profile exceeds.
    assert warning_of(blocks["gpu1"]) == "04:00:00 requested, your limit is 02:00:00"  # 4 h > workshop's 2 h
    assert warning_of(blocks["fullnode"]) == "2 GPUs requested, your limit is 1"  # 2 > workshop's 1 GPU
    assert warning_of(blocks["cpu"]) is None and warning_of(blocks["x"]) is None  # these fit
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
