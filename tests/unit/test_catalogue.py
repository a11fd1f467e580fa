"""The template catalogue: parsing notebooks and ``catalogue.yaml``, and the repository's catalogue itself."""

import ast
import json
import os
from pathlib import Path

import pytest

from werkbank_lab.catalogue import (
    CATALOGUE_FILE,
    Catalogue,
    CatalogueError,
    notebook_summary,
    problems,
    read_entries,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def notebook(path: Path, *markdown: str) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    cells.append(
        {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def catalogue_file(folder: Path, text: str) -> Path:
    path = folder / CATALOGUE_FILE
    path.write_text(text)
    return path


# --- the repository's catalogue --------------------------------------------------------------------------


def test_every_template_folder_has_an_entry_and_every_entry_a_folder():
    assert problems(NOTEBOOKS) == []


def test_the_repository_catalogue_reads_title_description_and_runtime():
    templates = Catalogue(NOTEBOOKS).templates()
    assert [t.id for t in templates] == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]-*") if p.is_dir())
    for t in templates:
        assert t.title and not t.title.startswith("#"), t
        assert len(t.description) > 40, (t.id, t.description)
        assert t.runtime_minutes and t.runtime_minutes > 0, t.id
    onboarding = next(t for t in templates if t.id == "01-onboarding")
    assert onboarding.title == "Onboarding: what this session has"
    assert onboarding.description.startswith("JupyterHub started this JupyterLab for you")


def test_the_templates_readme_has_a_row_for_every_template_and_no_other():
    """notebooks/README.md maps each template to its phase, inputs, outputs and times: one row each."""
    rows = [line for line in (NOTEBOOKS / "README.md").read_text().splitlines() if line.startswith("| `")]
    listed = [row.split("`")[1] for row in rows]
    assert listed == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]-*") if p.is_dir())


def declared_needs(checks: Path) -> tuple[str, ...]:
    """``NEEDS`` of a lifecycle checks module, read from its source (importing one takes seconds)."""
    for statement in ast.parse(checks.read_text()).body:
        target = getattr(statement, "target", None) or next(iter(getattr(statement, "targets", [])), None)
        if isinstance(target, ast.Name) and target.id == "NEEDS":
            return tuple(ast.literal_eval(statement.value))
    raise AssertionError(f"{checks}: no NEEDS")


def _closure(needs: dict[str, tuple[str, ...]], template_id: str) -> set[str]:
    found, todo = set(), list(needs.get(template_id, ()))
    while todo:
        need = todo.pop()
        if need not in found:
            found.add(need)
            todo.extend(needs.get(need, ()))
    return found


def test_needs_agree_with_what_the_template_tests_run_first():
    """The catalogue tells users which templates come first; the lifecycle tests run them first (``NEEDS``).

    Compared transitively: "05 needs 03" and "05 needs 02 and 03" say the same when 03 needs 02.
    """
    entries = read_entries(NOTEBOOKS / CATALOGUE_FILE)
    catalogue_needs = {i: e["needs"] for i, e in entries.items()}
    test_needs = {}
    for template_id in entries:
        number, _, rest = template_id.partition("-")
        checks = REPO / "tests" / "notebooks" / "checks" / f"t{number}_{rest.replace('-', '_')}.py"
        if checks.exists():  # a template without lifecycle checks yet: the template tests report that
            test_needs[template_id] = declared_needs(checks)
    assert test_needs, "no lifecycle checks found"
    # Where a template has no checks module yet, its catalogue entry stands in for it.
    declared = {**catalogue_needs, **test_needs}
    for template_id in test_needs:
        assert _closure(catalogue_needs, template_id) == _closure(declared, template_id), template_id


# --- parsing --------------------------------------------------------------------------------------------


def test_title_is_the_first_heading_and_description_the_paragraph_after_it(tmp_path):
    path = notebook(
        tmp_path / "nb.ipynb",
        "Some preface that is not a heading.",
        "# Training from scratch\n\nA small CNN on\nthe digits.\n\n**Learning goals**\n\n- one",
    )
    assert notebook_summary(path) == ("Training from scratch", "A small CNN on the digits.")


def test_a_paragraph_introducing_a_list_ends_with_a_full_stop(tmp_path):
    path = notebook(tmp_path / "nb.ipynb", "# Data\nTwo data sets:\n\n- wine\n- digits")
    assert notebook_summary(path) == ("Data", "Two data sets.")


def test_a_notebook_without_heading_is_an_error_naming_the_file(tmp_path):
    path = notebook(tmp_path / "nb.ipynb", "no heading here")
    with pytest.raises(CatalogueError, match=r"nb\.ipynb: no markdown heading"):
        notebook_summary(path)
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(CatalogueError, match=r"broken\.ipynb: not a readable notebook"):
        notebook_summary(tmp_path / "broken.ipynb")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("templates:\n  03-training: {runtime_minutes: 5, gpus: 1}\n", r"03-training\.gpus: unknown key"),
        ("templates:\n  03-training: {runtime_minutes: 0}\n", r"runtime_minutes: a positive whole number"),
        ("templates:\n  03-training: {runtime_minutes: true}\n", r"runtime_minutes: a positive whole number"),
        ("templates:\n  03-training: {needs: []}\n", r"runtime_minutes: a positive whole number"),
        ("templates:\n  training: {runtime_minutes: 5}\n", r"templates\.training: not a template id"),
        (
            "templates:\n  03-training: {runtime_minutes: 5, needs: 02-data}\n",
            r"needs: a list of template ids",
        ),
        ("templates:\n  03-training: {runtime_minutes: 5, needs: [02-data]}\n", r"'02-data' has no entry"),
        (
            "templates:\n  02-data: {runtime_minutes: 1, needs: [03-training]}\n"
            "  03-training: {runtime_minutes: 5}\n",
            r"'03-training' does not come before it",
        ),
        ("tempaltes: {}\n", r"one key, `templates`"),
    ],
)
def test_catalogue_file_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(CatalogueError, match=message):
        read_entries(catalogue_file(tmp_path, text))


