"""Hidden-state decisions as data: the methods, the leave-one-out choice, the on-disk form and its checks.

Pure functions on made-up anchors whose right answers are known; the real model is in
``tests/test_hidden_local.py``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from bae import anchors as a
from bae.artifacts import MAX_NODE_FILE_BYTES, decisions
from bae.exceptions import BaeArtifactError


def _anchors(vectors: list[list[float]], labels: list[Any]) -> a.Anchors:
    n = len(labels)
    ids = np.tile(np.arange(a.TOP_K, dtype=np.int32), (n, 1))
    logprobs = np.tile(np.linspace(-1, -9, a.TOP_K, dtype=np.float32), (n, 1))
    return a.Anchors(labels, np.array(vectors, dtype=np.float64), ids, logprobs)


def _query(vector: list[float]) -> a.Query:
    return a.Query(np.array(vector, dtype=np.float64), np.arange(a.TOP_K), np.linspace(-1, -9, a.TOP_K))


def test_centroid_and_neighbours_decide_by_cosine() -> None:
    anchors = _anchors([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], ["x", "x", "y", "y"])
    assert a.decide("centroid", anchors, _query([1, 0.2])) == "x"
    assert a.decide("centroid", anchors, _query([0.2, 1])) == "y"
    assert a.decide("knn-c:3", anchors, _query([0.2, 1])) == "y"


def test_centring_decides_relative_to_the_mean_of_the_anchors() -> None:
    """Centred, a query is judged by where it lies from the anchors' mean: [1.4, 0.6, 1] sits just on y's
    side of the mean [1.5, 0.5, 1], while its raw direction is closer to x's."""
    anchors = _anchors([[3, 0, 1], [3, 0, 1], [0, 1, 1], [0, 1, 1]], ["x", "x", "y", "y"])
    assert a.decide("centroid", anchors, _query([1.4, 0.6, 1])) == "x"
    assert a.decide("centroid-c", anchors, _query([1.4, 0.6, 1])) == "y"
    assert a.decide("knn-c:1", anchors, _query([1.4, 0.6, 1])) == "y"


def test_kl_votes_by_the_nearest_next_token_distributions() -> None:
    n = 4
    ids = np.tile(np.arange(a.TOP_K, dtype=np.int32), (n, 1))
    sharp, flat = np.linspace(-0.1, -20, a.TOP_K), np.linspace(-3, -4, a.TOP_K)
    logprobs = np.stack([sharp, sharp, flat, flat]).astype(np.float32)
    anchors = a.Anchors(["x", "x", "y", "y"], np.zeros((n, 2)), ids, logprobs)
    assert a.decide("kl:3", anchors, a.Query(np.zeros(2), np.arange(a.TOP_K), sharp)) == "x"
    assert a.decide("kl:3", anchors, a.Query(np.zeros(2), np.arange(a.TOP_K), flat)) == "y"


def test_a_tied_vote_goes_to_the_label_of_the_nearest_anchor() -> None:
    anchors = _anchors([[1, 0], [0, 1], [0.7, 0.7], [-1, 0]], ["x", "y", "y", "x"])
    assert a.decide("knn:2", anchors, _query([0.1, 1])) == "y"
    assert a.decide("knn:2", anchors, _query([1, 0.1])) == "x"


def test_leave_one_out_finds_the_method_that_fits_the_data() -> None:
    """Two clusters per label on opposite sides: a centroid per label sits between its clusters and lands
    on the other label's side, while the nearest neighbours are right; and the reverse for a label whose
    anchors are spread thin around a tight other one. Leave-one-out must tell them apart."""
    rng = np.random.default_rng(0)
    clusters = {"x": [(10, 0), (-10, 0)], "y": [(0, 10), (0, -10)]}
    vectors, labels = [], []
    for label, centres in clusters.items():
        for cx, cy in centres:
            for _ in range(6):
                vectors.append([cx + rng.normal(0, 0.5), cy + rng.normal(0, 0.5), 1.0])
                labels.append(label)
    anchors = _anchors(vectors, labels)
    scores = a.candidates(anchors, today=0.5)
    assert scores[f"knn-c:{a.K}"] == 1.0
    assert scores["centroid-c"] < 0.9
    assert a.choose(scores) == f"knn-c:{a.K}"


