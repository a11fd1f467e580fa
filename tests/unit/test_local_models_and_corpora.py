"""werkbank_lab.local_models (a shipped GGUF model converted once, found in a fixed order) and
werkbank_lab.corpora (BBC News deduplicated, split per topic)."""

from __future__ import annotations

import threading
import time

import pytest

from werkbank_lab import corpora, local_models


@pytest.fixture
def fake_conversion(monkeypatch):
    """Conversion without transformers: writes a stand-in folder slowly, counting the conversions."""
    calls = []

    def write(model, folder):
        calls.append(folder)
        time.sleep(0.2)  # long enough for a second converter to arrive while the first works
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(local_models, "_write_transformers_folder", write)
    return calls


def test_a_model_folder_given_or_set_wins_over_the_other_copies(tmp_path, monkeypatch, fake_conversion):
    given = tmp_path / "given"
    (given / local_models.SMOLLM2.name).mkdir(parents=True)
    (given / local_models.SMOLLM2.name / local_models.COMPLETE).write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert local_models.model_path(models_dir=given) == given / local_models.SMOLLM2.name
    monkeypatch.setenv("WERKBANK_MODELS_DIR", str(given))
    assert local_models.model_path() == given / local_models.SMOLLM2.name
    assert fake_conversion == []


def test_without_a_complete_copy_it_converts_once_into_the_cache(tmp_path, monkeypatch, fake_conversion):
    monkeypatch.setattr(local_models, "site_models_dir", lambda: tmp_path / "site")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WERKBANK_MODELS_DIR", raising=False)
    # A folder left half-written by a converter that was killed is not a copy: it is replaced.
    incomplete = tmp_path / "cache" / "werkbank" / "models" / local_models.SMOLLM2.name
    incomplete.mkdir(parents=True)
    (incomplete / "model.safetensors").write_text("half")

    found = []
    threads = [threading.Thread(target=lambda: found.append(local_models.model_path())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [incomplete] * 3
    assert len(fake_conversion) == 1  # the others waited for the lock and found it done
    assert sorted(p.name for p in incomplete.iterdir()) == [local_models.COMPLETE, "config.json"]
    assert oct(incomplete.stat().st_mode & 0o777) == "0o755"
    # No temporary folders stay behind.
    assert [p.name for p in incomplete.parent.iterdir() if not p.name.endswith(".lock")] == [incomplete.name]


def test_the_installed_copy_is_complete_and_loads():
    """deploy/install.sh converted SmolLM2 into the environment; it loads with its chat template."""
    folder = local_models.model_path()
    assert folder.parent == local_models.site_models_dir(), folder
    model, tokenizer = local_models.load()
    assert sum(p.numel() for p in model.parameters()) == local_models.SMOLLM2.parameters
    assert not model.training
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user" in prompt
    # What install.sh asks before it converts (again).
    assert local_models.main(["check"]) == 0


def test_check_says_whether_every_copy_is_complete(tmp_path):
    assert local_models.main(["check", "--into", str(tmp_path)]) == 1
    for name in local_models.MODELS:
        (tmp_path / name).mkdir()
        (tmp_path / name / local_models.COMPLETE).touch()
    assert local_models.main(["check", "--into", str(tmp_path)]) == 0


def test_bbc_news_once_per_text():
    corpus = corpora.bbc_news()
    articles = corpus.articles
    assert corpus.files_read == 2225 and corpus.duplicates_removed == 100 and len(articles) == 2125
    assert corpus.topics == ["business", "entertainment", "politics", "sports", "tech"]
    assert articles["text"].map(corpora.normalised).is_unique
    assert articles["document"].is_unique
    assert (articles["label"] == articles["topic"].map(corpus.topics.index)).all()
    first = articles.iloc[0]
    assert first["title"] == first["text"].strip().splitlines()[0].strip()


def test_split_per_topic_is_disjoint_reproducible_and_refuses_too_many():
    articles = corpora.bbc_news().articles
    counts = {"test": 4, "val": 3, "train": 5}
    parts = corpora.split_per_topic(articles, counts, seed=7)
    for name, count in counts.items():
        assert (parts[name].groupby("topic").size() == count).all(), name
    ids = [set(part["document"]) for part in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = corpora.split_per_topic(articles, counts, seed=7)
    assert all(parts[n].equals(again[n]) for n in counts)
    # The test part does not depend on how large the later parts are.
    bigger = corpora.split_per_topic(articles, {"test": 4, "val": 30, "train": 50}, seed=7)
    assert bigger["test"].equals(parts["test"])
    with pytest.raises(ValueError, match="smallest topic has 347"):
        corpora.split_per_topic(articles, {"test": 300, "train": 48}, seed=7)


def test_content_sha256_sees_a_changed_text():
    part = corpora.split_per_topic(corpora.bbc_news().articles, {"test": 2}, seed=0)["test"]
    changed = part.copy()
    changed.loc[0, "text"] = changed.loc[0, "text"] + "."
    assert corpora.content_sha256(part) != corpora.content_sha256(changed)
