"""Vector and MinHash work of the platform against the libraries called directly.

On generated rows of short text (distinct sentences from word lists, with every tenth a small
edit of another so that near pairs exist):

  embedding  training_platform.datasets.vectors.embed (the bundled MiniLM) vs
             SentenceTransformer.encode on the same model and batch size
  insert     VectorStore.insert of every row (batches, flush, load) into Milvus Lite vs
             MilvusClient.insert of the same batches, flush and load
  search     VectorStore.search for `--queries` rows, 10 neighbours each, vs
             MilvusClient.search with the same parameters; recall@10 of the platform's answer
             against an exact numpy search (dot products of the unit vectors)
  minhash    dedup.near_pairs (5-gram MinHash LSH) vs the same datasketch calls in a loop

Each figure is rows per second; the ratio is platform / direct (>= 0.8 is the target).

    python benchmarks/dedup.py [--rows 100000] [--embed-rows 20000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from training_platform.core.settings import Settings
from training_platform.datasets import dedup
from training_platform.datasets.vectors import embed, embedder_path, open_store

SUBJECTS = ["the cat", "a teacher", "my neighbour", "the old engineer", "a small robot"]
SUBJECTS += ["the river", "our team", "the committee", "a farmer", "the library"]
VERBS = ["repairs", "describes", "paints", "measures", "forgets", "celebrates", "questions"]
VERBS += ["builds", "visits", "explains"]
OBJECTS = ["the bridge", "a violin", "the harvest", "an equation", "the garden", "a letter"]
OBJECTS += ["the museum", "a storm", "the recipe", "a telescope"]
PLACES = ["in Lisbon", "at dawn", "near the harbour", "after lunch", "during winter", "on Mars"]
PLACES += ["in the lab", "by the lake", "at school", "online"]


def texts(rows: int, seed: int = 0) -> list[str]:
    """Distinct sentences; every tenth is another with one word changed."""
    rng = random.Random(seed)
    made: list[str] = []
    for i in range(rows):
        if i % 10 == 9:
            words = made[rng.randrange(len(made))].split()
            words[rng.randrange(len(words))] = rng.choice(["quickly", "again", "today"])
            made.append(" ".join(words) + f" #{i}")
        else:
            made.append(
                f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                f"{rng.choice(PLACES)} ({i})"
            )
    return made


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def line(name: str, platform: float, direct: float, extra: str = "") -> None:
    print(
        f"{name:<10} platform {platform:10.1f} rows/s   direct {direct:10.1f} rows/s   "
        f"ratio {platform / direct:5.2f}{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--embed-rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--minhash-rows", type=int, default=20_000)
    args = parser.parse_args()
    corpus = texts(args.rows)
    print(f"{args.rows} rows of generated text, {args.queries} queries")

    # --- embedding: the same model, batch size and rows, platform first then direct --------
    from sentence_transformers import SentenceTransformer

    sample = corpus[: args.embed_rows]
    embed(sample[:64])  # both load the model before the clock starts
    direct_model = SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)
    direct_model.encode(sample[:64], batch_size=128)
    start = time.perf_counter()
    embed(sample)
    platform_embed = time.perf_counter() - start
    start = time.perf_counter()
    direct_model.encode(
        sample,
        batch_size=128,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    direct_embed = time.perf_counter() - start
    line("embedding", rate(len(sample), platform_embed), rate(len(sample), direct_embed))

    vectors = embed(corpus).astype("float32")
    ids = list(range(args.rows))
    queries = vectors[: args.queries]

    # --- insert and search on Milvus Lite: each side twice, alternating; the better run -----
    from pymilvus import DataType, MilvusClient

    def platform_side(scratch: Path) -> tuple[float, float, list[list[tuple[int, float]]]]:
        settings = Settings(home=scratch / "platform")
        with open_store(settings) as store:
            store.create("bench")
            start = time.perf_counter()
            store.insert("bench", ids, vectors)
            inserted = time.perf_counter() - start
            store.search("bench", queries[:10], 10)
            start = time.perf_counter()
            found = store.search("bench", queries, 10)
            searched = time.perf_counter() - start
            store.drop("bench")
        return inserted, searched, found

    def direct_side(scratch: Path) -> tuple[float, float]:
        client = MilvusClient(str(scratch / "direct.db"))
        if client.has_collection("bench"):
            client.drop_collection("bench")
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": 16, "efConstruction": 200},
        )
        client.create_collection("bench", schema=schema, index_params=index)
        start = time.perf_counter()
        for first in range(0, args.rows, 2000):
            batch = range(first, min(first + 2000, args.rows))
            client.insert("bench", [{"id": i, "vector": vectors[i]} for i in batch])
        client.flush("bench")
        client.load_collection("bench")
        inserted = time.perf_counter() - start
        search_params = {"metric_type": "COSINE", "params": {"ef": 64}}
        options = {"limit": 10, "output_fields": ["id"], "search_params": search_params}
        client.search("bench", data=queries[:10], **options)
        start = time.perf_counter()
        for first in range(0, len(queries), 512):
            client.search("bench", data=queries[first : first + 512], **options)
        searched = time.perf_counter() - start
        client.drop_collection("bench")
        client.close()
        return inserted, searched

    platform_runs, direct_runs = [], []
    with tempfile.TemporaryDirectory(prefix="tp-bench-dedup-") as scratch:
        for _ in range(2):
            platform_runs.append(platform_side(Path(scratch)))
            direct_runs.append(direct_side(Path(scratch)))
    platform_insert = min(r[0] for r in platform_runs)
    platform_search = min(r[1] for r in platform_runs)
    found = platform_runs[-1][2]
    direct_insert = min(r[0] for r in direct_runs)
    direct_search = min(r[1] for r in direct_runs)

    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean(
        [
            len({i for i, _ in hits} & set(truth.tolist())) / 10
            for hits, truth in zip(found, exact, strict=True)
        ]
    )
    line("insert", rate(args.rows, platform_insert), rate(args.rows, direct_insert))
    line(
        "search",
        rate(len(queries), platform_search),
        rate(len(queries), direct_search),
        f"   recall@10 {recall:.4f} (vs exact numpy search)",
    )

    # --- MinHash LSH ------------------------------------------------------------------------
    from datasketch import MinHash, MinHashLSH

    from training_platform.datasets.analysis import normalized_text

    rows = dict(enumerate(corpus[: args.minhash_rows], start=1))
    start = time.perf_counter()
    pairs = dedup.near_pairs(rows, 0.8)
    platform_minhash = time.perf_counter() - start
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=dedup.NUM_PERM)
    direct_pairs = 0
    for number, text in rows.items():
        normal = normalized_text(text)
        signature = MinHash(num_perm=dedup.NUM_PERM)
        signature.update_batch(
            [
                g.encode()
                for g in {
                    normal[i : i + dedup.SHINGLE]
                    for i in range(max(1, len(normal) - dedup.SHINGLE + 1))
                }
            ]
        )
        direct_pairs += len(lsh.query(signature))
        lsh.insert(str(number), signature)
    direct_minhash = time.perf_counter() - start
    line(
        "minhash",
        rate(len(rows), platform_minhash),
        rate(len(rows), direct_minhash),
        f"   {len(pairs)} near pairs at 0.8 ({direct_pairs} LSH candidates)",
    )


if __name__ == "__main__":
    main()
