"""Evidence: which key-frame selector gives the best video classifier for its decode cost?

Survey section III-B2: a few key frames instead of every frame cut the cost of reading video.
The question here: at a budget of K = 1 / 3 / 8 frames per clip, which of the library's
selectors gives the most accurate classifier, and what does each cost to select and decode?

Protocol, scaled to a 2-core CPU (no pretraining, a tiny ResNet, a few dozen clips a class):

- data: ``make_video_dataset`` (``--classes`` x ``--per-class`` H.264 clips, ``--frames``
  frames of ``--side`` px, a key frame every 12 frames, B-frames; ``--camera``: background
  pan speed, 0 by default); the classes are motions of a textured object (pans, zooms), so
  a single frame does not tell the class by design;
- one arm per selector and K, every arm ``files -> SELECTOR (k: K, decode: true) ->
  train.video`` with ``streams: [rgb]`` on the selected frames (``keyframes``, K H W 3; only
  those are converted to RGB, and only the GOPs holding them are decoded):

  * ``keyframes.uniform``: K frames evenly from the first to the last (K = 1: the middle);
  * ``keyframes.tsn``: ``mode: train``, a random frame in each of K equal segments, drawn
    again every epoch (the stage is epoch-dependent, so the trainer re-runs the pipeline
    each epoch and validates on the last epoch's draw);
  * ``keyframes.iframes``: K of the codec's key frames (``too_few: clamp``: a 24-frame clip
    holds 2, so K = 3 and K = 8 get 2);
  * ``keyframes.motion``: the K highest peaks of codec motion-vector energy
    (``min_gap`` = min(5, frames // K), ``too_few: clamp``: a clip whose energy has no
    interior peak, a steady zoom, keeps its highest-energy frame); a clip that still fails
    is an error record, left out of that arm's training and validation and listed under the
    table;
  * ``keyframes.learned``: ``files -> keyframes.cues -> keyframes.learned_fit (labels:
    motion) -> keyframes.learned`` (the same ``min_gap`` and ``too_few``); the proxy labels
    ``motion`` because the default, ``scene``, finds no cut in these clips;
  * ``keyframes.tsn`` with ``mode: test`` (segment centres) is available as ``tsn_test``
    (not in the default grid);

- training, the same for every arm: ``segments`` = K (each selected frame one segment),
  ResNet-``--depth`` width ``--width`` on ``--size`` px frames, ``--epochs`` epochs, batch
  ``--batch``, SGD + cosine at ``--lr``, ``--val-fraction`` held out by key hash, one thread;
  the pipeline seed and the trainer seed are the run's seed (``--seeds``);
- decode cost, measured in this process at one thread on the same clips: each arm's Map
  stages' ``process()`` (selection + decoding the selected frames; ``keyframes.learned``:
  ``keyframes.cues`` + ``keyframes.learned``), arms interleaved clip by clip (the order
  alternating) over ``--rounds`` rounds, the median per clip averaged over clips. The
  frames that come out of the decoder are counted (every pass: the demux probe, motion
  vectors or cues, the selected GOPs), and the RGB frames kept. ``keyframes.learned_fit``'s
  one-off fit over the whole set is timed apart. The engine's own per-stage seconds
  (``report.stages``) are kept in the JSON; they leave out stages run before a Fit barrier
  (the cues), so they are not the table's figure. The machine is shared: compare only rows
  of one run.

Reports validation accuracy as mean and sample standard deviation over ``--seeds``.
``--quick`` (a smoke test, under 2 minutes): 20 clips a class, one seed, two selectors,
K = 1 and 3, 2 epochs, one timing round on 24 clips.

    .venv/bin/python scripts/evidence/evidence_keyframes_train.py [--quick] \
        [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evidence_common import add_video_data_args, mean_sd, video_data, write_json

import datapipe
from datapipe.errors import ItemError
from datapipe.graph import Pipeline
from datapipe.stage import Context, Record
from datapipe.stages.common import video_open
from datapipe.stages.keyframes.learned import FrameCues, LearnedFit, LearnedKeyFrames
from datapipe.stages.keyframes.stages import (
    IFrameKeyFrames,
    MotionKeyFrames,
    TSNKeyFrames,
    UniformKeyFrames,
)

#: arm name -> the selector stage it runs
ARMS = {
    "uniform": "keyframes.uniform",
    "tsn": "keyframes.tsn",
    "iframes": "keyframes.iframes",
    "motion": "keyframes.motion",
    "learned": "keyframes.learned",
    "tsn_test": "keyframes.tsn",
}
DEFAULT_ARMS = ["uniform", "tsn", "iframes", "motion", "learned"]
LEARNED_LABELS = "motion"  # the proxy labels of keyframes.learned_fit (see the docstring)


def min_gap(k: int, frames: int) -> int:
    """The gap between picks for the peak/top-K selectors: 5 (their default) unless K
    frames that far apart would not fit in the clip."""
    return max(1, min(5, frames // k))


def selector_params(arm: str, k: int, frames: int) -> dict[str, Any]:
    """The selector's params for ``k`` frames per clip of ``frames`` frames."""
    base: dict[str, Any] = {"k": k, "decode": True}
    if arm == "uniform":
        return {**base, "too_few": "repeat"}
    if arm == "tsn":
        return {**base, "mode": "train", "too_few": "repeat"}
    if arm == "tsn_test":
        return {**base, "mode": "test", "too_few": "repeat"}
    if arm == "iframes":
        return {**base, "too_few": "clamp"}
    if arm in ("motion", "learned"):
        return {**base, "min_gap": min_gap(k, frames), "too_few": "clamp"}
    raise ValueError(f"unknown arm {arm!r}")


