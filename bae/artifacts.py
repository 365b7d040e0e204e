"""The compiled-artifact format on disk: a public contract, JSON only, verified on read.

```
compiled/
  versions.json          {"format", "active", "versions": [summary, ...]}
  v3/
    manifest.json        provenance, scores, and a sha256 + schema fingerprint per file
    nodes/<Node>.json    the make predictor of <Node>: a bae header + DSPy predictor state
    nodes/<Node>.choice.json   the choice predictor of a deciding node
    prompts.json         each predictor's final prompt as plain messages
```

A version is built in a temporary directory beside its final place and renamed
into place under a lock, so a crash leaves no half-written version and two
compiles never clobber each other. Nothing here imports DSPy: ``bae inspect``
checks artifacts at the speed of reading JSON.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bae.exceptions import BaeArtifactError, BaeInputError
from bae.wording import counted

FORMAT = 1
MANIFEST = "manifest.json"
VERSIONS = "versions.json"
PROMPTS = "prompts.json"
_VERSION_RE = re.compile(r"^v(\d+)$")
_TEMP_PREFIX = ".building-"
# Keys DSPy's Predict.dump_state writes; anything else in a node file is refused.
PREDICTOR_KEYS = {"traces", "train", "demos", "signature", "fields", "lm", "metadata"}
NODE_FILE_KEYS = {"bae", "predictor", "decisions"}
# A node file's hidden-state anchors (``bae.anchors``) are data: bounded, and refused when malformed.
MAX_NODE_FILE_BYTES = 1 << 20
_ANCHOR_ARRAYS = {"vectors": ("dim", 2), "top_ids": ("top_k", 4), "top_logprobs": ("top_k", 2)}
# What to do about a damaged or tampered version: every such error ends with it.
RESTORE = "restore it from version control or recompile (`bae compile GRAPH`)"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n").encode()


def read_json(path: Path, what: str, hint: str = RESTORE) -> Any:
    """Parse a JSON artifact or raise one clear artifact error naming the file and what to do."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BaeArtifactError(f"{what} missing: {path}: {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BaeArtifactError(f"{what} unreadable: {path}: {exc}: {hint}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so readers see the old content or the new, never a torn file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive lock on a compiled root (which must exist), held while versions are allocated or promoted."""
    with open(root / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def version_number(name: str) -> int | None:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def existing_versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and version_number(p.name) is not None]
    return sorted(names, key=lambda n: version_number(n) or 0)


# -- versions.json ---------------------------------------------------------------------
def read_versions(root: Path) -> dict[str, Any]:
    """The version index of a compiled root; missing or corrupt is an error, never a silent reset."""
    if not root.is_dir():
        raise BaeArtifactError(f"compiled directory not found: {root}: check the path")
    hint = "restore it from version control"
    data = read_json(root / VERSIONS, "versions.json", hint)
    if not (isinstance(data, dict) and isinstance(data.get("versions"), list) and "active" in data):
        raise BaeArtifactError(f"versions.json malformed: {root / VERSIONS}: needs 'active' and 'versions': {hint}")
    if data.get("format") != FORMAT:
        raise BaeArtifactError(
            f"{root / VERSIONS} has unknown format {data.get('format')!r} (this bae reads {FORMAT}): "
            "use the bae version that wrote it"
        )
    names = [v.get("version") for v in data["versions"] if isinstance(v, dict)]
    if data["active"] is not None and data["active"] not in names:
        raise BaeArtifactError(
            f"{root / VERSIONS} names active version {data['active']!r}, which it does not list: "
            f"set 'active' to one of {', '.join(map(str, names)) or '(none)'}, or {hint}"
        )
    return data


def _write_versions(root: Path, data: dict[str, Any]) -> None:
    write_atomic(root / VERSIONS, dump_json(data))


def promote(root: Path, version: str) -> dict[str, Any]:
    """Make ``version`` the active one (a rollback is promoting an older version).

    Checked before the lock is taken as well as under it, so a refused promote writes nothing.
    """
    _check_promotable(root, read_versions(root), version)
    with locked(root):
        data = read_versions(root)
        _check_promotable(root, data, version)
        data["active"] = version
        _write_versions(root, data)
        return data


def _check_promotable(root: Path, data: dict[str, Any], version: str) -> None:
    listed = [v.get("version") for v in data["versions"] if isinstance(v, dict)]
    if version not in listed:
        raise BaeArtifactError(
            f"no version {version!r} in {root}: promote one of {', '.join(map(str, listed)) or '(none)'}"
        )
    if not (root / version / MANIFEST).is_file():
        raise BaeArtifactError(
            f"version {version} is listed but {root / version / MANIFEST} is missing: "
            f"restore {root / version} from version control or promote another version"
        )


# -- writing a version -----------------------------------------------------------------
def clean_stale_builds(root: Path) -> list[str]:
    """Remove build directories left by compiles that died (their process is gone)."""
    removed = []
    for path in root.glob(f"{_TEMP_PREFIX}*") if root.is_dir() else []:
        pid = path.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def version_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """A version's entry in versions.json: what ``bae versions`` lists, taken from its manifest."""
    scores = manifest.get("scores") or {}
    return {
        "version": manifest.get("version"),
        "created_at": manifest.get("created_at"),
        "optimizer": (manifest.get("optimizer") or {}).get("name"),
        "dataset_size": (manifest.get("dataset") or {}).get("traces"),
        "naive_score": scores.get("naive"),
        "optimized_score": scores.get("optimized"),
        "lm": (manifest.get("lm") or {}).get("model"),
        "notes": manifest.get("notes"),
    }


def write_version(root: Path, files: dict[str, Any], manifest: dict[str, Any], activate: bool = True) -> Path:
    """Write a new ``vN`` under ``root`` atomically and record it in versions.json, active if ``activate``
    (otherwise the active version stays what it was, none for a new root).

    ``files`` maps paths relative to the version dir to JSON-able data; the manifest
    gets each file's sha256 (merged into ``manifest["files"][path]``).
    """
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(root)
    build = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
    try:
        entries = manifest.setdefault("files", {})
        for rel, data in files.items():
            target = build / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(dump_json(data))
            entries.setdefault(rel, {})["sha256"] = sha256_file(target)
        with locked(root):
            versions = read_versions(root) if (root / VERSIONS).exists() else _new_index(root)
            taken = [version_number(n) or 0 for n in existing_versions(root)]
            taken += [version_number(v["version"]) or 0 for v in versions["versions"]]
            name = f"v{max(taken, default=0) + 1}"
            manifest["version"] = name
            (build / MANIFEST).write_bytes(dump_json(manifest))
            os.chmod(build, 0o755)
            os.rename(build, root / name)
            versions["versions"].append(version_summary(manifest))
            if activate:
                versions["active"] = name
            _write_versions(root, versions)
        return root / name
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def check_root(root: Path) -> None:
    """Fail before any work if ``root`` cannot take a new version: a file, or a damaged version index."""
    if root.exists() and not root.is_dir():
        raise BaeInputError(f"compiled root {root} is a file, not a directory: pass a directory to --out")
    if (root / VERSIONS).exists():
        read_versions(root)
    else:
        _new_index(root)


def _new_index(root: Path) -> dict[str, Any]:
    if existing_versions(root):
        raise BaeArtifactError(
            f"{root} has version directories but no versions.json: refusing to guess; restore it from version control"
        )
    return {"format": FORMAT, "active": None, "versions": []}


# -- reading and verifying a version ---------------------------------------------------
def locate(path: Path, version: str | None = None) -> tuple[Path | None, Path]:
    """The compiled root (None for a version dir that sits in none) and the version dir that ``path`` names:
    a compiled root's active version, its version ``version``, or a version dir itself. The one place a
    version directory is resolved (``bae.compiled_version.open_compiled`` calls it)."""
    if not path.exists():
        raise BaeArtifactError(
            f"compiled directory not found: {path}: check the path, or compile with `bae compile GRAPH`"
        )
    is_version = (path / MANIFEST).is_file() and not (path / VERSIONS).is_file()
    root = path.parent if is_version else path
    root_or_none = root if (root / VERSIONS).is_file() else None
    if version is not None:
        if version_number(version) is None or not (root / version / MANIFEST).is_file():
            listed = ", ".join(existing_versions(root)) or "(none)"
            raise BaeArtifactError(f"no version {version!r} in {root}: use one of {listed}")
        return root_or_none, root / version
    if is_version:
        return root_or_none, path
    if root_or_none is None:
        raise BaeArtifactError(
            f"{path} is not a compiled directory (no manifest.json or versions.json): pass the --out of "
            "`bae compile` or one of its vN directories"
        )
    active = read_versions(root)["active"]
    if active is None:
        raise BaeArtifactError(f"{path} has no active version: make one active with `bae promote {path} vN`")
    if not (root / active / MANIFEST).is_file():
        raise BaeArtifactError(
            f"active version {active} of {path} is missing its manifest: restore {root / active} from version "
            f"control or make another version active (`bae promote {path} vN`)"
        )
    return root, root / active


def read_manifest(version_dir: Path) -> dict[str, Any]:
    manifest = read_json(version_dir / MANIFEST, "manifest")
    if not isinstance(manifest, dict):
        raise BaeArtifactError(f"manifest malformed: {version_dir / MANIFEST}: {RESTORE}")
    if manifest.get("format") != FORMAT:
        raise BaeArtifactError(
            f"{version_dir / MANIFEST}: unknown format version {manifest.get('format')!r} (this bae reads {FORMAT}): "
            "use the bae version that wrote it, or recompile"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()
    ):
        raise BaeArtifactError(f"{version_dir / MANIFEST}: 'files' must map paths to {{sha256, ...}}: {RESTORE}")
    return manifest


def safe_path(version_dir: Path, rel: str) -> Path:
    """The file ``rel`` inside ``version_dir``, refusing absolute paths, ``..`` and escaping links."""
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise BaeArtifactError(f"{version_dir / MANIFEST} names an unsafe path {rel!r}: refusing to load; {RESTORE}")
    path = version_dir / rel
    try:
        escapes = path.is_symlink() or not path.resolve().is_relative_to(version_dir.resolve())
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BaeArtifactError(f"{version_dir / MANIFEST} names a path no file can have: {rel!r} ({reason})") from None
    if escapes:
        raise BaeArtifactError(
            f"{rel} in {version_dir} is a link or leaves the version dir: refusing to load; {RESTORE}"
        )
    return path


def parse_verified(version_dir: Path, rel: str, data: bytes) -> Any:
    """The JSON of a version's file whose bytes matched the manifest."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BaeArtifactError(f"{version_dir / rel} is not valid JSON: {exc}: {RESTORE}") from exc


def read_verified_bytes(version_dir: Path, rel: str, manifest: dict[str, Any]) -> bytes:
    """A file of the version, read once, after its sha256 matched the manifest."""
    path = safe_path(version_dir, rel)
    if not path.is_file():
        raise BaeArtifactError(f"manifest lists {rel} but it is missing from {version_dir}: {RESTORE}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BaeArtifactError(f"cannot read {path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != manifest["files"][rel]["sha256"]:
        raise BaeArtifactError(f"checksum mismatch for {version_dir / rel}: the file changed since compile; {RESTORE}")
    return data


def predictor_state(document: Any, where: str) -> dict[str, Any]:
    """The DSPy predictor state of a node file, refusing anything that is not plain data."""
    if not isinstance(document, dict) or not isinstance(document.get("predictor"), dict):
        raise BaeArtifactError(f"{where}: not a bae node file (needs a 'predictor' object): {RESTORE}")
    if set(document) - NODE_FILE_KEYS:
        extra = sorted(set(document) - NODE_FILE_KEYS)
        raise BaeArtifactError(
            f"{where}: unexpected keys {extra} beside 'bae', 'predictor' and 'decisions': refusing to load; {RESTORE}"
        )
    state = document["predictor"]
    unknown = set(state) - PREDICTOR_KEYS
    if unknown:
        raise BaeArtifactError(f"{where}: unexpected predictor keys {sorted(unknown)}: refusing to load; {RESTORE}")
    if state.get("lm") is not None:
        raise BaeArtifactError(
            f"{where}: carries an 'lm' block (endpoint or class): refusing to load; pass the LM with --lm and {RESTORE}"
        )
    if not isinstance(state.get("demos", []), list) or not isinstance(state.get("signature"), dict):
        raise BaeArtifactError(
            f"{where}: predictor state malformed (demos must be a list, signature an object): {RESTORE}"
        )
    return dict(state)


def retrieval_k(document: dict[str, Any], where: str) -> int | None:
    """How many similar demos a node file's predictor draws per call from its demos (None: fixed demos)."""
    settings = document.get("bae", {}).get("retrieval") if isinstance(document.get("bae"), dict) else None
    if settings is None:
        return None
    k = settings.get("k") if isinstance(settings, dict) else None
    if not isinstance(settings, dict) or settings.get("method") != "bm25" or type(k) is not int or k < 1:
        raise BaeArtifactError(f"{where}: malformed 'retrieval' settings {settings!r}: {RESTORE}")
    return k


def decisions(document: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A node file's hidden-state decisions (None: it has none), checked to be plain, well-formed data: each
    field's method, its scores and, for a hidden-state method, labels and base64 arrays of the stated shape."""
    section = document.get("decisions")
    if section is None:
        return None

    def bad(what: str) -> BaeArtifactError:
        return BaeArtifactError(f"{where}: malformed 'decisions' ({what}): {RESTORE}")

    if not isinstance(section, dict) or not isinstance(section.get("model_sha256"), str):
        raise bad("needs 'model_sha256' and 'fields'")
    fields = section.get("fields")
    if not isinstance(fields, dict):
        raise bad("needs 'model_sha256' and 'fields'")
    for name, entry in fields.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
            raise bad(f"{name}: needs a 'method'")
        anchors = entry.get("anchors")
        if anchors is None:
            continue
        count = anchors.get("count") if isinstance(anchors, dict) else None
        if type(count) is not int or not isinstance(anchors.get("labels"), list) or len(anchors["labels"]) != count:
            raise bad(f"{name}: anchors need 'count' labels")
        present = [key for key in _ANCHOR_ARRAYS if key in anchors]
        if not present:
            raise bad(f"{name}: anchors hold no vectors")
        for key in present:
            size_key, width = _ANCHOR_ARRAYS[key]
            size = anchors.get(size_key)
            try:
                raw = base64.b64decode(str(anchors[key]), validate=True)
            except ValueError:
                raise bad(f"{name}: {key} is not base64") from None
            if type(size) is not int or len(raw) != count * size * width:
                raise bad(f"{name}: {key} is not {count} x {size_key}")
    return section


@dataclass(frozen=True)
class FileCheck:
    """One file of a version, read and verified once: its bytes and JSON when it passed, else the problem."""

    path: str
    ok: bool
    problem: str | None = None
    data: bytes = b""
    document: Any = None
    predictor: dict[str, Any] | None = None  # a node file's DSPy predictor state, checked to be plain data
    retrieval_k: int | None = None  # a node file's similar-demos-per-call setting (None: fixed demos)
    decisions: dict[str, Any] | None = None  # a node file's hidden-state decisions, checked to be well formed


def verify_files(version_dir: Path, manifest: dict[str, Any]) -> tuple[list[FileCheck], list[str]]:
    """Check every file the manifest lists (node files as loading would), and list files it does not
    (reported, never loaded)."""
    checks = []
    for rel, entry in manifest["files"].items():
        try:
            data = read_verified_bytes(version_dir, rel, manifest)
            document = parse_verified(version_dir, rel, data)
            state = k = section = None
            if "node" in entry:
                state = predictor_state(document, str(version_dir / rel))
                k = retrieval_k(document, str(version_dir / rel))
                section = decisions(document, str(version_dir / rel))
            checks.append(
                FileCheck(rel, True, data=data, document=document, predictor=state, retrieval_k=k, decisions=section)
            )
        except BaeArtifactError as exc:
            checks.append(FileCheck(rel, False, exc.message))
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(
        str(p.relative_to(version_dir))
        for p in version_dir.rglob("*")
        if (p.is_file() or p.is_symlink()) and str(p.relative_to(version_dir)) not in listed
    )
    return checks, extra


def copy_verified(version_dir: Path, checks: list[FileCheck], target: Path) -> None:
    """A version's manifest and the files ``verify_files`` read, byte for byte as they were verified, into
    ``target`` (a new directory): a copy can hold nothing that was not checked."""
    target.mkdir(parents=True)
    shutil.copyfile(safe_path(version_dir, MANIFEST), target / MANIFEST)
    for check in checks:
        destination = target / check.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(check.data)


def refuse_invalid(checks: list[FileCheck]) -> None:
    """Fail on a version with any invalid file: the first problem, and how many there are."""
    invalid = [c for c in checks if not c.ok]
    if invalid:
        raise BaeArtifactError(f"{counted(len(invalid), 'invalid artifact file')}: {invalid[0].problem}")
