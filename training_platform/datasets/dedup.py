"""Deduplication of a dataset version, in three stages, each on the rows the last one kept:

  exact     rows whose text is the same after normalisation (case, spaces): a hash
  near      MinHash LSH (datasketch) on character 5-grams; a pair counts when its estimated
            Jaccard similarity reaches the threshold
  semantic  the bundled MiniLM's embeddings in Milvus; each row's nearest neighbours whose
            cosine similarity reaches the threshold

Pairs join clusters (union-find); a cluster keeps its first row and drops the others. The
same stages against another dataset (`against`) give a contamination report: rows of this one
that match a row of the other, all dropped when the review is accepted.
Nothing here writes a dataset: the review is stored, and accepting it writes a new version.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training_platform.datasets import analysis, formats

STAGES = ("exact", "near", "semantic")
# Above this many rows the semantic stage clusters (SemDeDup) instead of asking the vector store
# for every row's neighbours; clusters hold about ROWS_PER_CLUSTER rows.
SEMDEDUP_MIN_ROWS = 20_000
ROWS_PER_CLUSTER = 1_000
SHINGLE = 5
NUM_PERM = 128
MAX_SHOWN_CLUSTERS = 500
MAX_TEXT = 300


def row_text(fmt: str, row: Any, number: int) -> str:
    """The text of a row that duplicates are judged on: its task row's strings, in order."""
    task_row = formats.convert_row(fmt, formats.TASK_OF_FORMAT[fmt], row, number)
    return "\n".join(analysis.strings_of(task_row, _NOT_JUDGED))


# Keys whose values are labels of a row, not its text.
_NOT_JUDGED = frozenset({"extra_info", "role", "style", "data_source", "ability"})


@dataclass
class Cluster:
    """Rows found to be one: the kept row and the dropped ones with their similarity to it."""

    stage: str
    kept: int
    dropped: list[tuple[int, float]] = field(default_factory=list)


class _Union:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def join(self, a: int, b: int) -> None:
        first, second = self.find(a), self.find(b)
        if first != second:  # the smaller row number leads: the first occurrence is kept
            self.parent[max(first, second)] = min(first, second)


def _clusters(stage: str, pairs: dict[tuple[int, int], float], union: _Union) -> list[Cluster]:
    for a, b in pairs:
        union.join(a, b)
    best: dict[int, float] = {}
    members: dict[int, set[int]] = {}
    for (a, b), score in pairs.items():
        members.setdefault(union.find(a), set()).update((a, b))
        for item in (a, b):
            best[item] = max(best.get(item, 0.0), score)
    return [
        Cluster(stage, lead, [(row, round(best[row], 4)) for row in sorted(rows) if row != lead])
        for lead, rows in sorted(members.items())
    ]


def exact_pairs(texts: dict[int, str]) -> dict[tuple[int, int], float]:
    """Pairs (first row, later row) of the same normalised text."""
    first: dict[str, int] = {}
    pairs = {}
    for number, text in sorted(texts.items()):
        key = hashlib.sha256(analysis.normalized_text(text).encode()).hexdigest()
        if key in first:
            pairs[(first[key], number)] = 1.0
        else:
            first[key] = number
    return pairs


def _minhash(text: str) -> Any:
    from datasketch import MinHash

    normal = analysis.normalized_text(text)
    grams = {normal[i : i + SHINGLE] for i in range(max(1, len(normal) - SHINGLE + 1))}
    signature = MinHash(num_perm=NUM_PERM)
    signature.update_batch([g.encode() for g in grams])
    return signature