def pipeline(data: Path, arm: str, k: int, seed: int, args: argparse.Namespace) -> Pipeline:
    """``files -> [cues -> scorer ->] pick -> train.video`` for one arm, K and seed."""
    train = {
        "streams": ["rgb"],
        "rgb_field": "keyframes",
        "segments": k,
        "size": args.size,
        "depth": args.depth,
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": args.lr,
        "val_fraction": args.val_fraction,
        "seed": seed,
        "threads": args.threads,
    }
    nodes: dict[str, Any] = {
        "clips": {"stage": "files", "params": {"root": str(data), "kinds": ["video"]}},
    }
    upstream = "clips"
    if arm == "learned":
        nodes["cues"] = {"stage": "keyframes.cues", "inputs": "clips"}
        nodes["scorer"] = {
            "stage": "keyframes.learned_fit",
            "inputs": "cues",
            "params": {"labels": LEARNED_LABELS},
        }
        upstream = "scorer"
    nodes["pick"] = {
        "stage": ARMS[arm],
        "inputs": upstream,
        "params": selector_params(arm, k, args.frames),
    }
    nodes["net"] = {"stage": "train.video", "inputs": "pick", "params": train}
    return Pipeline.from_dict(
        {
            "name": f"keyframes_{arm}_k{k}",
            "seed": seed,
            "nodes": nodes,
            "run": {"workers": args.threads},
        }
    )


# -- decode cost ---------------------------------------------------------------------------------
@contextmanager
def counting_decoded_frames() -> Iterator[list[int]]:
    """Count every frame the key-frame code gets out of a decoder (``VideoReader.frames``,
    the one place they all decode through) while the block runs; ``counter[0]``."""
    counter = [0]
    original = video_open.VideoReader.frames

    def frames(self: video_open.VideoReader, *a: Any, **kw: Any) -> Iterator[Any]:
        for frame in original(self, *a, **kw):
            counter[0] += 1
            yield frame

    video_open.VideoReader.frames = frames  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        video_open.VideoReader.frames = original  # type: ignore[method-assign]


def fit_scorer(clips: list[Path]) -> tuple[dict[str, Any], float]:
    """``keyframes.learned_fit``'s weights on the cues of ``clips``, and the seconds of the
    fit alone (the cues are per-clip cost, counted with the arm)."""
    cues = FrameCues()
    ctx = Context(node="scorer")
    view = {"frame_cues": [cues.process({"path": str(p)}, ctx)["frame_cues"] for p in clips]}
    t0 = time.perf_counter()
    state = LearnedFit(labels=LEARNED_LABELS).fit([p.stem for p in clips], view, ctx)
    return state, time.perf_counter() - t0


def selector(arm: str, k: int, frames: int, weights: dict[str, Any]) -> Callable[[Path], Record]:
    """The arm's Map stages as one function of a clip path, as the pipeline runs them."""
    params = selector_params(arm, k, frames)
    ctx = Context(fitted={"scorer": weights})
    if arm == "learned":
        cues, pick = FrameCues(), LearnedKeyFrames(**params)

        def learned(path: Path) -> Record:
            record = {"key": path.stem, "path": str(path)}
            return pick.process({**record, **cues.process(record, ctx)}, ctx)

        return learned
    kinds = {
        "uniform": UniformKeyFrames,
        "tsn": TSNKeyFrames,
        "tsn_test": TSNKeyFrames,
        "iframes": IFrameKeyFrames,
        "motion": MotionKeyFrames,
    }
    stage = kinds[arm](**params)
    return lambda path: stage.process({"key": path.stem, "path": str(path)}, ctx)


