"""``Node``: a Pydantic model whose ``__call__`` return annotation is its outgoing edges.

Everything bae knows about a node class (field roles, successors, whether bae or
custom logic routes it, which services it needs) is read once from its type
annotations into a ``NodeSpec``, so the graph, the prompts and the fingerprints all
agree on one reading of the user's types.
"""

from __future__ import annotations

import dis
import enum
import hashlib
import inspect
import json
import sys
import types
import typing
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from bae.markers import Bind, Context, Dep

if TYPE_CHECKING:
    from bae.lm import LM

# Node classes by module and name, so forward references resolve for classes defined
# inside functions (tests, notebooks) as well as at module level.
_NODE_CLASSES: dict[str, weakref.WeakValueDictionary[str, type[Node]]] = {}


class Node(BaseModel):
    """Base class for graph nodes. Subclass it; the class name and docstring are the prompt.

    The default ``__call__`` is terminal (``-> None``): a node that declares no
    successors ends the run.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __call__(self, lm: LM) -> None: ...

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _NODE_CLASSES.setdefault(cls.__module__, weakref.WeakValueDictionary())[cls.__name__] = cls


@dataclass(frozen=True)
class FieldSpec:
    """One model field with its role and the description shown to the LM."""

    name: str
    annotation: Any
    description: str
    required: bool


@dataclass(frozen=True)
class DepSpec:
    """One injected ``Dep`` parameter of a custom ``__call__``."""

    name: str
    annotation: Any


class AnnotationProblem(Exception):
    """An annotation that names something bae cannot resolve or use."""


@dataclass(frozen=True)
class NodeSpec:
    """The static reading of one node class."""

    cls: type[Node]
    doc: str  # the class's own docstring, whitespace collapsed: part of the prompt and the fingerprint
    context: tuple[FieldSpec, ...]
    generated: tuple[FieldSpec, ...]
    bound: tuple[FieldSpec, ...]
    successors: tuple[type[Node], ...]
    may_end: bool
    routed: bool
    deps: tuple[DepSpec, ...]
    problems: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def decides(self) -> bool:
        """Whether bae asks the LM to choose the successor (a union, or an optional edge)."""
        return self.routed and len(self.successors) + int(self.may_end) > 1

    @property
    def visible(self) -> tuple[FieldSpec, ...]:
        """The fields the LM may see when this node's state is an input (all but ``Bind``)."""
        return self.context + self.generated

    @cached_property
    def choices(self) -> tuple[str, ...]:
        """The answers of this node's choice predictor: successor names, then ``"None"``."""
        return tuple(s.__name__ for s in self.successors) + (("None",) if self.may_end else ())

    def successor(self, name: str) -> type[Node] | None:
        return next((s for s in self.successors if s.__name__ == name), None)


_SPECS: dict[type[Node], NodeSpec] = {}


def spec_of(cls: type[Node]) -> NodeSpec:
    """The ``NodeSpec`` of a node class; cached once its annotations resolve."""
    cached = _SPECS.get(cls)
    if cached is not None:
        return cached
    spec = _read_spec(cls)
    if not spec.problems:
        _SPECS[cls] = spec
    return spec


def _namespaces(cls: type[Node]) -> tuple[dict[str, Any], dict[str, Any]]:
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module is not None else {}
    localns: dict[str, Any] = dict(_NODE_CLASSES.get(cls.__module__, {}))
    return globalns, localns


