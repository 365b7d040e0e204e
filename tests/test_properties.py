"""Properties, checked on generated inputs (hypothesis).

- Reading a dataset, a manifest or a version index from arbitrary bytes either succeeds or raises a
  ``BaeError`` (one line for the user): never a crash.
- A node's schema fingerprint is a function of its schema: the same for the same schema, different
  after any change of class name, docstring, field name, type, role or description.
- Saving compiled predictors and loading them back gives the same predictors: demos, instructions,
  field prefixes, and so the same prompt.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import dspy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import create_model

from bae import artifacts
from bae.compiler import node_files
from bae.dataset import load_dataset
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.graph import Graph
from bae.loader import load_graph
from bae.markers import Bind, Context
from bae.node import Node, predictor_fingerprint, schema_fingerprint
from bae.optimized_lm import open_version
from bae.optimizer import PredictorOutcome
from bae.predictors import CHOICE, MAKE, new_predictor
from tests import graphs as g
from tests.cli import EXAMPLE, ROOT, TRAIN

EXAMPLE_GRAPH = load_graph(EXAMPLE).graph
GRAPHS = {"example": EXAMPLE_GRAPH, "tests": Graph(start=g.Request)}
V1 = ROOT / "compiled" / "v1"
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ARTIFACTS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def lines_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSONL: a few JSON documents, one a line, sometimes with raw bytes spliced in."""
    line = st.one_of(values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40))
    return st.lists(line, max_size=5).map(b"\n".join)


def with_noise(data: bytes, noise: bytes, at: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + noise + data[at:]


# -- datasets ------------------------------------------------------------------------------------
def trace_records(graph: Graph) -> st.SearchStrategy[Any]:
    """Records shaped like gold traces: real node and field names with arbitrary values, or junk."""
    names = [cls.__name__ for cls in graph.nodes]
    fields = sorted({name for cls in graph.nodes for name in cls.model_fields})
    step = st.fixed_dictionaries(
        {"node": st.sampled_from(names) | st.text(max_size=8) | json_values},
        optional={"fields": st.dictionaries(st.sampled_from(fields) | st.text(max_size=6), json_values, max_size=4)},
    )
    return st.one_of(
        st.fixed_dictionaries({"trace": st.lists(step, max_size=4)}),
        st.fixed_dictionaries({"trace": json_values}),
        json_values,
    )


GOLD_LINES = TRAIN.read_text().splitlines()


@st.composite
def damaged_traces(draw: st.DrawFn) -> bytes:
    """Real gold traces of the example, some left valid, some with a step or field changed."""
    records = [json.loads(line) for line in draw(st.lists(st.sampled_from(GOLD_LINES), min_size=1, max_size=4))]
    for record in records:
        for _ in range(draw(st.integers(0, 2))):
            steps = record["trace"]
            action = draw(st.sampled_from(["field", "drop field", "node", "drop step", "copy step", "fields"]))
            if not steps:
                break
            step = steps[draw(st.integers(0, len(steps) - 1))]
            fields = step["fields"] if isinstance(step["fields"], dict) else {}
            if action == "field":
                fields[draw(st.sampled_from(sorted(fields) or ["text"]) | st.text(max_size=6))] = draw(json_values)
            elif action == "drop field" and fields:
                del fields[draw(st.sampled_from(sorted(fields)))]
            elif action == "node":
                step["node"] = draw(st.sampled_from(["Ticket", "Triage", "BillingIssue", "AccountIssue"]) | json_values)
            elif action == "drop step":
                steps.remove(step)
            elif action == "copy step":
                steps.insert(draw(st.integers(0, len(steps))), json.loads(json.dumps(step)))
            else:
                step["fields"] = draw(json_values)
    return b"\n".join(json.dumps(r, ensure_ascii=draw(st.booleans())).encode() for r in records)


@st.composite
def dataset_bytes(draw: st.DrawFn, graph: Graph) -> bytes:
    sources = [st.binary(max_size=400), lines_of(trace_records(graph)), lines_of(json_values)]
    data = draw(st.one_of(*sources, *([damaged_traces()] * 3 if graph is EXAMPLE_GRAPH else [])))
    if draw(st.booleans()):
        data = with_noise(data, draw(st.binary(min_size=1, max_size=8)), draw(st.integers(0, 1000)))
    return data


@FILES
@given(st.sampled_from(sorted(GRAPHS)).flatmap(lambda name: st.tuples(st.just(name), dataset_bytes(GRAPHS[name]))))
def test_dataset_parsing_never_crashes(case: tuple[str, bytes]) -> None:
    name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data)
        for strict in (True, False):
            try:
                dataset = load_dataset(path, GRAPHS[name], strict=strict)
            except BaeInputError as exc:
                assert exc.message and "\n" not in exc.message
            else:
                assert dataset.traces and dataset.sha256 == hashlib.sha256(data).hexdigest()
                assert all(t.path[0] == GRAPHS[name].start.__name__ for t in dataset.traces)


