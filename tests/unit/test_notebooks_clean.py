"""The notebook templates are committed clean: no outputs, no execution counts, no editor metadata.

They also keep the shape papermill and the workshop rely on: a markdown title first, a ``parameters`` cell as
the first code cell with typed and commented defaults, the ``python3`` kernel, and a closing "Checks" section.
"""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import papermill
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").rglob("*.ipynb"))
NOTEBOOK_METADATA = {"kernelspec", "language_info"}
CELL_METADATA = {"tags"}


def notebook_id(path: Path) -> str:
    return str(path.relative_to(REPO / "notebooks"))


def read(path: Path) -> SimpleNamespace:
    """The notebook as plain JSON, sources joined (nbformat's import alone takes seconds here)."""
    nb = json.loads(path.read_text())
    cells = [
        SimpleNamespace(
            cell_type=cell["cell_type"],
            source="".join(cell["source"]),
            metadata=cell.get("metadata", {}),
            outputs=cell.get("outputs", []),
            execution_count=cell.get("execution_count"),
        )
        for cell in nb["cells"]
    ]
    return SimpleNamespace(nbformat=nb["nbformat"], metadata=nb["metadata"], cells=cells)


def test_there_are_templates():
    assert len(NOTEBOOKS) >= 2, NOTEBOOKS
    assert not [p for p in NOTEBOOKS if ".ipynb_checkpoints" in p.parts]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_valid_nbformat_4(path):
    import nbformat  # here only: its import takes seconds (jsonschema's format checkers)

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_no_outputs_or_execution_counts(path):
    nb = read(path)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_minimal_metadata_and_python3_kernel(path):
    nb = read(path)
    assert set(nb.metadata) <= NOTEBOOK_METADATA, sorted(nb.metadata)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    extra = {i: sorted(set(cell.metadata) - CELL_METADATA) for i, cell in enumerate(nb.cells)}
    # A worked solution's code is collapsed (input and output) until the reader opens it.
    solutions = {i for i, cell in enumerate(nb.cells) if "solution" in cell.metadata.get("tags", [])}
    for i in solutions:
        assert cell_is_collapsed(nb.cells[i]), f"solution cell {i} is not collapsed"
        extra[i] = [key for key in extra[i] if key != "jupyter"]
    assert not {i: keys for i, keys in extra.items() if keys}, "editor metadata in cells"


def cell_is_collapsed(cell) -> bool:
    return cell.cell_type == "code" and cell.metadata.get("jupyter") == {
        "source_hidden": True,
        "outputs_hidden": True,
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_every_exercise_has_a_worked_solution(path):
    """After each exercise, a worked solution: a markdown cell that says so, and its code collapsed (run
    with the template, so the tests run it too) or its prose in a <details> block."""
    nb = read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("**Exercise"):
            following = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            if following is not None and following.source.lstrip().startswith("**Exercise"):
                continue  # two exercises in a row share the solution after the second
            assert following is not None and following.cell_type == "markdown", (
                f"cell {i}: no solution after it"
            )
            assert following.source.startswith("**Worked solution**"), f"cell {i}: {following.source[:80]!r}"
    for cell in nb.cells:
        if "<details>" in cell.source:
            assert cell.source.startswith("**Worked solution**") and "</details>" in cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_title_first_and_checks_last(path):
    nb = read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell is the title"
    headings = [
        line
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("## ")
    ]
    assert headings and headings[-1] == "## Checks", f"the last section is {headings[-1:]}, not Checks"
    after = nb.cells[next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Checks")) :]
    assert any(c.cell_type == "code" and "assert " in c.source for c in after), "Checks without asserts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_parameters_cell_first_with_typed_commented_defaults(path):
    nb = read(path)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), "the first code cell is not tagged `parameters`"
    body = ast.parse(cell.source).body
    assert body, "empty parameters cell"
    for statement in body:
        assert isinstance(statement, ast.AnnAssign) and statement.value is not None, (
            f"line {statement.lineno}: parameters are `name: type = value  # comment`"
        )
        # The default is a literal papermill can override and the reader can see.
        ast.literal_eval(statement.value)
    for number, line in enumerate(cell.source.splitlines(), start=1):
        assert not line.strip() or line.lstrip().startswith("#") or "  # " in line, (
            f"line {number} has no comment: {line!r}"
        )
    # papermill reads every one (`papermill --help-notebook` lists it; passing it gives no "unknown parameter"
    # warning): its pattern takes `"Optional[int]"` but not `int | None`.
    inferred = papermill.inspect_notebook(str(path))
    assert list(inferred) == [statement.target.id for statement in body], sorted(inferred)
