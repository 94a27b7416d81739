"""The region graph of a volume: fragment nodes and scored edges, in SQLite or MongoDB.

One interface, chosen by URL:

- `sqlite:///path/graph.db` (default, a file beside the Zarr, no server). Nodes and edges
  are stored per block as packed arrays (one row per block), because SQLite cannot hand
  rows to Python as arrays: reading 10 million edges row by row builds 10 million Python
  tuples, reading them per block is a few hundred `numpy.frombuffer` calls.
- `mongodb://[user:password@]host:port/db` (pymongo; shared by workers on many nodes).
  One document per node and per edge in collections `<sample>_nodes`,
  `<sample>_edges_<merge_function>` and `<sample>_meta`, indexed on position and on
  (u, v), so other tools can query them; written with bulk inserts.

Nodes are `{id, center_z, center_y, center_x (nm), size (voxels)}`, stored per block for
the part of the fragment in that block and summed when read; edges are
`{u, v, merge_score}` per merge function, `merge_score` = NaN where waterz never merged
the edge. Boundary statistics (`region_merging.EdgeStatistics`: per edge the histogram,
sum and count of the affinities between its fragments, for the voxel pairs a block owns)
are stored per block too; the agglomeration merges their sum over the whole graph. Every
block's nodes, edges and statistics are owned by that block and replaced as a whole when it
is written again, so a retried block never duplicates anything.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np

from ..segment.region_merging import EdgeStatistics


class GraphStoreError(ValueError):
    """A graph URL that cannot be used; the message never contains a password."""


@dataclass
class Nodes:
    """Fragment nodes as arrays (length n)."""

    ids: np.ndarray  # uint64
    centers: np.ndarray  # (n, 3) float64, z/y/x in nm
    sizes: np.ndarray  # int64, voxels

    @classmethod
    def empty(cls) -> Nodes:
        return cls(np.zeros(0, np.uint64), np.zeros((0, 3)), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concatenate(cls, parts: list[Nodes]) -> Nodes:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.ids for p in parts]).astype(np.uint64),
            np.concatenate([p.centers for p in parts]).reshape(-1, 3),
            np.concatenate([p.sizes for p in parts]).astype(np.int64),
        )

    def merged(self) -> Nodes:
        """One node per id: a fragment stitched across block faces is stored as one piece
        per block (its size and center there); its node is their sum and weighted mean."""
        if len(self.ids) < 2:
            return self
        ids, index = np.unique(self.ids, return_inverse=True)
        if len(ids) == len(self.ids) and np.all(self.ids[1:] > self.ids[:-1]):
            return self
        index = index.reshape(-1)
        sizes = np.bincount(index, weights=self.sizes, minlength=len(ids))
        weights = np.maximum(self.sizes, 1)
        centers = np.stack(
            [np.bincount(index, weights=self.centers[:, a] * weights, minlength=len(ids)) for a in range(3)], axis=1
        ) / np.bincount(index, weights=weights, minlength=len(ids))[:, None]
        return Nodes(ids.astype(np.uint64), centers, sizes.astype(np.int64))


@dataclass
class Edges:
    """Region-graph edges as arrays (length m); `u < v`."""

    u: np.ndarray  # uint64
    v: np.ndarray  # uint64
    merge_score: np.ndarray  # float64, NaN = never merged

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0))

    def __len__(self) -> int:
        return len(self.u)

    @classmethod
    def concatenate(cls, parts: list[Edges]) -> Edges:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.u for p in parts]).astype(np.uint64),
            np.concatenate([p.v for p in parts]).astype(np.uint64),
            np.concatenate([p.merge_score for p in parts]).astype(np.float64),
        )


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


USER_ENV = "LSDFLOW_MONGODB_USER"
PASSWORD_ENV = "LSDFLOW_MONGODB_PASSWORD"


def credentials_to_environment(url: str) -> str:
    """`url` without its credentials, which move into this process's environment
    (`LSDFLOW_MONGODB_USER` / `LSDFLOW_MONGODB_PASSWORD`, inherited by daisy workers and
    launched cluster jobs). Everything lsdflow persists (stage descriptions for workers,
    Zarr attributes, Prefect parameters and results, logs) then holds the URL without
    them; `MongoGraphStore` takes them from the environment when it connects."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ[USER_ENV] = unquote(parts.username or "")
    os.environ[PASSWORD_ENV] = unquote(parts.password)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@"
    return url.replace(f"//{userinfo}", "//", 1)