def test_a_tie_goes_to_the_cheaper_method() -> None:
    assert a.choose({"demos": 0.9, "centroid": 0.9, "kl:5": 0.9}) == "centroid"
    assert a.choose({"demos": 0.9, "centroid": 0.8, "knn-c:5": 0.9}) == "knn-c:5"
    assert a.choose({"demos": 0.91, "centroid": 0.9}) == "demos"


def _section(method: str = "centroid", n: int = 3, dim: int = 4) -> dict[str, Any]:
    anchors = _anchors([[float(i + j) for j in range(dim)] for i in range(n)], ["x", "y", "x"][:n])
    return {
        "model_sha256": "ab" * 32,
        "fields": {"next_step": {"method": method, "loo": {method: 1.0}, "anchors": a.anchors_json(anchors, method)}},
    }


@pytest.mark.parametrize("method", ["centroid", "kl:5"])
def test_anchors_round_trip_through_json_as_float16(method: str) -> None:
    section = json.loads(json.dumps(_section(method)))
    assert decisions({"decisions": section}, "f") == section
    back = a.anchors_from_json(section["fields"]["next_step"]["anchors"])
    assert back.labels == ["x", "y", "x"]
    if method == "centroid":
        assert back.vectors.shape == (3, 4) and back.vectors[2, 3] == 5.0
    else:
        assert back.top_ids.shape == (3, a.TOP_K)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("model_sha256"),
        lambda s: s["fields"]["next_step"].pop("method"),
        lambda s: s["fields"]["next_step"]["anchors"].update(count=4),
        lambda s: s["fields"]["next_step"]["anchors"].update(vectors="AAAA"),
        lambda s: s["fields"]["next_step"]["anchors"].update(vectors="not base64!"),
        lambda s: s["fields"]["next_step"]["anchors"].pop("vectors"),
    ],
)
def test_malformed_anchors_are_refused(damage: Any) -> None:
    section = _section()
    damage(section)
    with pytest.raises(BaeArtifactError, match="malformed 'decisions'"):
        decisions({"decisions": section}, "nodes/Triage.choice.json")


def test_the_size_budget_holds_the_example_with_room_to_spare() -> None:
    """1 MB a node file: 64 anchors of Gemma 3 270M's 640-dim hidden state per decision, three closed
    fields, is well under it (float16, base64), and so are 200 anchors per field."""
    vectors = np.zeros((200, 640))
    anchors = a.Anchors(["x"] * 200, vectors, np.zeros((200, a.TOP_K), np.int32), np.zeros((200, a.TOP_K), np.float32))
    field = {"method": "centroid", "loo": {}, "anchors": a.anchors_json(anchors, "centroid")}
    section = {"model_sha256": "ab" * 32, "fields": {f"f{i}": field for i in range(3)}}
    assert len(json.dumps(section)) < MAX_NODE_FILE_BYTES


def test_a_node_over_the_budget_leaves_its_largest_anchors_to_the_demos() -> None:
    from bae.decisions import ClosedDecision
    from bae.hidden_compile import within_budget

    decision = ClosedDecision("N", "make", "f", ["x", "y"], "task", "f:", ("text",))
    small = _section("centroid", n=3, dim=4)["fields"]["next_step"]["anchors"]
    big = _section("centroid", n=3, dim=400)["fields"]["next_step"]["anchors"]
    chosen = {"a": (decision, "centroid", {}, small), "b": (decision, "centroid", {}, big)}
    fitted = within_budget(chosen, budget=len(json.dumps(big)))
    assert fitted["a"][1:] == ("centroid", {}, small)
    assert fitted["b"][1] == a.TODAY and fitted["b"][3] is None
    assert within_budget(chosen, budget=10**6) == chosen
