"""The region-graph store, against SQLite and a real MongoDB wire-protocol server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from funlib.geometry import Roi

from lsdflow.core.io.graphstore import (
    Edges,
    GraphStoreError,
    Nodes,
    default_graph_url,
    open_graph_store,
    redact,
)


@pytest.fixture
def store(graph_url):
    # a fresh sample per test: MongoDB collections outlive a test
    with open_graph_store(graph_url, f"s{uuid.uuid4().hex[:8]}") as s:
        yield s


def _nodes(ids, z0=0.0):
    ids = np.asarray(ids, dtype=np.uint64)
    centers = np.stack([np.full(len(ids), z0), ids * 10.0, ids * 20.0], axis=1)
    return Nodes(ids, centers, np.arange(1, len(ids) + 1))


def test_nodes_and_edges_round_trip(store):
    big = np.uint64(2**40 + 5)  # ids beyond 32 bits survive
    store.write_nodes(0, _nodes([1, 2, 3]))
    store.write_nodes(1, Nodes(np.array([big], np.uint64), np.array([[5.0, 6.0, 7.0]]), np.array([9])))
    store.write_edges("hist_quant_50", 0, Edges(np.array([1, 2], np.uint64), np.array([2, big], np.uint64), np.array([0.1, np.nan])))
    nodes = store.read_nodes()
    order = np.argsort(nodes.ids)
    assert nodes.ids[order].tolist() == [1, 2, 3, int(big)]
    assert nodes.centers[order][3].tolist() == [5.0, 6.0, 7.0]
    assert nodes.sizes[order].tolist() == [1, 2, 3, 9]
    edges = store.read_edges("hist_quant_50")
    order = np.argsort(edges.u)
    assert edges.u[order].tolist() == [1, 2] and edges.v[order].tolist() == [2, int(big)]
    assert edges.merge_score[order][0] == pytest.approx(0.1) and np.isnan(edges.merge_score[order][1])
    assert store.merge_functions() == ["hist_quant_50"]
    assert len(store.read_edges("mean")) == 0


def test_rewriting_a_block_replaces_it(store):
    """A retried block must not duplicate nodes or edges."""
    for _ in range(3):
        store.write_nodes(7, _nodes([10, 11]))
        store.write_edges("mean", 7, Edges(np.array([10], np.uint64), np.array([11], np.uint64), np.array([0.3])))
    assert sorted(store.read_nodes().ids.tolist()) == [10, 11]
    assert len(store.read_edges("mean")) == 1
    store.write_nodes(7, _nodes([12]))  # the block's new result replaces the old one
    assert store.read_nodes().ids.tolist() == [12]


def test_nodes_by_position_meta_and_clearing(store):
    store.write_nodes(0, _nodes([1, 2, 3], z0=0.0))
    store.write_nodes(1, _nodes([4, 5], z0=100.0))
    inside = store.read_nodes(Roi((50, 0, 0), (100, 1000, 1000)))
    assert sorted(inside.ids.tolist()) == [4, 5]
    store.set_meta("fragments_key", {"a": 1})
    assert store.get_meta("fragments_key") == {"a": 1}
    assert store.get_meta("missing", "default") == "default"
    store.write_edges("mean", 0, Edges(np.array([1], np.uint64), np.array([2], np.uint64), np.array([0.5])))
    store.clear_edges("mean")
    store.clear_nodes()
    assert len(store.read_nodes()) == 0 and len(store.read_edges("mean")) == 0


def test_bad_urls_are_clear_errors_without_passwords(tmp_path):
    with pytest.raises(GraphStoreError, match="expected sqlite"):
        open_graph_store("postgres://db/graph")
    with pytest.raises(GraphStoreError, match="sqlite:///absolute"):
        open_graph_store("sqlite://relative.db")
    with pytest.raises(GraphStoreError, match="letters, digits") as e:
        open_graph_store(f"sqlite:///{tmp_path / 'g.db'}", "bad sample!")
    url = "mongodb://alice:s3cret@127.0.0.1:1/db"
    assert redact(url) == "mongodb://alice:***@127.0.0.1:1/db"
    with pytest.raises(GraphStoreError) as e:
        from lsdflow.core.io.graphstore import MongoGraphStore

        MongoGraphStore(url, "sample", timeout_ms=200)
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_default_graph_url_lies_beside_the_container(tmp_path):
    assert default_graph_url(tmp_path / "sample.zarr") == f"sqlite:///{tmp_path / 'sample.graph.db'}"


def test_pieces_of_a_stitched_fragment_read_as_one_node(store):
    """A fragment cut by a block face keeps one id; each block stores its part."""
    store.write_nodes(0, Nodes(np.array([5, 9], np.uint64), np.array([[0.0, 0, 0], [1, 1, 1]]), np.array([3, 1])))
    store.write_nodes(1, Nodes(np.array([5], np.uint64), np.array([[40.0, 0, 0]]), np.array([1])))
    nodes = store.read_nodes()
    assert nodes.ids.tolist() == [5, 9] and nodes.sizes.tolist() == [4, 1]
    assert nodes.centers[0].tolist() == [10.0, 0.0, 0.0]  # size-weighted


def test_boundary_statistics_round_trip_and_sum_over_blocks(store):
    from lsdflow.core.segment.region_merging import EdgeStatistics, boundary_statistics, initial_scores

    rng = np.random.default_rng(0)
    fragments = np.repeat(np.arange(1, 5, dtype=np.uint64), 4)[:, None, None] * np.ones((1, 3, 3), np.uint64)
    affs = rng.uniform(0, 1, (3, *fragments.shape)).astype(np.float32)
    whole = boundary_statistics(affs, fragments)
    for block, z in enumerate((slice(0, 8), slice(8, None))):
        for _ in range(2):  # a retried block replaces its statistics
            store.write_statistics(block, boundary_statistics(affs, fragments, (z, slice(None), slice(None))))
    read = store.read_statistics()
    assert read.u.tolist() == [1, 2, 3] and read.v.tolist() == [2, 3, 4]
    for field in ("hist_edge", "hist_bin", "hist_count", "counts"):
        assert np.array_equal(getattr(read, field), getattr(whole, field)), field
    assert np.allclose(read.sums, whole.sums)
    assert np.array_equal(initial_scores(read, "hist_quant_50"), initial_scores(whole, "hist_quant_50"))
    store.clear_statistics()
    assert len(store.read_statistics()) == 0 and len(EdgeStatistics.empty()) == 0
