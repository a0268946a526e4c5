"""Draw a pipeline's DAG: as text, as Graphviz DOT, as SVG or as PNG (Pillow, no Graphviz);
and the lines that say what a run's sources skipped (``datapipe run`` and ``manifest``)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from datapipe.summary import skipped_lines  # noqa: F401  (lives there: the demo prints it too)

if TYPE_CHECKING:
    from datapipe.graph import Pipeline

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 190, 54, 40, 46, 20
_COLORS = {
    "source": "#d8ecff",
    "map": "#eeeeee",
    "select": "#ffe6c7",
    "fit": "#fff5b8",
    "sink": "#d9f2d9",
}


def render_text(p: Pipeline) -> str:
    lines = [f"pipeline {p.name!r} ({len(p.nodes)} nodes)"]
    for node in p.nodes:
        src = f" <- {', '.join(node.inputs)}" if node.inputs else ""
        lines.append(f"  {node.id} [{node.stage.name}, {node.kind.value}]{src}")
        params = node.stage.get_params()
        if params:
            lines.append("      params: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
        produced = [
            f"{f.name}:{f.dtype}" + (f"[{f.shape}]" if f.shape else "")
            for f in node.stage.produces()
        ]
        if produced:
            lines.append("      produces: " + ", ".join(produced))
    return "\n".join(lines)


def layout(p: Pipeline) -> dict[str, tuple[int, int]]:
    """(column, row) per node: the column is the longest path from a source."""
    depth: dict[str, int] = {}
    for node in p.nodes:
        depth[node.id] = 1 + max((depth[u] for u in node.inputs), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for node in p.nodes:
        d = depth[node.id]
        pos[node.id] = (d, rows.get(d, 0))
        rows[d] = rows.get(d, 0) + 1
    return pos


def _boxes(p: Pipeline) -> dict[str, tuple[int, int]]:
    return {
        nid: (_PAD + c * (_BOX_W + _GAP_X), _PAD + r * (_BOX_H + _GAP_Y))
        for nid, (c, r) in layout(p).items()
    }


def render_dot(p: Pipeline) -> str:
    out = [f'digraph "{p.name}" {{', "  rankdir=LR; node [shape=box, style=filled];"]
    for node in p.nodes:
        color = _COLORS[node.kind.value]
        out.append(f'  "{node.id}" [label="{node.id}\\n{node.stage.name}", fillcolor="{color}"];')
        out += [f'  "{u}" -> "{node.id}";' for u in node.inputs]
    out.append("}")
    return "\n".join(out)


def render_svg(p: Pipeline) -> str:
    boxes = _boxes(p)
    width = max(x for x, _ in boxes.values()) + _BOX_W + _PAD
    height = max(y for _, y in boxes.values()) + _BOX_H + _PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="8" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
    ]
    for node in p.nodes:
        x, y = boxes[node.id]
        for u in node.inputs:
            ux, uy = boxes[u]
            parts.append(
                f'<line x1="{ux + _BOX_W}" y1="{uy + _BOX_H // 2}" x2="{x}" '
                f'y2="{y + _BOX_H // 2}" stroke="#555" marker-end="url(#a)"/>'
            )
    for node in p.nodes:
        x, y = boxes[node.id]
        parts.append(
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{_COLORS[node.kind.value]}" stroke="#333"/>'
        )
        parts.append(f'<text x="{x + 10}" y="{y + 22}" font-weight="bold">{escape(node.id)}</text>')
        parts.append(
            f'<text x="{x + 10}" y="{y + 42}">{escape(node.stage.name)} ({node.kind.value})</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_png(p: Pipeline, path: Path) -> None:
    from PIL import Image, ImageDraw

    boxes = _boxes(p)
    width = max(x for x, _ in boxes.values()) + _BOX_W + _PAD
    height = max(y for _, y in boxes.values()) + _BOX_H + _PAD
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for node in p.nodes:
        x, y = boxes[node.id]
        for u in node.inputs:
            ux, uy = boxes[u]
            a, b = (ux + _BOX_W, uy + _BOX_H // 2), (x, y + _BOX_H // 2)
            draw.line([a, b], fill="#555555", width=2)
            draw.polygon([b, (b[0] - 9, b[1] - 5), (b[0] - 9, b[1] + 5)], fill="#555555")
    for node in p.nodes:
        x, y = boxes[node.id]
        draw.rounded_rectangle(
            [x, y, x + _BOX_W, y + _BOX_H],
            radius=6,
            fill=_COLORS[node.kind.value],
            outline="#333333",
        )
        draw.text((x + 10, y + 10), node.id, fill="black")
        draw.text((x + 10, y + 30), f"{node.stage.name} ({node.kind.value})", fill="#333333")
    img.save(path)


def render_file(p: Pipeline, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".png":
        render_png(p, path)
    elif suffix == ".svg":
        path.write_text(render_svg(p))
    elif suffix in (".dot", ".gv"):
        path.write_text(render_dot(p))
    else:
        from datapipe.errors import ConfigError, Problem

        raise ConfigError(
            [Problem("--out", f"unknown picture format {suffix!r}; use .png, .svg or .dot")]
        )
