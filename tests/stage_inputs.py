"""Real sample inputs for the stage conformance and executor-equivalence suites.

Writes, once per session: 64x48 JPEG crops of scikit-learn's sample photos, 16-frame 64x64
H.264 clips (``datapipe.stages.common.video_synth``, the demo's clip generator) and
512-point binary PLY clouds (the generators of ``datapipe.demo.sample_data``),
laid out as ``ROOT/data/{images,videos,pointclouds}/LABEL/*`` so the ``files`` source lists
them; plus deliberately bad files. :data:`CASES` says, for every registered stage, which
files feed it and which real upstream stages make the fields it consumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field as PField

from datapipe import registry
from datapipe.demo import sample_data as sd
from datapipe.fields import Field
from datapipe.graph import Node, Pipeline
from datapipe.stage import Context, Map, Params, Record, Source, Stage, to_jsonable
from datapipe.stages.common.video_synth import disc_clip

PHOTO_SIZE = (64, 48)
CLIP_SIZE = (64, 64)
CLIP_FRAMES = 16
CLOUD_POINTS = 512
PHOTO_LABELS = ("china", "flower")
CLIP_LABELS = ("move_right", "move_down", "static")
CLOUD_LABELS = ("sphere", "box")
MODALITIES = {"images": "image", "videos": "video", "pointclouds": "pointcloud"}
SUFFIX = {"images": ".jpg", "videos": ".mp4", "pointclouds": ".ply"}


# -- files ---------------------------------------------------------------------------------------
def _photos(out: Path) -> None:
    from sklearn.datasets import load_sample_images

    w, h = PHOTO_SIZE
    for photo, label in zip(load_sample_images().images, PHOTO_LABELS, strict=True):
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            y, x = 60 + 90 * i, 80 + 150 * i
            crop = Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w]))
            # baseline 4:2:0, progressive, baseline 4:4:4: the kinds real datasets mix
            opts = {"progressive": i == 1, "subsampling": 0 if i == 2 else 2}
            crop.save(out / label / f"{label}_{i:03d}.jpg", "JPEG", quality=90, **opts)


def _clips(out: Path) -> None:
    rng = np.random.default_rng([0, 2])
    directions = {"move_right": "right", "move_down": "down"}
    for label in CLIP_LABELS:
        path = out / label / f"{label}_000.mp4"
        cut = label == "move_right"
        direction = directions.get(label)
        disc_clip(path, rng, direction=direction, size=CLIP_SIZE, frames=CLIP_FRAMES, cut=cut)


def write_ply(path: Path, points: np.ndarray) -> None:
    """A binary little-endian PLY of float32 x, y, z (written by hand: NaNs stay NaN)."""
    pts = np.ascontiguousarray(points, dtype="<f4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + pts.tobytes())


def _cloud(label: str, rng: np.random.Generator) -> np.ndarray:
    mesh = sd._primitive_mesh(label, rng)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    pts = sd._sample_surface(v - v.mean(0), np.asarray(mesh.triangles), CLOUD_POINTS, rng)
    return pts @ sd._random_rotation(rng).T + rng.normal(0.0, 0.01, size=pts.shape)


def _clouds(out: Path) -> None:
    rng = np.random.default_rng([0, 3])
    for label in CLOUD_LABELS:
        for i in range(2):
            write_ply(out / label / f"{label}_{i:03d}.ply", _cloud(label, rng))


def _bad_files(out: Path, data: Path) -> dict[str, Path]:
    """Bad inputs by modality: ``{"images/text": path, ...}``."""
    out.mkdir(parents=True, exist_ok=True)
    clip = (data / "videos/move_right/move_right_000.mp4").read_bytes()
    photo = (data / "images/china/china_000.jpg").read_bytes()
    ply = (data / "pointclouds/sphere/sphere_000.ply").read_bytes()
    blobs = {
        "images/text": b"this is a text file, not a JPEG\n" * 4,
        "images/empty": b"",
        "images/truncated": photo[: len(photo) * 3 // 4],  # cut inside the scan data
        "images/video": clip,  # an H.264 clip named .jpg
        "videos/text": b"this is a text file, not an MP4\n" * 4,
        "videos/empty": b"",
        "videos/truncated": clip[: len(clip) // 2],
        "videos/image": photo,  # a JPEG named .mp4
        "pointclouds/text": b"this is a text file, not a PLY\n" * 4,
        "pointclouds/empty": b"",
        "pointclouds/truncated": ply[: len(ply) // 2],
    }
    paths = {}
    for name, blob in blobs.items():
        modality, what = name.split("/")
        paths[name] = out / f"{modality}_{what}{SUFFIX[modality]}"
        paths[name].write_bytes(blob)
    nan = _cloud("sphere", np.random.default_rng(7))
    nan[::50] = np.nan
    paths["pointclouds/nan"] = out / "pointclouds_nan.ply"
    write_ply(paths["pointclouds/nan"], nan)
    return paths


@dataclass(frozen=True)
class SampleData:
    """The generated files: ``root/data/MODALITY/LABEL/*`` and ``bad`` ones."""

    root: Path
    bad: dict[str, Path]

    def dir(self, modality: str) -> Path:
        return self.root / "data" / modality

    def context(self, node: str = "n", seed: int = 0) -> Context:
        return Context(base_dir=self.root, seed=seed, node=node)

    def records(self, modality: str) -> list[Record]:
        """The records the real ``files`` source lists for one modality."""
        stage = registry.get("files")(root=str(self.dir(modality)), kinds=[MODALITIES[modality]])
        return list(stage.list_items(self.context()))


def make_sample_data(root: Path) -> SampleData:
    data = root / "data"
    _photos(data / "images")
    _clips(data / "videos")
    _clouds(data / "pointclouds")
    return SampleData(root, _bad_files(root / "bad", data))


# -- upstream steps ------------------------------------------------------------------------------
def decode_frames(record: Record, ctx: Context) -> Record:
    """Every frame of the clip, RGB uint8 (T, H, W, 3), decoded with PyAV (no stage makes
    ``frames``; ``represent.dynamic_image`` consumes it)."""
    import av

    with av.open(record["path"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return {"frames": np.stack(frames)}


Step = tuple[str, dict[str, Any]] | Callable[[Record, Context], Record]


@dataclass(frozen=True)
class Case:
    """How to feed one stage: the files of ``modality``, run through ``upstream`` (real stages
    by name and params, or a function), with ``params`` over its ``EXAMPLE_PARAMS``, and the
    Fit states (:data:`FITS` names) it reads from ``ctx.fitted``."""

    modality: str
    params: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[Step, ...] = ()
    fitted: tuple[str, ...] = ()
    #: bad file kinds that need not fail: the stage reads what is left and counts the damage
    tolerated: tuple[str, ...] = ()
    #: only the files of these labels (all when empty)
    labels: tuple[str, ...] = ()


RESIZED = ("image.resize", {"size": 32})
EMBEDDED = (RESIZED, ("embed.pixels", {}))
CLOUD = (("points.read", {}),)
CUES = (("keyframes.cues", {}),)
#: the Fit states Map stages read, by the node name their params default to
FITS: dict[str, tuple[str, dict[str, Any], str, tuple[Step, ...]]] = {
    "sampler": ("points.learned_fit", {"m": 16, "epochs": 1, "n_points": 64}, "pointclouds", CLOUD),
    "scorer": ("keyframes.learned_fit", {}, "videos", CUES),
}
VIDEO_DAMAGE = ("truncated",)

CASES: dict[str, Case] = {
    "files": Case("images"),
    "image.resize": Case("images"),
    "jpeg.dct": Case("images", tolerated=("truncated",)),
    "represent.resize": Case("images", {"allow_upscale": True}),  # schedule starts at 64
    "train.image": Case("images", {"epochs": 2, "width": 4, "batch_size": 4}, (RESIZED,)),
    "train.dct": Case(
        "images",
        {"epochs": 2, "width": 4, "batch_size": 4},
        (("jpeg.dct", {"layout": "channels", "keep": 8}),),
        tolerated=("truncated",),
    ),
    # one clip per label: at seed 0 the key hashes put 'static' alone in validation
    "train.video": Case(
        "videos",
        {"epochs": 2, "width": 4, "batch_size": 4, "val_fraction": 0.45},
        (("video.coviar", {}),),
        tolerated=VIDEO_DAMAGE,
    ),
    "train.points": Case(
        "pointclouds",
        {"epochs": 2, "width": 4, "batch_size": 4},
        (*CLOUD, ("points.fps", {"m": 32})),
    ),
    "embed.pixels": Case("images", upstream=(RESIZED,)),
    "embed.torch": Case("images", upstream=(RESIZED,)),
    "select.random": Case("images", upstream=EMBEDDED),
    "select.stratified": Case("images", upstream=EMBEDDED),
    "select.kcenter": Case("images", upstream=EMBEDDED),
    "select.dedup": Case("images", upstream=EMBEDDED),
    "select.uncertainty": Case("images", upstream=EMBEDDED),
    "video.motion_vectors": Case("videos", tolerated=VIDEO_DAMAGE),
    "video.frame_types": Case("videos", tolerated=VIDEO_DAMAGE),
    "video.iframes": Case("videos", tolerated=VIDEO_DAMAGE),
    "video.packets": Case("videos", tolerated=VIDEO_DAMAGE),
    "video.coviar": Case("videos", tolerated=VIDEO_DAMAGE),
    "keyframes.uniform": Case("videos", tolerated=VIDEO_DAMAGE),
    "keyframes.tsn": Case("videos", tolerated=VIDEO_DAMAGE),
    "keyframes.iframes": Case("videos", tolerated=VIDEO_DAMAGE),
    # a 16-frame clip has fewer than k=3 motion peaks: 'clamp' keeps the ones it has; a
    # static clip has none (an 'empty' error)
    "keyframes.motion": Case(
        "videos", {"too_few": "clamp"}, tolerated=VIDEO_DAMAGE, labels=CLIP_LABELS[:2]
    ),
    "keyframes.scene": Case("videos", tolerated=VIDEO_DAMAGE),
    "keyframes.cues": Case("videos", tolerated=VIDEO_DAMAGE),
    "keyframes.learned_fit": Case("videos", upstream=CUES),
    "keyframes.learned": Case("videos", upstream=CUES, fitted=("scorer",)),
    "represent.dynamic_image": Case("videos", upstream=(decode_frames,)),
    "points.read": Case("pointclouds"),
    "points.voxelize": Case("pointclouds", upstream=CLOUD),
    "points.random": Case("pointclouds", upstream=CLOUD),
    "points.fps": Case("pointclouds", upstream=CLOUD),
    "points.voxel": Case("pointclouds", upstream=CLOUD),
    "points.learned_fit": Case("pointclouds", FITS["sampler"][1], upstream=CLOUD),
    "points.learned": Case("pointclouds", upstream=CLOUD, fitted=("sampler",)),
}


def is_test_stage(cls: type[Stage]) -> bool:
    """Stages defined by the test suite itself (fault_stages, stand-ins in test modules)."""
    return cls.__module__ == "fault_stages" or cls.__module__.startswith(("test_", "tests."))


def stages_under_test() -> dict[str, type[Stage]]:
    return {n: c for n, c in registry.all_stages().items() if not is_test_stage(c)}


def build(name: str, params: Mapping[str, Any] | None = None) -> Stage:
    cls = registry.get(name)
    return cls(**{**cls.EXAMPLE_PARAMS, **(params or {})})


def run_steps(data: SampleData, case: Case, fitted: Mapping[str, Any]) -> list[Record]:
    """The records a stage of ``case`` consumes: the listed files through its upstream."""
    ctx = data.context()
    ctx.fitted = dict(fitted)
    records = [
        r for r in data.records(case.modality) if not case.labels or r["label"] in case.labels
    ]
    for step in case.upstream:
        if callable(step):
            records = [{**r, **step(r, ctx)} for r in records]
        else:
            stage = build(*step)
            assert isinstance(stage, Map)
            records = [{**r, **stage.process(r, ctx)} for r in records]  # type: ignore[dict-item]
    return records


def light_view(stage: Stage, records: list[Record]) -> tuple[list[str], dict[str, list[Any]]]:
    """Keys and light view of a Select/Fit stage, as the engine's barriers build them."""
    records = sorted(records, key=lambda r: r["key"])
    view = {
        f.name: [
            to_jsonable(r[f.name].tolist() if hasattr(r[f.name], "tolist") else r[f.name])
            for r in records
        ]
        for f in stage.consumes()
    }
    return [r["key"] for r in records], view


def fit_states(data: SampleData, names: tuple[str, ...]) -> dict[str, Any]:
    """Train the Fit stages ``names`` (keys of :data:`FITS`) on their real inputs."""
    out: dict[str, Any] = {}
    for node in names:
        stage_name, params, modality, upstream = FITS[node]
        stage = build(stage_name, params)
        keys, view = light_view(stage, run_steps(data, Case(modality, upstream=upstream), {}))
        out[node] = stage.fit(keys, view, data.context(node))  # type: ignore[attr-defined]
    return out


# -- bad inputs ----------------------------------------------------------------------------------
def bad_variants(
    stage: Stage, case: Case, data: SampleData, good: Record
) -> Iterator[tuple[str, Record]]:
    """(name, record) of the bad inputs of a Map stage: a bad file for each bad kind of its
    modality when it reads ``path``; each consumed field missing; each consumed array as
    text (a wrong dtype; not numerals, which numpy would parse), and (N, 3) points with NaN
    rows."""
    consumed = [f.name for f in stage.consumes()]
    if "path" in consumed:
        for name, path in data.bad.items():
            modality, what = name.split("/")
            if modality == case.modality:
                yield what, {**good, "path": str(path), "size": path.stat().st_size}
    for fname in consumed:
        yield f"missing {fname}", {k: v for k, v in good.items() if k != fname}
        value = good.get(fname)
        if isinstance(value, np.ndarray):
            yield f"{fname} as str", {**good, fname: np.full(value.shape, "x")}
            if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] == 3:
                nan = value.copy()
                nan[::7] = np.nan
                yield f"{fname} with NaN", {**good, fname: nan}


class RecordsParams(Params):
    fields: list[str] = PField(default_factory=list)


class Records(Source):
    """A test-only source that declares any fields (the records come with the tasks)."""

    name = "test.records"
    description = "Declares fields of any dtype; lists nothing."
    Params = RecordsParams

    def produces(self) -> tuple[Field, ...]:
        return tuple(Field(f) for f in self.params.fields)

    def list_items(self, ctx: Context) -> Iterator[Record]:
        return iter(())


def bad_input_pipeline(stage: Stage, root: Path) -> Pipeline:
    """``src -> map``: a source declaring what ``stage`` consumes (the records come with the
    tasks), feeding a node of ``stage``; a Fit node it names (``fit_node``) sits between them,
    its state handed to the pool."""
    from datapipe import registry

    fits = []
    for node, ref in stage.node_refs().values():
        fit_cls = registry.get(ref.stages[0])
        fits.append(Node(node, fit_cls(**fit_cls.EXAMPLE_PARAMS), ("src",)))
    wanted = {f.name for s in (stage, *(n.stage for n in fits)) for f in s.consumes()}
    nodes = [Node("src", Records(fields=sorted(wanted))), *fits]
    nodes.append(Node("map", stage, (fits[-1].id,) if fits else ("src",)))
    return Pipeline(nodes, base_dir=root)


def read_ply(path: Path) -> np.ndarray:
    """The points of a PLY written by :func:`write_ply` (float32 x, y, z; no other layout)."""
    blob = path.read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    return np.frombuffer(blob[end:], dtype="<f4").reshape(-1, 3).astype(np.float32)


class CloudFilesParams(Params):
    root: str


class CloudFiles(Source):
    """A trusted test-only source: the clouds under ``root`` read in the listing process, so
    that a pipeline of it and point samplers has no isolated stage (it runs inline)."""

    name = "test.cloud_files"
    description = "PLY clouds under a root, read while listing."
    Params = CloudFilesParams
    PRODUCES = (Field("points", "float32", "N 3"), Field("label", "str", ""))

    def list_items(self, ctx: Context) -> Iterator[Record]:
        for path in sorted(ctx.resolve(self.params.root).rglob("*.ply")):
            label = path.parent.name
            yield {"key": f"{label}/{path.stem}", "label": label, "points": read_ply(path)}