# -- manifests and version indexes ---------------------------------------------------------------
REAL_FILES = {rel: (V1 / rel).read_bytes() for rel in json.loads((V1 / "manifest.json").read_text())["files"]}
REAL_MANIFEST = (V1 / "manifest.json").read_bytes()
REAL_FINGERPRINTS = sorted(e["fingerprint"] for e in json.loads(REAL_MANIFEST)["files"].values() if "fingerprint" in e)
PATHS = [*REAL_FILES, "../escape.json", "/etc/passwd", "nodes/\x00.json", "nodes/" + "x" * 300 + ".json", "", "."]
PATHS += ["nodes", "manifest.json", "nodes/../../x.json", "nodes/./Triage.choice.json", "nodes\\..\\x.json"]


entries = st.fixed_dictionaries(
    {
        "sha256": st.sampled_from([hashlib.sha256(d).hexdigest() for d in REAL_FILES.values()]) | json_values,
        "kind": st.sampled_from([MAKE, CHOICE, "prompts"]) | json_values,
    },
    optional={
        "node": st.sampled_from(["Triage", "BillingIssue", "Ticket", "Nope"]) | json_values,
        "fingerprint": st.sampled_from(REAL_FINGERPRINTS) | json_values,
    },
)


@st.composite
def damaged(draw: st.DrawFn, document: dict[str, Any], paths: list[str]) -> bytes:
    """The real document with a few parts replaced, removed or added: it gets past the first checks."""
    data = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        files = data.get("files") if isinstance(data.get("files"), dict) else None
        action = draw(st.sampled_from(["set", "drop", "add entry", "set entry"] if files else ["set", "drop"]))
        if action in ("set", "drop") and data:
            key = draw(st.sampled_from(sorted(data)))
            if action == "drop":
                del data[key]
            else:
                data[key] = draw(json_values)
        elif action == "add entry" and files is not None:
            files[draw(st.one_of(st.sampled_from(paths), st.sampled_from(paths), st.text(max_size=10)))] = draw(entries)
        elif files:
            entry = files[draw(st.sampled_from(sorted(files)))]
            if isinstance(entry, dict):
                entry[draw(st.sampled_from(["sha256", "kind", "node", "fingerprint"]))] = draw(json_values)
    return json.dumps(data).encode()


