"""``files``: list images, videos and point clouds under a root as light records."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field as PField
from pydantic import ValidationInfo, field_validator

from datapipe.errors import ConfigError, Problem
from datapipe.fields import Field
from datapipe.keys import sanitize_key
from datapipe.stage import SOURCE_ERROR, Context, Params, Record, Source, SourceListing
from datapipe.urls import local_path

#: the extensions listed per kind (lowercase compare); videos: the containers and raw streams
#: PyAV (FFmpeg) opens. Nothing is opened to list a file: decoding happens in the workers.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp"),
    "video": (
        *(".mp4", ".m4v", ".mov", ".3gp", ".3g2", ".mkv", ".webm", ".avi", ".wmv", ".asf"),
        *(".flv", ".f4v", ".mpg", ".mpeg", ".m1v", ".m2v", ".vob", ".ts", ".m2ts", ".mts"),
        *(".ogv", ".mxf", ".dv", ".nut", ".ivf", ".y4m", ".h264", ".264", ".hevc", ".h265"),
        ".265",
    ),
    "pointcloud": (".ply", ".pcd", ".xyz", ".xyzn", ".pts"),
}
Kind = Literal["image", "video", "pointcloud"]
#: what ``files`` passes over, always reported (``special``: FIFOs, sockets, devices, only
#: when there are some)
SKIPPED = ("hidden", "symlink", "unknown_ext")
_EXT = re.compile(r"^\.[a-z0-9][a-z0-9_+-]*$")


class FilesParams(Params):
    root: str = PField(description="Directory to list (relative to the pipeline file).")
    kinds: list[Kind] = PField(default_factory=lambda: ["image", "video", "pointcloud"])
    extensions: dict[Kind, list[str]] | None = PField(
        None,
        description=(
            "The extensions listed for a kind, instead of its defaults, e.g. {video: [.mp4, "
            ".ts]}; kinds not named keep theirs. Compared lowercase."
        ),
    )
    follow_symlinks: bool = PField(
        False,
        description=(
            "List what links point at, when it is inside the root (other links are skipped "
            "and counted); default: skip and count every link."
        ),
    )
    labels: Literal["folder", "none"] | str = PField(
        "folder", description="'folder' (parent folder name), 'none', or a CSV file path,label."
    )
    classes: list[str] | None = PField(None, description="Fixed class order for label_id.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return local_path(v)

    @field_validator("labels")
    @classmethod
    def _local_labels(cls, v: str) -> str:
        return v if v in ("folder", "none") else local_path(v)

    @field_validator("extensions")
    @classmethod
    def _extensions(
        cls, v: dict[str, list[str]] | None, info: ValidationInfo
    ) -> dict[str, list[str]] | None:
        if v is None:
            return v
        kinds = info.data.get("kinds")  # None when kinds itself is wrong: said there
        seen: dict[str, str] = {}
        out = {}
        for kind, exts in v.items():
            if kinds is not None and kind not in kinds:
                raise ValueError(f"{kind!r} is not one of the kinds listed ({', '.join(kinds)})")
            if not exts:
                raise ValueError(f"no extension for {kind!r}; leave it out of kinds instead")
            out[kind] = []
            for ext in exts:
                low = ext.lower()
                if not _EXT.match(low):
                    raise ValueError(f"{ext!r} is not an extension like '.ts' (a dot, then a name)")
                if low in seen:
                    raise ValueError(f"{ext!r} is listed for both {seen[low]!r} and {kind!r}")
                seen[low] = kind
                out[kind].append(low)
        return out


class Files(Source):
    """List media files under a root; labels from folder names or a CSV.

    Keys are the relative path without its suffix (stable across runs and machines). Only
    when two files of one folder share a stem (``cloud.ply`` and ``cloud.xyz``) do their keys
    name the extension too (``cloud_ply``, ``cloud_xyz``), so both are written.

    Only regular files with an extension of the listed kinds are listed. What is passed over
    is counted in :meth:`listing` (``hidden``: names starting with '.', files or folders;
    ``symlink``: links, or with ``follow_symlinks`` the links that point outside the root, are
    broken or lead to a folder already walked; ``unknown_ext``: other extensions).
    """

    name = "files"
    description = "List images/videos/point clouds under a root, labels from folders or a CSV."
    Params = FilesParams
    EXAMPLE_PARAMS = {"root": "data/images", "kinds": ["image"]}
    PRODUCES = (
        Field("path", "str", "", "absolute path of the input"),
        Field("relpath", "str", "", "path relative to the root"),
        Field("kind", "str", "", "image | video | pointcloud"),
        Field("label", "str", "", "class name ('' when unknown)"),
        Field("label_id", "int", "", "index of the label in the class list (-1 when unknown)"),
        Field("size", "int", "", "bytes"),
        Field("mtime_ns", "int", "", "modification time"),
    )

    def _root(self, ctx: Context) -> Path:
        root = ctx.resolve(self.params.root)
        if not root.is_dir():
            raise ConfigError(
                [
                    Problem(
                        f"nodes.{ctx.node}.params.root",
                        f"input root {str(root)!r} is not a directory",
                    )
                ]
            )
        return root

    def preflight(self, ctx: Context) -> None:
        self._root(ctx)
        if self.params.labels not in ("folder", "none"):
            self._csv_rows(ctx, self._root(ctx))

    def _extensions(self) -> dict[str, str]:
        """Lowercase extension -> kind, for the listed kinds."""
        chosen = self.params.extensions or {}
        return {
            ext: kind for kind in self.params.kinds for ext in chosen.get(kind, EXTENSIONS[kind])
        }

    @staticmethod
    def _kind_of(name: str, table: dict[str, str]) -> str | None:
        """The kind of a file by its extension (``table``: from :meth:`_extensions`)."""
        return table.get(extension(name).lower())

    def _walk(self, root: Path, skipped: Counter[str]) -> Iterator[tuple[str, os.stat_result, str]]:
        """(relative POSIX path, stat, path to open) of every listed file, counting in
        ``skipped`` what is passed over. Folders are walked once each (by their real identity),
        so link cycles end; real folders come before folders reached through links."""
        table = self._extensions()
        follow = self.params.follow_symlinks
        real_root = root.resolve()
        walked = {_identity(os.stat(root))}
        stack: list[tuple[str, str]] = [(str(root), "")]  # (folder to scan, relative prefix)
        links: deque[tuple[str, str]] = deque()  # (link path, relative path), followed last
        while stack or links:
            if not stack:
                link, rel = links.popleft()
                target, st = _inside(link, real_root)
                if st is None or (stat.S_ISDIR(st.st_mode) and _identity(st) in walked):
                    skipped["symlink"] += 1
                elif stat.S_ISDIR(st.st_mode):
                    walked.add(_identity(st))
                    stack.append((target, rel + "/"))
                elif self._regular(rel, st, table, skipped):
                    yield rel, st, target
                continue
            directory, prefix = stack.pop()
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                rel = prefix + entry.name
                if entry.name.startswith("."):
                    skipped["hidden"] += 1
                elif entry.is_symlink():
                    if follow:
                        links.append((entry.path, rel))
                    else:
                        skipped["symlink"] += 1
                elif entry.is_dir(follow_symlinks=False):
                    if follow:
                        walked.add(_identity(entry.stat(follow_symlinks=False)))
                    stack.append((entry.path, rel + "/"))
                elif self._kind_of(entry.name, table) is None:
                    skipped[
                        "unknown_ext" if entry.is_file(follow_symlinks=False) else "special"
                    ] += 1
                elif entry.is_file(follow_symlinks=False):
                    yield rel, entry.stat(follow_symlinks=False), entry.path
                else:
                    skipped["special"] += 1

    def _regular(
        self, rel: str, st: os.stat_result, table: dict[str, str], skipped: Counter[str]
    ) -> bool:
        """Whether a file a link leads to is listed; counts it in ``skipped`` when not."""
        if not stat.S_ISREG(st.st_mode):
            skipped["special"] += 1
        elif self._kind_of(rel, table) is None:
            skipped["unknown_ext"] += 1
        else:
            return True
        return False

    def _csv_rows(self, ctx: Context, root: Path) -> list[tuple[str, str]]:
        """(path, label) rows of the labels CSV; a path listed twice is a config error."""
        path = ctx.resolve(self.params.labels)
        where = f"nodes.{ctx.node}.params.labels"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                    raise ConfigError([Problem(where, f"{path} needs the columns path,label")])
                rows = [(row["path"] or "", row["label"] or "") for row in reader]
        except OSError as exc:
            raise ConfigError(
                [Problem(where, f"cannot read labels CSV {path}: {exc.strerror}")]
            ) from None
        first: dict[str, int] = {}
        problems = []
        for line, (rel, _) in enumerate(rows, start=2):
            norm = os.path.normpath(rel)
            if norm in first:
                problems.append(
                    Problem(
                        where,
                        f"{path} line {line}: {rel!r} is already listed on line {first[norm]}",
                    )
                )
            first.setdefault(norm, line)
        if problems:
            raise ConfigError(problems)
        return rows

    def _classes(self, labels: Iterable[str]) -> list[str]:
        if self.params.classes is not None:
            return list(self.params.classes)
        return sorted(set(labels) - {""})

    def signature(self, ctx: Context, records: Sequence[Record]) -> str:
        classes = self._classes(r.get("label", "") for r in records)
        return hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16]

    def list_items(self, ctx: Context) -> Iterator[Record]:
        yield from self.listing(ctx).records

    def listing(self, ctx: Context) -> SourceListing:
        """The records, and what was skipped: ``{"hidden": N, "symlink": N, "unknown_ext":
        N}`` (plus ``special`` when FIFOs, sockets or devices were found). A labels CSV lists
        its files itself: nothing is skipped then."""
        root = self._root(ctx)
        mode = self.params.labels
        skipped: Counter[str] = Counter({k: 0 for k in SKIPPED})
        records: list[Record] = []
        if mode in ("folder", "none"):
            found = [
                (
                    rel,
                    st,
                    path,
                    rel.rpartition("/")[0].rpartition("/")[2] if mode == "folder" else "",
                )
                for rel, st, path in self._walk(root, skipped)
            ]
        else:
            found = []
            for rel, label in self._csv_rows(ctx, root):
                full = (root / rel).resolve()
                if not full.is_relative_to(root.resolve()):
                    # an unsafe key: the engine turns it into a 'security' error row
                    records.append({"key": rel, "path": str(full), "relpath": rel, "label": label})
                    continue
                try:
                    st = os.stat(full, follow_symlinks=False)
                except OSError:
                    st = None
                found.append((rel, st, f"{root}/{rel}", label))
        index = {c: i for i, c in enumerate(self._classes(label for *_, label in found))}
        keys = unique_keys([rel for rel, *_ in found])
        table = self._extensions()
        for (rel, st, path, label), key in zip(found, keys, strict=True):
            rec = _record(key, path, rel, self._kind_of(rel, table) or "", st, label, index)
            if st is None:
                rec[SOURCE_ERROR] = f"{rel!r} is listed in the labels CSV but does not exist"
            records.append(rec)
        return SourceListing(records, dict(skipped))


def _record(
    key: str,
    path: str,
    rel: str,
    kind: str,
    st: os.stat_result | None,
    label: str,
    index: dict[str, int],
) -> Record:
    return {
        "key": key,
        "path": path,
        "relpath": rel,
        "kind": kind,
        "label": label,
        "label_id": index.get(label, -1),
        "size": st.st_size if st else -1,
        "mtime_ns": st.st_mtime_ns if st else -1,
    }


def extension(name: str) -> str:
    """``os.path.splitext(name)[1]`` for a POSIX path, without its generality's cost (it runs
    twice per listed file).

    >>> [extension(n) for n in ["a/b.JPG", "a.b/c", ".hidden", "a/..x.y", "x."]]
    ['.JPG', '', '', '.y', '.']
    """
    base = name[name.rfind("/") + 1 :]
    dot = base.rfind(".")
    return base[dot:] if dot > 0 and base[:dot].lstrip(".") else ""


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _inside(link: str, real_root: Path) -> tuple[str, os.stat_result | None]:
    """The real path a link leads to and its stat; no stat when the link is broken, loops or
    leads outside ``real_root``."""
    try:
        target = Path(link).resolve(strict=True)
        st = os.stat(target)
    except (OSError, RuntimeError):
        return link, None
    return str(target), (st if target.is_relative_to(real_root) else None)


def unique_keys(relpaths: Sequence[str]) -> list[str]:
    """The key of each relative path: its path without the suffix, unless another path has the
    same stem, in which case the suffix is kept as ``_EXT`` (``cloud.ply`` -> ``cloud_ply``).

    >>> unique_keys(["a/cloud.ply", "a/cloud.xyz", "a/photo.jpg", "b/cloud.ply"])
    ['a/cloud_ply', 'a/cloud_xyz', 'a/photo', 'b/cloud']
    """
    base = [sanitize_key(rel) for rel in relpaths]
    count = Counter(base)
    keys = []
    for rel, key in zip(relpaths, base, strict=True):
        if count[key] > 1:
            stem, dot, ext = rel.rpartition(".")
            key = sanitize_key(f"{stem}_{ext}") if dot and "/" not in ext else key
        keys.append(key)
    return keys
