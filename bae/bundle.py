"""``write_bundle``: one verified compiled version, its graph and pinned requirements in a folder that runs anywhere.

```
bundle/
  README.md              how to install, check, run and serve it
  config.json            version, graph, scores, the LM's name and settings (never a key or endpoint)
  requirements.txt       the installed versions of everything bae needs here, pinned
  prompts.json           each predictor's prompt (a copy of the version's)
  <graph file>.py        the graph module, at the path the manifest recorded when that is relative
  compiled/versions.json the bundled version, active
  compiled/vN/...        the version, byte for byte
```

Only a version that matches the graph is bundled: tampered files, stale or missing
predictors are refused. The folder is built beside ``out`` and renamed into place once
it has checked itself, in a fresh process, from inside the bundle.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bae import artifacts
from bae.compiled_version import CompiledVersion
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.loader import LoadedGraph, import_target, split_reference
from bae.node import graph_fingerprint, spec_of
from bae.redaction import redact
from bae.version import __version__
from bae.wording import score_text

FORMAT = 1
# LM settings that shape answers and are safe to write down; everything else (keys, bases, headers) is left out.
LM_SETTINGS = frozenset(
    {"temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "seed", "stop", "n",
     "presence_penalty", "frequency_penalty", "reasoning_effort"}
)  # fmt: skip


@dataclass(frozen=True)
class Bundle:
    """What ``write_bundle`` wrote: where, which version, and the commands that run it."""

    path: Path
    version: str
    graph: str
    lm: str
    requirements: int


def lm_config(model: Any) -> dict[str, Any]:
    """The LM's name and answer-shaping settings, from an allow-list: no key, base URL or header gets through."""
    from bae.lm_specs import lm_name

    settings = {
        name: value
        for name, value in sorted((getattr(model, "kwargs", None) or {}).items())
        if name in LM_SETTINGS and isinstance(value, str | int | float | bool | list)
    }
    return {"model": redact(lm_name(model)), "settings": settings}


def pinned_requirements(extras: set[str]) -> tuple[list[str], list[str]]:
    """``name==version`` for every installed distribution bae (with ``extras``) needs here, transitively.

    Returns the pins and the requirements that apply but are not installed. Markers are
    evaluated for this interpreter and platform: the pins describe this environment.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    absent: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    queue: list[tuple[str, frozenset[str]]] = [("bae", frozenset(extras))]
    while queue:
        name, wanted = queue.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in (*wanted, "")):
                continue
            key = canonicalize_name(requirement.name)
            try:
                pins[key] = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                absent.add(key)
                continue
            queue.append((requirement.name, frozenset(requirement.extras)))
    pins.pop("bae", None)
    return [f"{name}=={version}" for name, version in sorted(pins.items())], sorted(absent)


def _extras(model_name: str) -> set[str]:
    """The serve extra when it is installed here; the local extra when the bundle's LM is the embedded one."""
    extras = set()
    try:
        metadata.version("fastapi")
        metadata.version("uvicorn")
        extras.add("serve")
    except metadata.PackageNotFoundError:
        pass
    if model_name.startswith("local/"):
        extras.add("local")
    return extras


def _requirements_txt(model_name: str) -> tuple[str, int]:
    extras = _extras(model_name)
    try:
        pins, absent = pinned_requirements(extras)
    except metadata.PackageNotFoundError:
        raise BaeInputError("bae is not installed as a package here (pip install -e .): cannot pin its needs") from None
    lines = [
        f"# Pinned from the environment that built this bundle (Python {platform.python_version()}, "
        f"{sys.platform}), bae extras: {', '.join(sorted(extras)) or 'none'}.",
        f"# bae itself is not pinned here: install bae {__version__} from where you got it, e.g.",
        f"#   pip install 'bae[{','.join(sorted(extras | {'serve'}))}]=={__version__}'   (or the source tree)",
        *(f"# needed but not installed when bundled: {name}" for name in absent),
        *pins,
    ]
    return "\n".join(lines) + "\n", len(pins)


def _graph_file(loaded: LoadedGraph, manifest: dict[str, Any]) -> tuple[Path, str, str]:
    """The graph module's source, where it goes in the bundle, and the GRAPH argument that loads it there.

    A relative ``.py`` path recorded at compile keeps its place, so ``--compiled compiled``
    alone finds the graph from the bundle folder; anything else goes to the top level.
    """
    target, attribute = split_reference(loaded.reference)
    source = Path(getattr(import_target(target), "__file__", "") or "")
    if source.suffix != ".py" or not source.is_file():
        raise BaeInputError(f"cannot bundle {loaded.reference}: its module has no .py source file")
    recorded, _ = split_reference(manifest.get("graph", {}).get("reference", ""))
    place = Path(recorded)
    inside = recorded.endswith(".py") and not place.is_absolute() and ".." not in place.parts
    rel = place.as_posix() if inside and place.name == source.name else source.name
    return source, rel, f"{rel}:{attribute}" if attribute else rel


def _check_matches(version: CompiledVersion) -> None:
    """Refuse a version the graph cannot use as compiled: stale or missing predictors."""
    unusable = [f"{n}.{k} (stale: changed since compile)" for n, k in sorted(version.stale)]
    unusable += [f"{n}.{k} (missing: not in the graph)" for n, k in sorted(version.missing)]
    if unusable:
        raise BaeArtifactError(
            f"{version.name} does not match {version.graph.reference}: {'; '.join(unusable)}: "
            "recompile before bundling"
        )