def _resolve(annotation: Any, globalns: dict[str, Any], localns: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        return typing.get_type_hints(holder, globalns, localns, include_extras=True)["value"]
    except Exception as exc:  # NameError, SyntaxError, TypeError: all mean "does not resolve"
        raise AnnotationProblem(f"{annotation!r} does not resolve ({exc})") from exc


def _read_spec(cls: type[Node]) -> NodeSpec:
    globalns, localns = _namespaces(cls)
    problems: list[str] = []
    if not cls.__pydantic_complete__:
        try:
            cls.model_rebuild(_types_namespace={**globalns, **localns})
        except Exception as exc:
            problems.append(f"{cls.__name__}: field annotations do not resolve ({exc})")
    context, generated, bound = _read_fields(cls)

    call = cls.__call__
    raw = dict(getattr(call, "__annotations__", {}))
    successors: tuple[type[Node], ...] = ()
    may_end = True
    try:
        successors, may_end = _read_edges(_resolve(raw.get("return"), globalns, localns))
    except AnnotationProblem as exc:
        problems.append(f"{cls.__name__}.__call__ return annotation {exc}")
    deps, dep_problems = _read_deps(cls, raw, globalns, localns)
    problems.extend(dep_problems)
    return NodeSpec(
        cls=cls,
        doc=" ".join((cls.__dict__.get("__doc__") or "").split()),
        context=context,
        generated=generated,
        bound=bound,
        successors=successors,
        may_end=may_end,
        routed=_has_no_logic(call),
        deps=deps,
        problems=tuple(problems),
    )


def _read_fields(cls: type[Node]) -> tuple[tuple[FieldSpec, ...], ...]:
    context: list[FieldSpec] = []
    generated: list[FieldSpec] = []
    bound: list[FieldSpec] = []
    for name, info in cls.model_fields.items():
        roles = [m for m in info.metadata if isinstance(m, Context | Bind)]
        role = roles[0] if roles else None
        description = role.description if isinstance(role, Context) else (info.description or "")
        spec = FieldSpec(name, info.annotation, description, info.is_required())
        {Context: context, Bind: bound}.get(type(role), generated).append(spec)
    return tuple(context), tuple(generated), tuple(bound)


def _read_edges(annotation: Any) -> tuple[tuple[type[Node], ...], bool]:
    if annotation is None or annotation is type(None):
        return (), True
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    successors: list[type[Node]] = []
    may_end = False
    for option in options:
        if option is type(None):
            may_end = True
        elif isinstance(option, type) and issubclass(option, Node):
            successors.append(option)
        else:
            raise AnnotationProblem(f"names {option!r}, which is not a Node subclass or None")
    return tuple(successors), may_end


def _read_deps(
    cls: type[Node], raw: dict[str, Any], globalns: dict[str, Any], localns: dict[str, Any]
) -> tuple[tuple[DepSpec, ...], list[str]]:
    params = list(inspect.signature(cls.__call__).parameters.values())[2:]  # skip self and the LM
    deps: list[DepSpec] = []
    problems: list[str] = []
    for param in params:
        where = f"{cls.__name__}.__call__ parameter {param.name!r}"
        try:
            annotation = _resolve(raw.get(param.name), globalns, localns)
        except AnnotationProblem as exc:
            problems.append(f"{where}: {exc}")
            continue
        if get_origin(annotation) is Annotated and any(isinstance(m, Dep) for m in annotation.__metadata__):
            deps.append(DepSpec(param.name, get_args(annotation)[0]))
        else:
            problems.append(f"{where} is not the LM and not annotated with Dep(): annotate it Annotated[T, Dep()]")
    return tuple(deps), problems


_NO_LOGIC = {"RESUME", "NOP", "CACHE", "RETURN_VALUE", "RETURN_CONST", "LOAD_CONST"}


def _has_no_logic(fn: Any) -> bool:
    """True for a body of only ``...`` (and a docstring): bae routes such a node itself.

    Read from bytecode rather than source so it works for classes defined anywhere,
    including ``exec``'d code and notebooks where ``inspect.getsource`` fails.
    """
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    for instruction in dis.get_instructions(code):
        if instruction.opname not in _NO_LOGIC:
            return False
        if instruction.opname in ("LOAD_CONST", "RETURN_CONST") and instruction.argval is not None:
            return False
    return True


def node_json(node: Node) -> dict[str, Any]:
    """A node's fields as JSON, ``Bind`` values left out: they are services, not data to show, log or record."""
    bound = {f.name for f in spec_of(type(node)).bound}
    return node.model_dump(mode="json", exclude=bound)


def steps_json(nodes: Iterable[Node]) -> list[dict[str, Any]]:
    """Nodes as the steps of a dataset trace: ``{"node": name, "fields": {...}}`` each."""
    return [{"node": type(n).__name__, "fields": node_json(n)} for n in nodes]


def closed_values(annotation: Any) -> list[Any] | None:
    """The values a field of this type can take when there are few and known (a ``Literal``, an enum, a
    bool, or an optional one: ``None`` last), as Python values; None for open types (text, numbers,
    structures). What the local engine chooses by likelihood, what a confidence is measured on, and
    what ``bae review`` offers as numbered options."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return closed_values(get_args(annotation)[0])
    if origin is Literal:
        return list(get_args(annotation))
    if annotation is bool:
        return [True, False]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return list(annotation)
    if origin in (Union, types.UnionType):
        values: list[Any] = []
        for option in get_args(annotation):
            found = [None] if option is type(None) else closed_values(option)
            if found is None:
                return None
            values.extend(v for v in found if v not in values)
        return values
    return None


def type_name(annotation: Any) -> str:
    """A stable, module-free spelling of a type, so fingerprints survive a change of import path."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = get_origin(annotation)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(annotation)) + "]"
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is not None:
        name = "Union" if origin in (Union, types.UnionType) else getattr(origin, "__qualname__", repr(origin))
        return f"{name}[" + ", ".join(type_name(a) for a in get_args(annotation)) + "]"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel) and not issubclass(annotation, Node):
            fields = ", ".join(f"{n}: {type_name(f.annotation)}" for n, f in annotation.model_fields.items())
            return f"{annotation.__qualname__}{{{fields}}}"
        return annotation.__qualname__
    return repr(annotation)