def has_password(url: str | None) -> bool:
    return bool(url) and urlsplit(url).password is not None


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise GraphStoreError(f"{kind} {name!r}: use letters, digits, '_', '-' and '.' only")
    return name


class GraphStore(ABC):
    """Nodes and edges of one sample's region graph."""

    url: str

    @abstractmethod
    def write_nodes(self, block: int, nodes: Nodes) -> None:
        """Replace the nodes owned by `block`."""

    @abstractmethod
    def write_edges(self, merge_function: str, block: int, edges: Edges) -> None:
        """Replace the edges owned by `block` for `merge_function`."""

    @abstractmethod
    def write_statistics(self, block: int, statistics: EdgeStatistics) -> None:
        """Replace the boundary statistics owned by `block`."""

    @abstractmethod
    def read_statistics(self) -> EdgeStatistics:
        """The boundary statistics of all blocks, summed per edge."""

    @abstractmethod
    def clear_statistics(self) -> None: ...

    @abstractmethod
    def read_nodes(self, roi=None) -> Nodes:
        """All nodes, or those whose center lies in `roi` (a funlib Roi in nm)."""

    @abstractmethod
    def read_edges(self, merge_function: str) -> Edges:
        """All edges scored with `merge_function`."""

    @abstractmethod
    def get_meta(self, key: str, default=None):
        """A JSON value stored with the graph (e.g. which inputs produced it)."""

    @abstractmethod
    def set_meta(self, key: str, value) -> None: ...

    @abstractmethod
    def clear_nodes(self) -> None:
        """Remove all nodes (and so make every edge meaningless: callers clear those too)."""

    @abstractmethod
    def clear_edges(self, merge_function: str) -> None: ...

    @abstractmethod
    def merge_functions(self) -> list[str]:
        """Merge functions that have edges stored."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"


def _blob(array: np.ndarray, dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


class SQLiteGraphStore(GraphStore):
    """Per-block packed arrays in one SQLite file (WAL mode: workers on one machine may
    write concurrently; each write is one short transaction)."""

    def __init__(self, path: str | os.PathLike, sample: str = "sample"):
        self.path = Path(path)
        self.sample = _check_name("sample", sample)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS nodes (
                    sample TEXT, block INTEGER, n INTEGER,
                    min_z REAL, min_y REAL, min_x REAL, max_z REAL, max_y REAL, max_x REAL,
                    ids BLOB, centers BLOB, sizes BLOB,
                    PRIMARY KEY (sample, block));
                CREATE INDEX IF NOT EXISTS nodes_bounds ON nodes (sample, min_z, max_z);
                CREATE TABLE IF NOT EXISTS edges (
                    sample TEXT, merge_function TEXT, block INTEGER, n INTEGER,
                    u BLOB, v BLOB, merge_score BLOB,
                    PRIMARY KEY (sample, merge_function, block));
                CREATE TABLE IF NOT EXISTS statistics (
                    sample TEXT, block INTEGER, n INTEGER,
                    u BLOB, v BLOB, hist_edge BLOB, hist_bin BLOB, hist_count BLOB, sums BLOB, counts BLOB,
                    PRIMARY KEY (sample, block));
                CREATE TABLE IF NOT EXISTS meta (
                    sample TEXT, key TEXT, value TEXT, PRIMARY KEY (sample, key));
                """
            )

    def write_nodes(self, block: int, nodes: Nodes) -> None:
        centers = np.asarray(nodes.centers, dtype=np.float64).reshape(-1, 3)
        low = centers.min(axis=0) if len(nodes) else np.zeros(3)
        high = centers.max(axis=0) if len(nodes) else np.zeros(3)
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (self.sample, int(block), len(nodes), *map(float, low), *map(float, high),
                 _blob(nodes.ids, "<u8"), _blob(centers, "<f8"), _blob(nodes.sizes, "<i8")),
            )

    def write_edges(self, merge_function: str, block: int, edges: Edges) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO edges VALUES (?,?,?,?,?,?,?)",
                (self.sample, merge_function, int(block), len(edges),
                 _blob(edges.u, "<u8"), _blob(edges.v, "<u8"), _blob(edges.merge_score, "<f8")),
            )

    def write_statistics(self, block: int, statistics: EdgeStatistics) -> None:
        s = statistics
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO statistics VALUES (?,?,?,?,?,?,?,?,?,?)",
                (self.sample, int(block), len(s), _blob(s.u, "<u8"), _blob(s.v, "<u8"), _blob(s.hist_edge, "<i8"),
                 _blob(s.hist_bin, "u1"), _blob(s.hist_count, "<i8"), _blob(s.sums, "<f8"), _blob(s.counts, "<i8")),
            )

    def read_statistics(self) -> EdgeStatistics:
        rows = self._db.execute(
            "SELECT u, v, hist_edge, hist_bin, hist_count, sums, counts FROM statistics WHERE sample = ? AND n > 0",
            (self.sample,),
        )
        dtypes = ["<u8", "<u8", "<i8", "u1", "<i8", "<f8", "<i8"]
        return EdgeStatistics.concatenate(
            [EdgeStatistics(*(np.frombuffer(b, d) for b, d in zip(row, dtypes))) for row in rows]
        )

    def clear_statistics(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM statistics WHERE sample = ?", (self.sample,))

    def read_nodes(self, roi=None) -> Nodes:
        query = "SELECT ids, centers, sizes FROM nodes WHERE sample = ? AND n > 0"
        params: list = [self.sample]
        if roi is not None:
            # blocks whose node bounds overlap the ROI, then exact filtering below
            begin, end = roi.begin, roi.end
            for axis, name in enumerate("zyx"):
                query += f" AND max_{name} >= ? AND min_{name} < ?"
                params += [float(begin[axis]), float(end[axis])]
        parts = [
            Nodes(np.frombuffer(i, "<u8"), np.frombuffer(c, "<f8").reshape(-1, 3), np.frombuffer(s, "<i8"))
            for i, c, s in self._db.execute(query, params)
        ]
        nodes = Nodes.concatenate(parts).merged()
        if roi is not None:
            inside = np.all((nodes.centers >= roi.begin) & (nodes.centers < roi.end), axis=1)
            nodes = Nodes(nodes.ids[inside], nodes.centers[inside], nodes.sizes[inside])
        return nodes

    def read_edges(self, merge_function: str) -> Edges:
        rows = self._db.execute(
            "SELECT u, v, merge_score FROM edges WHERE sample = ? AND merge_function = ? AND n > 0",
            (self.sample, merge_function),
        )
        return Edges.concatenate(
            [Edges(np.frombuffer(u, "<u8"), np.frombuffer(v, "<u8"), np.frombuffer(s, "<f8")) for u, v, s in rows]
        )

    def get_meta(self, key: str, default=None):
        row = self._db.execute(
            "SELECT value FROM meta WHERE sample = ? AND key = ?", (self.sample, key)
        ).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?,?,?)", (self.sample, key, json.dumps(value))
            )

    def clear_nodes(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM nodes WHERE sample = ?", (self.sample,))

    def clear_edges(self, merge_function: str) -> None:
        with self._db:
            self._db.execute(
                "DELETE FROM edges WHERE sample = ? AND merge_function = ?", (self.sample, merge_function)
            )

    def merge_functions(self) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT merge_function FROM edges WHERE sample = ?", (self.sample,)
        )
        return sorted(r[0] for r in rows)

    def close(self) -> None:
        self._db.close()