def test_a_template_folder_has_exactly_one_notebook(tmp_path):
    notebook(tmp_path / "03-training" / "a.ipynb", "# A")
    notebook(tmp_path / "03-training" / "b.ipynb", "# B")
    with pytest.raises(CatalogueError, match="exactly one notebook"):
        Catalogue(tmp_path).templates()


def test_folders_and_entries_that_disagree_are_listed_and_tolerated(tmp_path, caplog):
    notebook(tmp_path / "01-onboarding" / "onboarding.ipynb", "# Onboarding\n\nLook around.")
    catalogue_file(tmp_path, "templates:\n  02-data: {runtime_minutes: 2}\n")
    assert problems(tmp_path) == [
        f"01-onboarding: template folder without an entry in {CATALOGUE_FILE}",
        f"02-data: entry in {CATALOGUE_FILE} without a template folder",
    ]
    [template] = Catalogue(tmp_path).templates()  # the server still lists what it can
    assert (template.id, template.runtime_minutes, template.runtime) == ("01-onboarding", None, "unknown")
    assert "01-onboarding has no entry" in caplog.text


def test_json_of_a_template_has_no_server_paths(tmp_path):
    notebook(tmp_path / "01-onboarding" / "onboarding.ipynb", "# Onboarding\n\nLook around.")
    notebook(tmp_path / "02-data" / "data.ipynb", "# Data\n\nLoad it.")
    catalogue_file(
        tmp_path,
        "templates:\n  01-onboarding: {runtime_minutes: 1}\n"
        "  02-data: {runtime_minutes: 3, needs: [01-onboarding]}\n",
    )
    data = Catalogue(tmp_path).get("02-data").to_json()
    assert data == {
        "id": "02-data",
        "phase": 2,
        "phase_name": "data",
        "title": "Data",
        "description": "Load it.",
        "runtime_minutes": 3,
        "runtime": "about 3 min",
        "needs": ["01-onboarding"],
        "notebook": "data.ipynb",
    }
    assert str(tmp_path) not in json.dumps(data)


def test_parsing_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    path = notebook(tmp_path / "01-onboarding" / "onboarding.ipynb", "# Onboarding\n\nFirst.")
    catalogue_file(tmp_path, "templates:\n  01-onboarding: {runtime_minutes: 1}\n")
    catalogue = Catalogue(tmp_path)
    reads = []
    original = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: reads.append(self.name) or original(self, *a, **k)
    )

    assert catalogue.get("01-onboarding").description == "First."
    assert sorted(reads) == [CATALOGUE_FILE, "onboarding.ipynb"]
    reads.clear()
    for _ in range(3):
        catalogue.templates()
    assert reads == []  # nothing parsed again

    notebook(path, "# Onboarding\n\nSecond, and longer.")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # a new mtime even on coarse clocks
    assert catalogue.get("01-onboarding").description == "Second, and longer."
    assert reads == ["onboarding.ipynb"]  # only the changed file