def schema_fingerprint(cls: type[Node]) -> str:
    """A hash of everything that shapes this node's prompts and parsing.

    Name, docstring, every field's name, type, role and description, and the
    outgoing edges. A compiled predictor is only trusted for the fingerprint it was
    compiled against: DSPy's own ``load`` zips saved fields onto the current
    signature by position and would silently corrupt a changed node.
    """
    spec = spec_of(cls)
    roles = (("context", spec.context), ("generated", spec.generated), ("bind", spec.bound))
    schema = {
        "name": cls.__name__,
        "doc": spec.doc,
        "fields": [[role, f.name, type_name(f.annotation), f.description] for role, fs in roles for f in fs],
        "successors": [s.__name__ for s in spec.successors],
        "may_end": spec.may_end,
    }
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]


def predictor_fingerprint(cls: type[Node], kind: str) -> str:
    """What a compiled predictor of ``cls`` was made for; it is stale once this differs.

    A ``make`` predictor's prompt is its node's alone: its ``schema_fingerprint`` (so make files
    compiled before choices had their own fingerprint stay valid). A ``choice`` predictor's prompt
    also shows each option: the successor's name (and the title made from it) and its docstring, and
    the ``None`` option where the node may end; its saved instructions describe the options as they
    were, so a changed option makes it stale too. A successor's fields are not in that prompt, and
    do not count.
    """
    own = schema_fingerprint(cls)
    if kind != "choice":
        return own
    spec = spec_of(cls)
    options = [[s.__name__, spec_of(s).doc] for s in spec.successors] + ([["None"]] if spec.may_end else [])
    choice = {"node": own, "options": options}
    return hashlib.sha256(json.dumps(choice, sort_keys=True).encode()).hexdigest()[:16]


def graph_fingerprint(nodes: Iterable[type[Node]]) -> str:
    """One hash over every node's fingerprint: whether a compiled version was made for this graph."""
    joined = ",".join(f"{cls.__name__}={schema_fingerprint(cls)}" for cls in nodes)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]
