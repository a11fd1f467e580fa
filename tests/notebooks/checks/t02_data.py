"""02-data: a run per data set, with its reproducible split logged as MLflow dataset inputs and artifacts."""

import getpass
import hashlib
import math
import tempfile
from pathlib import Path

import pandas as pd
from sklearn import datasets
from sklearn.model_selection import train_test_split

from tests.notebooks.lifecycle import Execution, digest, inputs_by_context, runs_in

NEEDS: tuple[str, ...] = ()


def smoke(upstream: dict[str, Execution]) -> dict:
    # The seed and the fractions differ from the defaults: the split follows the parameters.
    return {
        "size": "smoke",
        "data_dir": "werkbank-data",
        "seed": 7,
        "validation_fraction": 0.15,
        "test_fraction": 0.25,
    }


SPLIT_FILES = {"training": "train.csv", "validation": "validation.csv", "testing": "test.csv"}


def artifact_sha256(client, run_id: str, artifact_path: str) -> str:
    """The SHA-256 of the exact bytes of a run's artifact, downloaded outside the test's working directory."""
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(client.download_artifacts(run_id, artifact_path, scratch))
        return hashlib.sha256(local.read_bytes()).hexdigest()


def check(execution: Execution) -> None:
    client, parameters, workdir = execution.client, execution.parameters, execution.workdir
    experiment_name = execution.experiment_name
    runs = {run.data.tags.get("werkbank.dataset"): run for run in runs_in(client, experiment_name)}
    assert set(runs) == {"wine", "digits"}, sorted(map(str, runs))
    seed, test_fraction = parameters["seed"], parameters["test_fraction"]
    validation_fraction = parameters["validation_fraction"]
    data_root = (workdir / parameters["data_dir"]).resolve()
    for name, loader in (("wine", datasets.load_wine), ("digits", datasets.load_digits)):
        run = runs[name]
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["werkbank.template"] == "02-data"
        assert tags["werkbank.user"] == getpass.getuser()
        assert run.data.params["seed"] == str(seed)
        assert float(run.data.params["test_fraction"]) == test_fraction
        assert float(run.data.params["validation_fraction"]) == validation_fraction

        # The split is two train_test_splits of the bundled data, with the given seed, stratified: the
        # test part first, then validation from the rest (in this process, not the notebook's kernel).
        full = loader(as_frame=True).frame
        rest, test = train_test_split(
            full, test_size=test_fraction, random_state=seed, stratify=full["target"]
        )
        train, validation = train_test_split(
            rest,
            test_size=validation_fraction / (1 - test_fraction),
            random_state=seed,
            stratify=rest["target"],
        )
        parts = {"training": train, "validation": validation, "testing": test}
        expected = {context: part.reset_index(drop=True) for context, part in parts.items()}
        assert len(expected["testing"]) == math.ceil(test_fraction * len(full))
        # No row of the data set is in two parts (the bundled tables have no duplicated rows).
        assert (
            sum(map(len, parts.values())) == len(full) == len(set().union(*(p.index for p in parts.values())))
        )

        inputs = inputs_by_context(run)
        assert set(inputs) == set(SPLIT_FILES), sorted(inputs)
        # The run's folder is under data_dir, and its files hold exactly the logged data.
        folder = Path(run.data.params["folder"])
        assert folder.is_relative_to(data_root), folder
        for context, dataset in inputs.items():
            assert dataset.digest == tags[f"werkbank.digest.{context}"] == digest(expected[context])
            assert digest(pd.read_csv(folder / SPLIT_FILES[context])) == dataset.digest
            # The full-content hash: the tag is the SHA-256 of the stored file and of the file in the folder,
            # byte for byte, and those bytes are the expected split as pandas writes it.
            sha256 = tags[f"werkbank.sha256.{context}"]
            assert artifact_sha256(client, run.info.run_id, f"data/{SPLIT_FILES[context]}") == sha256, context
            assert hashlib.sha256((folder / SPLIT_FILES[context]).read_bytes()).hexdigest() == sha256, context
            expected_bytes = expected[context].to_csv(index=False).encode()
            assert hashlib.sha256(expected_bytes).hexdigest() == sha256, context
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "data")}
        assert artifacts == {f"data/{file_name}" for file_name in SPLIT_FILES.values()}

    # Nothing was written in the working directory outside data_dir but papermill's own output.
    written = {p for p in workdir.rglob("*") if p.is_file() and not p.name.startswith("executed-")}
    assert written and all(p.resolve().is_relative_to(data_root) for p in written), sorted(written)