class MongoGraphStore(GraphStore):
    """One document per node and edge; plain pymongo so any MongoDB server works."""

    READ_BATCH = 100_000

    def __init__(self, url: str, sample: str = "sample", timeout_ms: int = 4_000):
        import pymongo

        self.url = url
        self.sample = _check_name("sample", sample)
        parts = urlsplit(url)
        database = unquote(parts.path.lstrip("/")) or os.environ.get("LSDFLOW_MONGODB_DB", "lsdflow")
        _check_name("database", database)
        kwargs = {}
        if parts.username is None and os.environ.get(USER_ENV):
            # credentials from the environment keep them out of URLs, configs and logs
            kwargs = {"username": os.environ[USER_ENV], "password": os.environ.get(PASSWORD_ENV, "")}
        self._client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms, **kwargs)
        try:
            self._client.admin.command("ping")
        except pymongo.errors.PyMongoError as e:
            self._client.close()
            raise GraphStoreError(f"cannot reach MongoDB at {redact(url)}: {type(e).__name__}") from None
        self._db = self._client[database]
        self._nodes = self._db[f"{sample}_nodes"]
        self._meta = self._db[f"{sample}_meta"]
        # a fragment stitched across block faces has one document per block it lies in
        if self._nodes.index_information().get("id_1", {}).get("unique"):
            self._nodes.drop_index("id_1")  # the layout before stitching: one document per id
        self._nodes.create_index([("id", 1), ("block", 1)], unique=True)
        self._nodes.create_index([("block", 1)])
        self._nodes.create_index([("center_z", 1), ("center_y", 1), ("center_x", 1)])
        self._statistics = self._db[f"{sample}_statistics"]
        self._statistics.create_index([("block", 1)])
        self._indexed: set[str] = set()

    def _edges(self, merge_function: str):
        collection = self._db[f"{self.sample}_edges_{_check_name('merge function', merge_function)}"]
        if merge_function not in self._indexed:
            collection.create_index([("u", 1), ("v", 1)], unique=True)
            collection.create_index([("block", 1)])
            self._indexed.add(merge_function)
        return collection

    def write_nodes(self, block: int, nodes: Nodes) -> None:
        # delete + insert of the block's own documents: a retry redoes both, nothing doubles
        self._nodes.delete_many({"block": int(block)})
        if len(nodes):
            centers = np.asarray(nodes.centers, dtype=float).reshape(-1, 3).tolist()
            self._nodes.insert_many(
                [
                    {"id": i, "block": int(block), "center_z": c[0], "center_y": c[1], "center_x": c[2], "size": s}
                    for i, c, s in zip(nodes.ids.astype(np.int64).tolist(), centers, nodes.sizes.tolist())
                ],
                ordered=False,
            )

    def write_edges(self, merge_function: str, block: int, edges: Edges) -> None:
        collection = self._edges(merge_function)
        collection.delete_many({"block": int(block)})
        if len(edges):
            scores = [None if s != s else s for s in edges.merge_score.tolist()]
            collection.insert_many(
                [
                    {"u": u, "v": v, "block": int(block), "merge_score": s}
                    for u, v, s in zip(edges.u.astype(np.int64).tolist(), edges.v.astype(np.int64).tolist(), scores)
                ],
                ordered=False,
            )

    def write_statistics(self, block: int, statistics: EdgeStatistics) -> None:
        from bson import Binary

        s = statistics
        self._statistics.delete_many({"block": int(block)})
        if len(s):
            bounds = np.searchsorted(s.hist_edge, np.arange(len(s) + 1)).tolist()
            self._statistics.insert_many(
                [
                    {"u": u, "v": v, "block": int(block), "sum": total, "count": count,
                     "bins": Binary(s.hist_bin[lo:hi].tobytes()),
                     "bin_counts": Binary(np.ascontiguousarray(s.hist_count[lo:hi], "<i8").tobytes())}
                    for u, v, total, count, lo, hi in zip(
                        s.u.astype(np.int64).tolist(), s.v.astype(np.int64).tolist(), s.sums.tolist(),
                        s.counts.tolist(), bounds[:-1], bounds[1:])
                ],
                ordered=False,
            )

    def read_statistics(self) -> EdgeStatistics:
        cols = self._read_columns(self._statistics, {}, ["u", "v", "sum", "count", "bins", "bin_counts"])
        n = len(cols["u"])
        if not n:
            return EdgeStatistics.empty()
        bins = [np.frombuffer(b, "u1") for b in cols["bins"]]
        lengths = np.array([len(b) for b in bins])
        return EdgeStatistics.concatenate([EdgeStatistics(
            cols["u"].astype(np.int64).astype(np.uint64), cols["v"].astype(np.int64).astype(np.uint64),
            np.repeat(np.arange(n), lengths), np.concatenate(bins),
            np.concatenate([np.frombuffer(c, "<i8") for c in cols["bin_counts"]]),
            cols["sum"].astype(float), cols["count"].astype(np.int64),
        )])

    def clear_statistics(self) -> None:
        self._statistics.delete_many({})

    def _read_columns(self, collection, query: dict, fields: list[str]) -> dict[str, list]:
        """Columns of the matching documents, decoded batch by batch (bounded memory)."""
        import bson

        columns: dict[str, list] = {f: [] for f in fields}
        projection = {"_id": 0, **{f: 1 for f in fields}}
        for raw in collection.find_raw_batches(query, projection, batch_size=self.READ_BATCH):
            docs = bson.decode_all(raw)
            for f in fields:
                columns[f].append(np.array([d.get(f) for d in docs], dtype=object))
        return {f: (np.concatenate(c) if c else np.zeros(0, object)) for f, c in columns.items()}

    def read_nodes(self, roi=None) -> Nodes:
        query = {}
        if roi is not None:
            for axis, name in enumerate("zyx"):
                query[f"center_{name}"] = {"$gte": float(roi.begin[axis]), "$lt": float(roi.end[axis])}
        cols = self._read_columns(self._nodes, query, ["id", "center_z", "center_y", "center_x", "size"])
        return Nodes(
            cols["id"].astype(np.int64).astype(np.uint64),
            np.stack([cols[f"center_{a}"].astype(float) for a in "zyx"], axis=1).reshape(-1, 3),
            cols["size"].astype(np.int64),
        ).merged()

    def read_edges(self, merge_function: str) -> Edges:
        cols = self._read_columns(self._edges(merge_function), {}, ["u", "v", "merge_score"])
        scores = np.array([np.nan if s is None else s for s in cols["merge_score"]], dtype=float)
        return Edges(
            cols["u"].astype(np.int64).astype(np.uint64), cols["v"].astype(np.int64).astype(np.uint64), scores
        )

    def get_meta(self, key: str, default=None):
        doc = self._meta.find_one({"_id": key})
        return default if doc is None else json.loads(doc["value"])

    def set_meta(self, key: str, value) -> None:
        self._meta.replace_one({"_id": key}, {"_id": key, "value": json.dumps(value)}, upsert=True)

    def clear_nodes(self) -> None:
        self._nodes.delete_many({})

    def clear_edges(self, merge_function: str) -> None:
        self._edges(merge_function).delete_many({})

    def merge_functions(self) -> list[str]:
        prefix = f"{self.sample}_edges_"
        return sorted(
            name.removeprefix(prefix)
            for name in self._db.list_collection_names()
            if name.startswith(prefix) and self._db[name].estimated_document_count() > 0
        )

    def close(self) -> None:
        self._client.close()