def _self_check(folder: Path, graph_arg: str) -> None:
    """``bae inspect`` from inside the new bundle, in a fresh process: the copied graph must load on its own."""
    command = [sys.executable, "-m", "bae_cli", "inspect", "compiled", "--graph", graph_arg, "--json"]
    environment = {**os.environ, "BAE_DEBUG": ""}
    checked = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=environment, timeout=300)
    if checked.returncode not in (0, 1):  # 1 only means some predictor is naive, which a bundle may carry
        lines = checked.stderr.strip().splitlines() or [f"exit {checked.returncode}"]
        raise BaeInputError(
            f"the bundled graph does not load on its own ({lines[-1].removeprefix('bae: error: ')}): "
            "bundle a graph file whose imports are installed packages"
        )
    report = json.loads(checked.stdout)
    broken = report["invalid_files"] + [r for r in report["nodes"] if r["status"] in ("stale", "missing")]
    if broken:
        raise BaeArtifactError(f"the bundle failed its own check: {broken[0]}")


def _readme(config: dict[str, Any], graph_arg: str, lm_spec: str, example: str) -> str:
    version, scores = config["version"], config["scores"] or {}
    naive, optimized = score_text(scores.get("naive")), score_text(scores.get("optimized"))
    return f"""# {config["graph"]["start"]} graph, compiled version {version}

Built by `bae bundle` (bae {config["bae_version"]}) on {config["created_at"]}. The version was compiled on
{config["compiled"]["created_at"]} with the `{config["compiled"]["optimizer"]}` optimizer on
`{config["compiled"]["lm"]}`: dev score naive {naive} -> optimized {optimized}.
The LM this bundle is configured for: `{config["lm"]["model"]}` (`config.json`; no keys or endpoints are stored:
give them to the LM the usual way, e.g. `OPENAI_API_KEY`, `OPENAI_API_BASE`).

```bash
python3 -m venv .venv && . .venv/bin/activate
pip install -r requirements.txt        # then bae {config["bae_version"]} itself: see requirements.txt
bae inspect compiled --graph {graph_arg}   # checksums and fingerprints: exit 0 healthy
bae run {graph_arg} --compiled compiled --lm {lm_spec} --input '{example}'
BAE_TOKEN=change-me bae serve {graph_arg} --compiled compiled --lm {lm_spec} --host 0.0.0.0 --port 8000
curl -s localhost:8000/run -H 'Authorization: Bearer change-me' -H 'content-type: application/json' \\
  -d '{example}'
```

`bae serve` answers `POST /run`, `GET /health`, `/ready`, `/version`, `/stats`; OpenAPI docs at `/docs`.

| file | what it is |
|---|---|
| `compiled/` | compiled version {version} (versions.json, manifest with sha256 per file, predictors as JSON) |
| `{graph_arg.split(":")[0]}` | the graph module |
| `config.json` | version, graph fingerprint, scores, LM name and settings |
| `prompts.json` | each predictor's final prompt |
| `requirements.txt` | pinned dependencies |
"""


def write_bundle(version: CompiledVersion, out: Path, model: Any | None = None) -> Bundle:
    """Write the deployment folder ``out`` for an opened version (``bae.compiled_version.open_compiled``).

    ``model`` is the LM the bundle is meant to run with (its name and safe settings go to
    config.json); without one, the LM the version was compiled with is recorded.
    """

    if out.exists():
        raise BaeInputError(f"--out {out} already exists: give a new folder")
    _check_matches(version)
    loaded, manifest, name = version.graph, version.manifest, version.name
    source, graph_rel, graph_arg = _graph_file(loaded, manifest)
    lm = lm_config(model) if model is not None else {"model": manifest.get("lm", {}).get("model"), "settings": {}}
    lm_spec = "local" if str(lm["model"]).startswith("local/") else str(lm["model"])
    requirements, pinned = _requirements_txt(str(lm["model"]))
    config = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": name,
        "graph": {
            "file": graph_rel,
            "argument": graph_arg,
            "start": loaded.graph.start.__name__,
            "fingerprint": graph_fingerprint(loaded.graph.nodes),
        },
        "lm": lm,
        "compiled": {
            "created_at": manifest.get("created_at"),
            "optimizer": manifest.get("optimizer", {}).get("name"),
            "lm": manifest.get("lm", {}).get("model"),
        },
        "scores": manifest.get("scores"),
        "bae_version": __version__,
        "dspy_version": manifest.get("dspy_version"),
        "python_version": platform.python_version(),
    }
    example = json.dumps({f.name: "..." for f in spec_of(loaded.graph.start).visible})

    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        artifacts.copy_verified(version.path, version.files, build / "compiled" / name)
        (build / "compiled" / artifacts.VERSIONS).write_bytes(
            artifacts.dump_json(
                {"format": artifacts.FORMAT, "active": name, "versions": [artifacts.version_summary(manifest)]}
            )
        )
        (build / graph_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, build / graph_rel)
        if artifacts.PROMPTS in manifest["files"]:
            shutil.copyfile(build / "compiled" / name / artifacts.PROMPTS, build / artifacts.PROMPTS)
        (build / "config.json").write_bytes(artifacts.dump_json(config))
        (build / "requirements.txt").write_text(requirements)
        (build / "README.md").write_text(_readme(config, graph_arg, lm_spec, example))
        _self_check(build, graph_arg)
        os.chmod(build, 0o755)
        os.rename(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Bundle(out, name, graph_arg, lm_spec, pinned)
