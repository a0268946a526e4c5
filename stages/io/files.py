"""``files``: list images, videos and point clouds under a root as light records."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field as PField

from datapipe.errors import ConfigError, Problem
from datapipe.fields import Field
from datapipe.stage import SOURCE_ERROR, Context, Params, Record, Source
from datapipe.store.codec import sanitize_key

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp"),
    "video": (".mp4", ".mkv", ".avi", ".mov", ".webm", ".h264", ".264"),
    "pointcloud": (".ply", ".pcd", ".xyz", ".xyzn", ".pts"),
}
Kind = Literal["image", "video", "pointcloud"]


class FilesParams(Params):
    root: str = PField(description="Directory to list (relative to the pipeline file).")
    kinds: list[Kind] = PField(default_factory=lambda: ["image", "video", "pointcloud"])
    labels: Literal["folder", "none"] | str = PField(
        "folder", description="'folder' (parent folder name), 'none', or a CSV file path,label."
    )
    classes: list[str] | None = PField(None, description="Fixed class order for label_id.")


class Files(Source):
    """List media files under a root; labels from folder names or a CSV.

    Keys are the relative path without its suffix (stable across runs and machines). Only
    when two files of one folder share a stem (``cloud.ply`` and ``cloud.xyz``) do their keys
    name the extension too (``cloud_ply``, ``cloud_xyz``), so both are written. Only regular
    files are listed: symlinks and hidden files are skipped.
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

    def _kind_of(self, name: str) -> str | None:
        ext = os.path.splitext(name)[1].lower()
        for kind in self.params.kinds:
            if ext in EXTENSIONS[kind]:
                return kind
        return None

    def _walk(self, root: Path) -> Iterator[tuple[str, os.stat_result]]:
        """(relative POSIX path, stat) of every listed file; one pass, sorted by name."""
        prefix = len(str(root)) + 1
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and self._kind_of(entry.name):
                    yield entry.path[prefix:], entry.stat(follow_symlinks=False)

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
        root = self._root(ctx)
        mode = self.params.labels
        if mode in ("folder", "none"):
            found = [
                (rel, st, rel.rpartition("/")[0].rpartition("/")[2] if mode == "folder" else "")
                for rel, st in self._walk(root)
            ]
        else:
            found = []
            for rel, label in self._csv_rows(ctx, root):
                full = (root / rel).resolve()
                if not full.is_relative_to(root.resolve()):
                    # an unsafe key: the engine turns it into a 'security' error row
                    yield {"key": rel, "path": str(full), "relpath": rel, "label": label}
                    continue
                try:
                    st = os.stat(full, follow_symlinks=False)
                except OSError:
                    st = None
                found.append((rel, st, label))
        index = {c: i for i, c in enumerate(self._classes(label for _, _, label in found))}
        keys = unique_keys([rel for rel, _, _ in found])
        for (rel, st, label), key in zip(found, keys, strict=True):
            rec = self._record(root, rel, st, label, index)
            rec["key"] = key
            if st is None:
                rec[SOURCE_ERROR] = f"{rel!r} is listed in the labels CSV but does not exist"
            yield rec

    def _record(
        self, root: Path, rel: str, st: os.stat_result | None, label: str, index: dict[str, int]
    ) -> Record:
        return {
            "key": sanitize_key(rel),
            "path": f"{root}/{rel}",
            "relpath": rel,
            "kind": self._kind_of(rel) or "",
            "label": label,
            "label_id": index.get(label, -1),
            "size": st.st_size if st else -1,
            "mtime_ns": st.st_mtime_ns if st else -1,
        }


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