def all_frames(path: Path) -> Record:
    """Reference: every frame decoded to RGB (``keyframes.uniform every: 1``)."""
    stage = UniformKeyFrames(every=1, decode=True)
    return stage.process({"key": path.stem, "path": str(path)}, Context())


def decode_cost(
    clips: list[Path], arms: list[tuple[str, int]], frames: int, rounds: int
) -> dict[str, Any]:
    """Per arm ``(name, K)``: median ms per clip (mean over clips), frames out of the decoder
    per clip, RGB frames kept per clip (a failed clip counts 0) and failed clips; plus the
    all-frames reference and the fit."""
    weights, fit_s = fit_scorer(clips)
    loaders: dict[str, Callable[[Path], Record]] = {
        f"{arm} k={k}": selector(arm, k, frames, weights) for arm, k in arms
    }
    loaders["all frames (reference)"] = all_frames
    for path in clips[:3]:  # warm up: imports, the page cache
        for load in loaders.values():
            load(path)
    times: dict[str, list[list[float]]] = {name: [[] for _ in clips] for name in loaders}
    decoded = dict.fromkeys(loaders, 0)
    kept = dict.fromkeys(loaders, 0)
    failed = dict.fromkeys(loaders, 0)
    with counting_decoded_frames() as counter:
        for r in range(rounds):
            for i, path in enumerate(clips):
                order = list(loaders.items())
                if (r + i) % 2:
                    order.reverse()
                for name, load in order:
                    before = counter[0]
                    t0 = time.perf_counter()
                    try:
                        got = len(load(path)["keyframes"])
                    except ItemError:  # e.g. no motion peak: the engine's error record
                        got = -1
                    times[name][i].append(time.perf_counter() - t0)
                    if r == 0:
                        decoded[name] += counter[0] - before
                        kept[name] += max(got, 0)
                        failed[name] += got < 0
    n = len(clips)
    return {
        "per_arm": {
            name: {
                "ms_per_clip": 1000 * sum(statistics.median(t) for t in times[name]) / n,
                "decoded_per_clip": decoded[name] / n,
                "rgb_per_clip": kept[name] / n,
                "failed_clips": failed[name],
            }
            for name in loaders
        },
        "fit_s": fit_s,
        "clips": n,
        "rounds": rounds,
    }


# -- training ------------------------------------------------------------------------------------
def train_arm(
    data: Path, work: Path, arm: str, k: int, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one arm's pipeline with the real engine; its trainer report, the engine's seconds
    of the ``pick`` node (main pass) and the clips that failed (error records: left out of
    training and validation; more than 5% is an error). The run's shards are removed."""
    out = work / "runs" / f"{arm}_k{k}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run = datapipe.run(pipeline(data, arm, k, seed, args), out).to_dict()
    wall = time.perf_counter() - t0
    failed = [f"{f['key']} ({f['stage']}: {f['message']})" for f in run["failed"]]
    if len(failed) > 0.05 * run["counts"].get("listed", 1):
        raise RuntimeError(f"{arm} k={k} seed {seed}: {len(failed)} clips failed: {failed[:3]}")
    report = json.loads((out / "train" / "net" / "report.json").read_text())
    pick = run["stages"].get("pick", {"items": 0, "seconds": 0.0})
    (work / "reports").mkdir(exist_ok=True)
    (work / "reports" / f"{arm}_k{k}_s{seed}.json").write_text(json.dumps(report))
    if not args.keep_runs:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "val_accuracy": report["val_accuracy"],
        "train_accuracy": report["history"][-1]["train_accuracy"],
        "val_samples": report["val_samples"],
        "train_s": report["wall_s"],
        "run_s": wall,
        "engine_pick_ms_per_clip": 1000 * pick["seconds"] / max(pick["items"], 1),
        "failed": failed,
    }