def default_graph_url(container: str | os.PathLike) -> str:
    """`sqlite:///<dir>/<name>.graph.db` beside the Zarr container."""
    container = Path(container).resolve()
    return f"sqlite:///{container.parent / (container.name.removesuffix('.zarr') + '.graph.db')}"


def sample_name(container: str | os.PathLike) -> str:
    """A collection-safe sample name, unique per container: its basename (readable) and a
    hash of its resolved path, so that two containers with the same name sharing one
    graph store (many nodes, one MongoDB) never write into each other's graph."""
    import hashlib

    resolved = Path(container).resolve()
    name = resolved.name.removesuffix(".zarr").removesuffix(".n5")
    name = re.sub(r"[^A-Za-z0-9_]", "_", name) or "sample"
    return f"{name}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def open_graph_store(url: str, sample: str = "sample", retries: int = 2) -> GraphStore:
    """A graph store by URL: `sqlite:///path` or `mongodb://host:port/db`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise GraphStoreError(f"{url}: expected sqlite:///absolute/path/graph.db")
        return SQLiteGraphStore(unquote(path), sample)
    if scheme in ("mongodb", "mongodb+srv"):
        for attempt in range(retries):
            try:
                return MongoGraphStore(url, sample)
            except GraphStoreError:
                if attempt == retries - 1:
                    raise
                time.sleep(2**attempt)
    raise GraphStoreError(
        f"graph URL {redact(url)!r}: expected sqlite:///path/graph.db or mongodb://host:port/db"
    )


__all__ = [
    "Edges",
    "GraphStore",
    "GraphStoreError",
    "MongoGraphStore",
    "Nodes",
    "SQLiteGraphStore",
    "default_graph_url",
    "open_graph_store",
    "redact",
    "sample_name",
]