def test_an_unknown_id_is_none_and_never_a_path(tmp_path):
    notebook(tmp_path / "01-onboarding" / "onboarding.ipynb", "# Onboarding\n\nLook around.")
    catalogue = Catalogue(tmp_path)
    for template_id in ["../01-onboarding", "01-onboarding/../01-onboarding", "/etc/passwd", "", "01"]:
        assert catalogue.get(template_id) is None


# --- where copies go, and how they are named --------------------------------------------------------------


def test_the_workspace_is_in_the_home_folder_when_the_root_holds_it(tmp_path):
    from werkbank_lab.workspace import workspace_api_path

    home = tmp_path / "home" / "ada"
    assert workspace_api_path(tmp_path / "home" / "ada", "", home) == "werkbank-templates"
    assert workspace_api_path(tmp_path, "", home) == "home/ada/werkbank-templates"
    assert workspace_api_path(tmp_path / "project", "", home) == "werkbank-templates"  # home outside the root
    assert workspace_api_path(tmp_path, "work/templates", home) == "work/templates"
    assert workspace_api_path(tmp_path, str(tmp_path / "abs"), home) == "abs"
    assert workspace_api_path(tmp_path, ".", home) == ""
    for outside in ["/", "..", "work/../../elsewhere", str(tmp_path.parent)]:
        with pytest.raises(
            ValueError, match=r"WerkbankLab\.workspace_dir: .* is outside the server's root_dir"
        ):
            workspace_api_path(tmp_path, outside, home)


def test_copy_names_count_up():
    from itertools import islice

    from werkbank_lab.workspace import copy_names

    assert list(islice(copy_names("training.ipynb"), 4)) == [
        "training.ipynb",
        "training-1.ipynb",
        "training-2.ipynb",
        "training-3.ipynb",
    ]


# --- how the session shows the MLflow UI -------------------------------------------------------------------


def test_mlflow_route():
    from werkbank_lab.mlflow_ui import mlflow_route

    proxied = mlflow_route("http://hub.internal:5000", "", {})
    assert proxied.kind == "proxy"
    assert (proxied.target.netloc, proxied.target.prefix, proxied.target.authorization) == (
        "hub.internal:5000",
        "",
        "",
    )
    assert mlflow_route("http://10.0.0.1:8081/services/mlflow/", "", {}).target.prefix == "/services/mlflow"
    token = mlflow_route("http://127.0.0.1:5000", "", {"MLFLOW_TRACKING_TOKEN": "s3cret"})
    assert token.target.authorization == "Bearer s3cret"
    basic = mlflow_route(
        "http://127.0.0.1:5000", "", {"MLFLOW_TRACKING_USERNAME": "ada", "MLFLOW_TRACKING_PASSWORD": "pw"}
    )
    assert basic.target.authorization == "Basic YWRhOnB3"
    # A UI URL wins; an https server is one browsers reach themselves.
    assert mlflow_route("http://127.0.0.1:5000", "/services/mlflow/", {}).url == "/services/mlflow/"
    assert mlflow_route("https://mlflow.example.org", "", {}).url == "https://mlflow.example.org/"
    assert mlflow_route("", "", {}).reason == "MLFLOW_TRACKING_URI is not set in this session"
    assert mlflow_route("file:///tmp/mlruns", "", {}).kind == "none"


def test_templates_are_found_in_the_checkout_or_where_install_sh_puts_them(tmp_path, monkeypatch):
    from werkbank_lab import catalogue

    monkeypatch.delenv("WERKBANK_TEMPLATES_DIR", raising=False)
    monkeypatch.setattr(catalogue.sys, "prefix", str(tmp_path / "venv"))
    if (Path(catalogue.__file__).resolve().parents[2] / "notebooks").is_dir():  # editable install
        assert catalogue.default_templates_dir() == str(NOTEBOOKS)
    # An installed package: deploy/install.sh copies the templates into the environment.
    monkeypatch.setattr(
        catalogue, "__file__", str(tmp_path / "site-packages" / "werkbank_lab" / "catalogue.py")
    )
    assert catalogue.default_templates_dir() == ""
    installed = tmp_path / "venv" / "share" / "werkbank" / "notebooks"
    installed.mkdir(parents=True)
    catalogue_file(installed, "")
    assert catalogue.default_templates_dir() == str(installed)
    monkeypatch.setenv("WERKBANK_TEMPLATES_DIR", "/site/templates")
    assert catalogue.default_templates_dir() == "/site/templates"