def main() -> None:
    """Parse the options, make the clips, time the selectors, train every arm, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_video_data_args(parser)
    parser.set_defaults(per_class=None)  # 40 clips a class (quick: 20)
    parser.add_argument("--arms", nargs="+", default=None, choices=list(ARMS))
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="frames per clip")
    parser.add_argument("--size", type=int, default=32, help="frames resized to this side")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (quick: 2)")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, stage workers")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3)")
    parser.add_argument("--timing-clips", type=int, default=None, help="default: all clips")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--quick", action="store_true", help="smoke test, < 2 minutes")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's shards")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    quick = args.quick
    args.per_class = args.per_class or (20 if quick else 40)
    args.arms = args.arms or (["uniform", "learned"] if quick else DEFAULT_ARMS)
    args.ks = args.ks or ([1, 3] if quick else [1, 3, 8])
    args.epochs = args.epochs or (2 if quick else 10)
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.rounds = args.rounds or (1 if quick else 3)
    args.timing_clips = args.timing_clips or (24 if quick else None)

    start = time.perf_counter()
    work, data = video_data(args, "evidence_keyframes_")
    clips = sorted(data.glob("*/*.mp4"))
    if args.timing_clips:  # spread over the classes
        clips = clips[:: max(1, len(clips) // args.timing_clips)][: args.timing_clips]
    grid = [(arm, k) for arm in args.arms for k in args.ks]
    cost = decode_cost(clips, grid, args.frames, args.rounds)
    for name, c in cost["per_arm"].items():
        print(
            f"{name}: {c['ms_per_clip']:.2f} ms/clip, {c['decoded_per_clip']:.1f} frames "
            f"decoded, {c['rgb_per_clip']:.2f} RGB, {c['failed_clips']} failed",
            flush=True,
        )

    results: dict[str, dict[str, Any]] = {}
    for arm, k in grid:
        runs = []
        for seed in args.seeds:
            r = train_arm(data, work, arm, k, seed, args)
            runs.append(r)
            print(
                f"{arm} k={k} seed {seed}: val {r['val_accuracy']:.3f} "
                f"({r['val_samples']} clips), train acc {r['train_accuracy']:.3f}, "
                f"trainer {r['train_s']:.0f} s, run {r['run_s']:.0f} s",
                flush=True,
            )
        results[f"{arm} k={k}"] = {
            "arm": arm,
            "stage": ARMS[arm],
            "k": k,
            "runs": runs,
            "val_accuracy": [r["val_accuracy"] for r in runs],
            **cost["per_arm"][f"{arm} k={k}"],
        }

    print(
        f"\n{args.classes} classes x {args.per_class} clips, {args.side} px, {args.frames} "
        f"frames, GOP 12 with B-frames, camera pan <= {args.camera} px/frame; train.video "
        f"streams [rgb], segments = K, ResNet-{args.depth} width {args.width}, {args.size} px, "
        f"{args.epochs} epochs, batch {args.batch}, lr {args.lr}, val fraction "
        f"{args.val_fraction}, seeds {args.seeds}; decode cost: {cost['clips']} clips, median "
        f"of {cost['rounds']} interleaved rounds, 1 thread"
    )
    print(
        "| selector | K | val accuracy | decode ms/clip | frames decoded/clip | "
        "RGB frames/clip | trainer s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        name = r["stage"] + (" (test)" if r["arm"] == "tsn_test" else "")
        print(
            f"| {name} | {r['k']} | {mean_sd(r['val_accuracy'])} | {r['ms_per_clip']:.2f} | "
            f"{r['decoded_per_clip']:.1f} | {r['rgb_per_clip']:.2f} | "
            f"{mean_sd([x['train_s'] for x in r['runs']], '{:.0f}')} |"
        )
    ref = cost["per_arm"]["all frames (reference)"]
    print(
        f"\nreference, every frame decoded to RGB: {ref['ms_per_clip']:.2f} ms/clip, "
        f"{ref['decoded_per_clip']:.1f} frames decoded. Chance: {1 / args.classes:.3f}."
    )
    print(
        "frames decoded: every frame out of a decoder (demux probe, motion-vector or cue "
        "pass, the selected GOPs); keyframes.tsn (train) re-decodes its K frames every epoch "
        "(a new draw), the others decode once."
    )
    for r in results.values():
        failed = sorted({f for x in r["runs"] for f in x["failed"]})
        if failed:
            print(
                f"{r['stage']} k={r['k']}: {len(failed)} clip(s) failed and were left out "
                f"of training and validation: {'; '.join(failed)}"
            )
    if "learned" in args.arms:
        print(
            f"keyframes.learned_fit (one-off, {cost['clips']} clips' cues): "
            f"{1000 * cost['fit_s']:.1f} ms"
        )
    total = time.perf_counter() - start
    print(f"total wall time {total / 60:.1f} min")
    write_json(args.json, args, {"arms": results, "decode_cost": cost, "wall_s": total})


if __name__ == "__main__":
    main()