def arbitrary_or_damaged(document: dict[str, Any], paths: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(  # damage the real document more often than not: it reaches the deeper checks
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        damaged(document, paths),
        damaged(document, paths),
        damaged(document, paths),
        st.just(json.dumps(document).encode()),
    ).flatmap(
        lambda data: st.one_of(
            st.just(data),
            st.builds(with_noise, st.just(data), st.binary(min_size=1, max_size=4), st.integers(0, 2000)),
        )
    )


node_file_bytes = st.sampled_from([b"", b"{}", b'{"predictor": {"demos": 3}}']) | json_values.map(
    lambda v: json.dumps(v).encode()
)


@ARTIFACTS
@given(
    arbitrary_or_damaged(json.loads(REAL_MANIFEST), PATHS),
    st.dictionaries(st.sampled_from(sorted(REAL_FILES)), node_file_bytes),
    arbitrary_or_damaged(json.loads((V1.parent / "versions.json").read_text()), ["v1", "v2"]),
)
def test_manifest_and_index_parsing_never_crash(manifest: bytes, broken: dict[str, bytes], index: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        version = root / "v1"
        for rel, data in {**REAL_FILES, **broken}.items():
            (version / rel).parent.mkdir(parents=True, exist_ok=True)
            (version / rel).write_bytes(data)
        (version / "manifest.json").write_bytes(manifest)
        (root / "versions.json").write_bytes(index)
        for read in (
            lambda: open_version(version, EXAMPLE_GRAPH),
            lambda: open_version(root, EXAMPLE_GRAPH),  # through the index's active version
            lambda: artifacts.verify_files(version, artifacts.read_manifest(version)),  # what inspect reads
            lambda: artifacts.read_versions(root),
        ):
            try:
                read()
            except BaeArtifactError as exc:
                assert exc.message and "\n" not in exc.message


# -- schema fingerprints ---------------------------------------------------------------------------
TYPES: list[Any] = [str, int, float, bool, list[str], dict[str, int], Literal["a", "b"], Literal["a", "c"], int | None]
ROLES = ("context", "generated", "bind")
identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not hasattr(Node, n) and not n.startswith("model_")
)
field_specs = st.tuples(identifiers, st.integers(0, len(TYPES) - 1), st.sampled_from(ROLES), st.text(max_size=12))
class_names = st.from_regex(r"[A-Z][A-Za-z0-9]{0,10}", fullmatch=True)
schemas = st.fixed_dictionaries(
    {
        "name": class_names,
        "doc": st.text(max_size=40),
        "fields": st.lists(field_specs, max_size=5, unique_by=lambda f: f[0]),
    }
)


def node_class(schema: dict[str, Any]) -> type[Node]:
    """A node class with this schema, as a user would declare it with ``Annotated`` roles."""

    def annotation(type_index: int, role: str, description: str) -> Any:
        tp = TYPES[type_index]
        if role == "context":
            return Annotated[tp, Context(description)]
        return Annotated[tp, Bind()] if role == "bind" else tp

    fields = {name: (annotation(t, role, desc), ...) for name, t, role, desc in schema["fields"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic's notes on field names, irrelevant here
        return create_model(schema["name"], __base__=Node, __doc__=schema["doc"], __module__=__name__, **fields)


@FAST
@given(schemas)
def test_fingerprint_is_stable_for_the_same_schema(schema: dict[str, Any]) -> None:
    assert schema_fingerprint(node_class(schema)) == schema_fingerprint(node_class(schema))
    spaced = {**schema, "doc": "\n    " + "  \n ".join(schema["doc"].split()) + "\n"}
    assert schema_fingerprint(node_class(spaced)) == schema_fingerprint(node_class(schema))  # same prompt


def test_fingerprints_are_stable_across_processes() -> None:
    """The fingerprints recorded at compile time (another process, another day) still match."""
    manifest = json.loads((V1 / "manifest.json").read_text())
    assert {cls.__name__: schema_fingerprint(cls) for cls in EXAMPLE_GRAPH.nodes} == manifest["graph"]["nodes"]
    for entry in (e for e in manifest["files"].values() if "node" in e):
        cls = EXAMPLE_GRAPH.node(entry["node"])
        assert cls is not None and entry["fingerprint"] == predictor_fingerprint(cls, entry["kind"]), entry
        if entry["kind"] == "make":  # a make predictor's fingerprint is its node's: files from before choices had
            assert entry["fingerprint"] == schema_fingerprint(cls)  # their own stay valid


@st.composite
def changed(draw: st.DrawFn, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The schema with one change a user might make, and what kind of change it was."""
    fields = list(schema["fields"])
    contexts = [i for i, f in enumerate(fields) if f[2] == "context"]
    kinds = ["class name", "doc", "add field"] + (["field name", "type", "role", "drop field"] if fields else [])
    kind = draw(st.sampled_from(kinds + (["description"] if contexts else [])))
    if kind == "class name":
        return kind, {**schema, "name": draw(class_names.filter(lambda n: n != schema["name"]))}
    if kind == "doc":
        return kind, {**schema, "doc": draw(st.text(max_size=40).filter(lambda d: d.split() != schema["doc"].split()))}
    taken = {f[0] for f in fields}
    if kind == "add field":
        return kind, {**schema, "fields": [*fields, draw(field_specs.filter(lambda f: f[0] not in taken))]}
    i = draw(st.sampled_from(contexts if kind == "description" else range(len(fields))))
    name, type_index, role, description = fields[i]
    if kind == "field name":
        fields[i] = (draw(identifiers.filter(lambda n: n not in taken)), type_index, role, description)
    elif kind == "type":
        fields[i] = (name, draw(st.integers(0, len(TYPES) - 1).filter(lambda t: t != type_index)), role, description)
    elif kind == "role":
        fields[i] = (name, type_index, draw(st.sampled_from([r for r in ROLES if r != role])), description)
    elif kind == "description":
        fields[i] = (name, type_index, role, draw(st.text(max_size=12).filter(lambda d: d != description)))
    else:
        del fields[i]
    return kind, {**schema, "fields": fields}


@FAST
@given(schemas.flatmap(lambda s: st.tuples(st.just(s), changed(s))))
def test_fingerprint_changes_with_any_schema_change(case: tuple[dict[str, Any], tuple[str, dict[str, Any]]]) -> None:
    schema, (kind, other) = case
    assert schema_fingerprint(node_class(schema)) != schema_fingerprint(node_class(other)), kind


# -- save and load round trip ----------------------------------------------------------------------
SIGNATURES = {
    key: new_predictor(EXAMPLE_GRAPH.node(key[0]), key[1]).signature for key in EXAMPLE_GRAPH.predictor_keys()
}
PREDICTORS = sorted(SIGNATURES)


@st.composite
def trained(draw: st.DrawFn) -> dict[tuple[str, str], tuple[list[dict[str, Any]], str | None]]:
    """What an optimizer leaves per predictor: demos over its fields, maybe rewritten instructions."""
    chosen = draw(st.lists(st.sampled_from(PREDICTORS), min_size=1, unique=True))
    plans = {}
    for node, kind in chosen:
        fields = SIGNATURES[(node, kind)].fields  # values of each field's own type, as real demos hold
        values = {name: st.from_type(field.annotation) for name, field in fields.items()}
        demo = st.fixed_dictionaries(values, optional={"augmented": st.booleans()})
        plans[(node, kind)] = (draw(st.lists(demo, max_size=4)), draw(st.none() | st.text(min_size=1, max_size=60)))
    return plans


def predictor_with(key: tuple[str, str], demos: list[dict[str, Any]], instructions: str | None) -> Any:
    predictor = new_predictor(EXAMPLE_GRAPH.node(key[0]), key[1])
    predictor.demos = [dspy.Example(**demo) for demo in demos]
    if instructions is not None:
        predictor.signature = predictor.signature.with_instructions(instructions)
    return predictor


def save_and_load(predictors: dict[tuple[str, str], Any]) -> Any:
    """The compile path's node files, written as a version and loaded back as ``bae run`` does."""
    outcomes = [PredictorOutcome(node, kind, len(p.demos), p) for (node, kind), p in predictors.items()]
    files, entries = node_files(EXAMPLE_GRAPH, outcomes)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts.write_version(Path(tmp), files, {"format": artifacts.FORMAT, "files": entries})
        return open_version(Path(tmp), EXAMPLE_GRAPH)


def as_dict(demo: Any) -> dict[str, Any]:
    return demo.toDict() if isinstance(demo, dspy.Example) else dict(demo)


@FILES
@given(trained())
def test_save_and_load_round_trip_predictors_exactly(
    plans: dict[tuple[str, str], tuple[list[dict[str, Any]], str | None]],
) -> None:
    predictors = {key: predictor_with(key, *plan) for key, plan in plans.items()}
    loaded = save_and_load(predictors)
    assert set(loaded.predictors) == set(predictors) and not loaded.stale and not loaded.missing
    adapter = dspy.JSONAdapter()
    for key, saved in predictors.items():
        back = loaded.predictors[key]
        assert back.dump_state() == saved.dump_state()
        assert [as_dict(d) for d in back.demos] == plans[key][0]
        assert back.signature.instructions == saved.signature.instructions
        inputs = {name: "{" + name + "}" for name in saved.signature.input_fields}
        assert adapter.format(back.signature, back.demos, inputs) == adapter.format(
            saved.signature, saved.demos, inputs
        )


def test_round_trip_of_a_readable_case() -> None:
    """One fixed case of the property, with the values spelled out."""
    demo = {"text": "refund me", "plan": "pro", "next_step": "BillingIssue", "augmented": True}
    predictor = predictor_with(("Triage", CHOICE), [demo], "Route it. Ünïcödé ✓")
    back = save_and_load({("Triage", CHOICE): predictor}).predictors[("Triage", CHOICE)]
    assert back.signature.instructions == "Route it. Ünïcödé ✓"
    assert [as_dict(d) for d in back.demos] == [demo]