def near_pairs(
    texts: dict[int, str], threshold: float, against: dict[int, str] | None = None
) -> dict[tuple[int, int], float]:
    """Pairs whose MinHash-estimated Jaccard similarity of 5-grams reaches the threshold
    (with `against`: pairs (its row as -number, a row of texts))."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    signatures: dict[int, Any] = {}
    pairs: dict[tuple[int, int], float] = {}
    if against is not None:
        for number, text in against.items():
            signatures[-number] = _minhash(text)
            lsh.insert(str(-number), signatures[-number])
    for number, text in sorted(texts.items()):
        signature = _minhash(text)
        for key in lsh.query(signature):
            other = int(key)
            score = float(signature.jaccard(signatures[other]))
            if score >= threshold:
                pairs[(min(other, number), max(other, number))] = score
        if against is None:
            signatures[number] = signature
            lsh.insert(str(number), signature)
    return pairs


def semdedup_pairs(
    numbers: Sequence[int], vectors: Any, threshold: float, *, clusters: int | None = None
) -> dict[tuple[int, int], float]:
    """SemDeDup (Abbas et al., 2023): k-means over the unit embeddings (scikit-learn, seeded),
    then every pair inside a cluster whose cosine similarity reaches the threshold. Pairs that
    k-means puts in different clusters are not seen: the price of not comparing every row with
    every other."""
    import numpy as np

    count = len(numbers)
    k = clusters or max(1, math.ceil(count / ROWS_PER_CLUSTER))
    if k > 1:
        from sklearn.cluster import MiniBatchKMeans

        labels = MiniBatchKMeans(
            n_clusters=k, random_state=0, n_init=3, batch_size=4096
        ).fit_predict(vectors)
    else:
        labels = np.zeros(count, dtype=int)
    pairs: dict[tuple[int, int], float] = {}
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if len(members) < 2:
            continue
        block = vectors[members]
        similar = block @ block.T
        first, second = np.nonzero(np.triu(similar >= threshold, k=1))
        for i, j in zip(first.tolist(), second.tolist(), strict=True):
            a, b = numbers[members[i]], numbers[members[j]]
            pairs[(min(a, b), max(a, b))] = float(similar[i, j])
    return pairs


def semantic_pairs(
    texts: dict[int, str],
    threshold: float,
    search: Callable[[Sequence[int], Any, Sequence[int], Any], list[list[tuple[int, float]]]],
    against: dict[int, str] | None = None,
) -> dict[tuple[int, int], float]:
    """Pairs whose embeddings' cosine similarity reaches the threshold: every row's nearest
    neighbours among the indexed rows (this set's, or `against`'s as -number). `search(ids,
    vectors, query_ids, queries)` indexes the vectors and returns each query's neighbours.
    A set of more than SEMDEDUP_MIN_ROWS rows is clustered instead (semdedup_pairs)."""
    from training_platform.datasets.vectors import embed

    numbers = sorted(texts)
    vectors = embed([texts[n] for n in numbers])
    if against is None and len(numbers) > SEMDEDUP_MIN_ROWS:
        return semdedup_pairs(numbers, vectors, threshold)
    if against is None:
        indexed_ids, indexed = numbers, vectors
    else:
        others = sorted(against)
        indexed_ids, indexed = [-n for n in others], embed([against[n] for n in others])
    pairs: dict[tuple[int, int], float] = {}
    for number, hits in zip(numbers, search(indexed_ids, indexed, numbers, vectors), strict=True):
        for other, score in hits:
            if other != number and score >= threshold:
                key = (min(other, number), max(other, number))
                pairs[key] = max(pairs.get(key, 0.0), score)
    return pairs


def run(
    rows: dict[int, str],
    *,
    stages: Sequence[str],
    near_threshold: float,
    semantic_threshold: float,
    search: Callable[..., list[list[tuple[int, float]]]] | None = None,
    against: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The review of a dedup: the clusters of each stage (or, against another set, the rows
    that match it), the rows to drop and counts per stage."""
    remaining = dict(rows)
    clusters: list[Cluster] = []
    counts: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "exact":
            if against is None:
                pairs = exact_pairs(remaining)
            else:
                both = {**remaining, **{-n: t for n, t in against.items()}}
                pairs = {(a, b): s for (a, b), s in exact_pairs(both).items() if (a < 0) != (b < 0)}
        elif stage == "near":
            pairs = near_pairs(remaining, near_threshold, against)
        else:
            assert search is not None
            pairs = semantic_pairs(remaining, semantic_threshold, search, against)
        found = _clusters(stage, pairs, _Union())
        dropped = {row for c in found for row, _ in c.dropped}
        if against is not None:  # every matching row of this set goes, whoever leads
            dropped = {row for pair in pairs for row in pair if row > 0}
        for row in dropped:
            remaining.pop(row, None)
        counts[stage] = {"clusters": len(found), "dropped": len(dropped)}
        if stage == "semantic":
            clustered = against is None and len(remaining) + len(dropped) > SEMDEDUP_MIN_ROWS
            counts[stage]["method"] = "semdedup" if clustered else "neighbours"
        clusters += found
    dropped_rows = sorted(set(rows) - set(remaining))

    def shown(number: int) -> dict[str, Any]:
        text = rows.get(number) if number > 0 else (against or {}).get(-number)
        return {"row": abs(number), "against": number < 0, "text": (text or "")[:MAX_TEXT]}

    return {
        "rows": len(rows),
        "kept": len(remaining),
        "dropped": len(dropped_rows),
        "stages": counts,
        "dropped_rows": dropped_rows,
        "clusters": [
            {
                "stage": c.stage,
                "kept": shown(c.kept),
                "dropped": [shown(row) | {"similarity": score} for row, score in c.dropped],
            }
            for c in clusters[:MAX_SHOWN_CLUSTERS]
        ],
        "clusters_total": len(clusters),
    }
