"""11-retrieval-augmented-answers: a parent run and a child run per retriever (bm25, dense, hybrid), all on
the same store (its SHA-256 recomputed here from the corpus files); each retriever's test metrics and
intervals, recomputed from the logged ranks of every test query; the hybrid is the fusion the logged
validation grid chose; the claim (the hybrid not worse than either retriever on recall@5: the paired
bootstrap interval of the difference reaches 0); every logged answer cites an id, and only ids of the
passages its question was given."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tests.notebooks.checks.t04_finetuning import corpus_folder
from tests.notebooks.lifecycle import Execution, parent_and_children

NEEDS: tuple[str, ...] = ()
TEMPLATE = "11-retrieval-augmented-answers"
RETRIEVERS = ("bm25", "dense", "hybrid")
KINDS = ("title", "sentence")
CUTOFFS = (1, 5, 10)
CITED = re.compile(r"\[([^\[\]\s]+)\]")  # as the notebook parses citations: anything in square brackets


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def check(execution: Execution) -> None:
    client = execution.client
    parent, children = parent_and_children(client, execution.experiment_name, TEMPLATE)
    assert set(children) == set(RETRIEVERS), sorted(children)
    store_sha256 = parent.data.tags["werkbank.sha256.store"]
    for run in children.values():
        assert run.data.tags["werkbank.sha256.store"] == store_sha256, f"{run.info.run_name}: another store"
    params = parent.data.params
    assert params["size"] == "smoke"
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"data", "fusion.csv", "ranks.csv", "answers.json", "answers.csv"} <= artifacts, artifacts

    folder = execution.workdir / "check-downloads"
    folder.mkdir()
    queries = pd.read_csv(client.download_artifacts(parent.info.run_id, "data/queries.csv", str(folder)))
    assert_store_is_the_logged_one(queries, store_sha256)
    ranks = pd.read_csv(client.download_artifacts(parent.info.run_id, "ranks.csv", str(folder)))
    assert_metrics_follow_from_ranks(queries, ranks, params, children)
    fusion = pd.read_csv(client.download_artifacts(parent.info.run_id, "fusion.csv", str(folder)))
    assert_hybrid_chosen_on_validation(fusion, params, children["hybrid"])
    answers = Path(client.download_artifacts(parent.info.run_id, "answers.json", str(folder)))
    assert_answers_cite_retrieved_ids(json.loads(answers.read_text()), ranks, params, parent.data.metrics)


def assert_store_is_the_logged_one(queries: pd.DataFrame, store_sha256: str) -> None:
    """The SHA-256 over the store's full contents (file, topic, text of every article, in order), recomputed
    from the corpus files for the logged documents, is the tag; no article is in the store twice."""
    corpus = corpus_folder()
    store = queries[["document", "topic"]].copy()
    store["text"] = [
        (corpus / path).read_text(encoding="utf-8", errors="replace") for path in store["document"]
    ]
    sha256 = hashlib.sha256(store[["document", "topic", "text"]].to_csv(index=False).encode()).hexdigest()
    assert sha256 == store_sha256, (sha256, store_sha256)
    texts = {" ".join(text.split()) for text in store["text"]}
    assert len(texts) == len(store), "an article twice in the store"
    assert set(queries["split"]) == {"test", "val"}, set(queries["split"])


def assert_metrics_follow_from_ranks(queries, ranks, params, children) -> None:
    """Each retriever's test recall@k and MRR@10, their bootstrap intervals, and the hybrid's paired
    differences, computed here from the logged ranks (the notebook's draws: the same for every retriever),
    are what the child runs logged; and the claim: the hybrid is not worse than either retriever on recall@5
    (the upper end of the paired interval of the difference is 0 or more), for both kinds of queries."""
    seed, resamples = int(params["seed"]), int(params["bootstrap_resamples"])
    level = float(params["confidence_level"])
    tails = [(1 - level) / 2, (1 + level) / 2]
    test_ids = queries.loc[queries["split"] == "test", "id"].tolist()
    for kind in KINDS:
        rows = ranks[ranks["queries"] == kind]
        assert rows["id"].tolist() == test_ids, f"{kind}: the ranks are not those of the test queries"
        n = len(rows)
        draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        per_query = {}
        for retriever in RETRIEVERS:
            rank = rows[f"rank_{retriever}"].to_numpy()
            assert rank.min() >= 1, (kind, retriever)
            per_query[retriever] = {f"recall_at_{k}": (rank <= k).astype(float) for k in CUTOFFS}
            per_query[retriever]["mrr_at_10"] = np.where(rank <= 10, 1.0 / rank, 0.0)
            logged = children[retriever].data.metrics
            for metric, values in per_query[retriever].items():
                low, high = np.quantile(values[draws].mean(axis=1), tails)
                key = f"test_{kind}_{metric}"
                got = [logged[key], logged[f"{key}_ci_low"], logged[f"{key}_ci_high"]]
                assert np.allclose(got, [values.mean(), low, high], rtol=0, atol=1e-9), (retriever, key, got)
        logged = children["hybrid"].data.metrics
        for other in ("bm25", "dense"):
            difference = per_query["hybrid"]["recall_at_5"] - per_query[other]["recall_at_5"]
            low, high = np.quantile(difference[draws].mean(axis=1), tails)
            key = f"test_{kind}_recall_at_5_minus_{other}"
            got = [logged[key], logged[f"{key}_ci_low"], logged[f"{key}_ci_high"]]
            assert np.allclose(got, [difference.mean(), low, high], rtol=0, atol=1e-9), (key, got)
            assert high >= 0, f"{kind}: the hybrid is worse than {other} on recall@5: {got}"


def assert_hybrid_chosen_on_validation(fusion: pd.DataFrame, params, hybrid) -> None:
    """The hybrid is the grid's best on validation (recall@5, then MRR@10, then the first), as logged."""
    assert fusion["chosen"].sum() == 1, fusion
    best = max(
        range(len(fusion)),
        key=lambda i: (fusion["val_recall_at_5"].iloc[i], fusion["val_mrr_at_10"].iloc[i], -i),
    )
    assert bool(fusion["chosen"].iloc[best]), fusion
    method, weight = fusion["method"].iloc[best], float(fusion["dense_weight"].iloc[best])
    for logged in (params, hybrid.data.params):
        assert (logged["fusion"], float(logged["dense_weight"])) == (method, weight), (logged, method, weight)


def assert_answers_cite_retrieved_ids(answers: list[dict], ranks, params, metrics) -> None:
    """Every answer cites at least one id, and each id it cites (parsed here from its text) is among the
    passages its question was given; those passages are the hybrid's first for the question (its article is
    among them exactly when the logged hybrid rank is that high); the logged rates are the answers'."""
    assert len(answers) == int(params["questions"]), len(answers)
    context = int(params["context_passages"])
    hybrid_rank = ranks[ranks["queries"] == "title"].set_index("id")["rank_hybrid"]
    for answer in answers:
        assert len(answer["retrieved"]) == context, answer
        assert (answer["id"] in answer["retrieved"]) == (hybrid_rank[answer["id"]] <= context), answer
        cited = CITED.findall(answer["answer"])
        assert cited == answer["cited"], (cited, answer["cited"])
        assert cited, f"no citation: {answer['answer']!r}"
        made_up = [c for c in cited if c not in answer["retrieved"]]
        assert not made_up, f"{made_up} cited but not retrieved: {answer['answer']!r}"
    rates = {
        "answers_citing_retrieved": 1.0,
        "answers_citing_gold": np.mean([answer["id"] in answer["cited"] for answer in answers]),
        "gold_in_prompt": np.mean([answer["id"] in answer["retrieved"] for answer in answers]),
    }
    for key, value in rates.items():
        assert np.isclose(metrics[key], value, rtol=0, atol=1e-9), (key, metrics[key], value)
