"""Pipeline step: one report, as HTML and Markdown, of the benchmark results and of a pipeline run.

Inputs: the results folder of the benchmarks (``benchmarks/results``: each benchmark writes
``<name>.json``, usually ``<name>.md`` with its table and ``<name>*.png`` figures) and, optionally, the
report folder of a pipeline run (``report.md`` and ``training_curves.png`` of
``components.pipeline_report``). Every Markdown table and every figure found becomes a section:
curation methods, missing-label robustness, active learning, label quality first, then any other
benchmark with a Markdown table, then the benchmarks that wrote only JSON rows (performance), each as a
table of its rows.

Output folder: ``report.html`` (self-contained: figures embedded as PNG data, so it is one file to
open, mail or log), ``report.md`` with ``figures/*.png`` beside it. The folder is built beside the
output and renamed onto it when complete, so a killed report step leaves the previous report (or
none), never a half-written one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation_core.errors import DataError

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
FIGURES_DIR = "figures"
#: Sections shown first, in this order: result-file stem -> heading.
KNOWN_SECTIONS = {
    "pipeline": "Pipeline run",
    "curation": "Curation methods (benchmark set)",
    "curation_dev": "Curation methods (development set)",
    "robustness": "Missing-label robustness",
    "active_learning": "Active learning",
    "label_quality": "Label quality",
    "sampling": "Sampling and losses",
    "curation_cost": "Cost of a curated step",
}
#: Heading prefix of the benchmarks that wrote only JSON rows.
PERFORMANCE_HEADING = "Benchmark"
#: Rows shown per JSON table (a longer table is cut, with a note).
MAX_JSON_ROWS = 40

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .meta { color: #666; font-size: 0.85rem; } nav li { margin: 0.15rem 0; }
"""


@dataclass
class Section:
    """One part of the report: Markdown text (tables, paragraphs) and figures (PNG files)."""

    key: str
    heading: str
    markdown: str = ""
    figures: list[Path] = field(default_factory=list)
    source: str = ""


def collect_sections(results_dir: str | os.PathLike[str] | None, *,
                     pipeline_dir: str | os.PathLike[str] | None = None) -> list[Section]:
    """The report's sections from ``results_dir`` (benchmark results) and ``pipeline_dir`` (a run's report).

    Raises ``DataError`` naming the folder when neither holds anything to report, and naming the file
    when a result file is unreadable.
    """
    sections: list[Section] = []
    if pipeline_dir is not None:
        folder = Path(pipeline_dir)
        if not folder.is_dir():
            raise DataError(f"{folder}: <folder>: pipeline report folder does not exist")
        md = folder / "report.md"
        sections.append(Section("pipeline", KNOWN_SECTIONS["pipeline"], _read_text(md) if md.is_file() else "",
                                sorted(folder.glob("*.png")), str(folder)))
    if results_dir is not None:
        sections += _benchmark_sections(Path(results_dir))
    sections = [s for s in sections if s.markdown.strip() or s.figures]
    if not sections:
        raise DataError(f"{results_dir or pipeline_dir}: <folder>: no Markdown tables, JSON rows or PNG figures to report")
    return sections


def _benchmark_sections(folder: Path) -> list[Section]:
    if not folder.is_dir():
        raise DataError(f"{folder}: <folder>: results folder does not exist")
    by_key: dict[str, Section] = {}
    for md in sorted(folder.glob("*.md")):
        by_key[md.stem] = Section(md.stem, KNOWN_SECTIONS.get(md.stem, _title(md.stem)),
                                  _drop_local_images(_strip_title(_read_text(md))), source=md.name)
    json_only = []
    for path in sorted(folder.glob("*.json")):
        if path.stem not in by_key:
            table = _json_table(path)
            if table:
                json_only.append(Section(path.stem, f"{PERFORMANCE_HEADING}: {_title(path.stem)}", table,
                                         source=path.name))
    for png in sorted(folder.glob("*.png")):
        owner = max((k for k in by_key if png.stem == k or png.stem.startswith(k + "_")), key=len, default=None)
        if owner is None:
            by_key[png.stem] = owner_section = Section(png.stem, KNOWN_SECTIONS.get(png.stem, _title(png.stem)),
                                                       source=png.name)
        else:
            owner_section = by_key[owner]
        owner_section.figures.append(png)
    known = [by_key.pop(k) for k in KNOWN_SECTIONS if k in by_key]
    others = [by_key[k] for k in sorted(by_key)]
    return known + others + json_only


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: <file>: not readable as UTF-8 text ({exc})") from None


def _strip_title(text: str) -> str:
    """Drop a leading ``# Title`` line: the section heading replaces it."""
    lines = text.lstrip().splitlines()
    return "\n".join(lines[1:]).strip() + "\n" if lines and lines[0].startswith("# ") else text


#: A Markdown image whose target is a relative path (``![alt](figure.png)``).
_LOCAL_IMAGE = re.compile(r"!\[[^\]]*\]\((?![a-z][a-z0-9+.-]*:)[^)]*\)", re.IGNORECASE)


def _drop_local_images(text: str) -> str:
    """Drop Markdown images with relative targets: the section's ``*.png`` figures are embedded from the
    folder anyway, and a relative link would not resolve beside the report."""
    return _LOCAL_IMAGE.sub("", text)


def _title(stem: str) -> str:
    return stem.replace("_", " ").capitalize()


def _json_table(path: Path) -> str:
    """A Markdown table of the ``rows`` of a benchmark's JSON (empty when it has none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: <file>: not a readable JSON result ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, dict | list)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_JSON_ROWS]:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    if len(rows) > MAX_JSON_ROWS:
        lines.append(f"\n{len(rows) - MAX_JSON_ROWS} more rows in `{path.name}`.")
    machine = data.get("machine") or {}
    when = data.get("time", "")
    note = ", ".join(f"{k} {v}" for k, v in machine.items()) if isinstance(machine, dict) else ""
    return "\n".join(lines) + (f"\n\nMeasured {when} ({note}).\n" if when or note else "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: list[Section], *, title: str) -> str:
    """The report as Markdown, figures linked as ``figures/<key>__<file>.png``."""
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.heading}\n\n{section.markdown.strip()}\n")
        parts += [f"![{png.stem}]({FIGURES_DIR}/{_figure_name(section, png)})\n" for png in section.figures]
    return "\n".join(parts)


def render_html(sections: list[Section], *, title: str, generated: str) -> str:
    """The report as one self-contained HTML page (figures as ``data:image/png;base64`` URIs)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    nav = "".join(f'<li><a href="#{s.key}">{html.escape(s.heading)}</a></li>' for s in sections)
    body = []
    for section in sections:
        figures = "".join(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(_png_bytes(png)).decode()}" '
            f'alt="{html.escape(png.stem)}"><figcaption>{html.escape(png.name)}</figcaption></figure>'
            for png in section.figures)
        source = f'<p class="meta">from {html.escape(section.source)}</p>' if section.source else ""
        body.append(f'<section id="{section.key}"><h2>{html.escape(section.heading)}</h2>{source}'
                    f"{md.render(section.markdown)}{figures}</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="meta">Generated {html.escape(generated)}</p><nav><ul>{nav}</ul></nav>'
            + "".join(body) + "</body></html>\n")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise DataError(f"{path}: <file>: not a PNG image")
    return data


def _figure_name(section: Section, png: Path) -> str:
    return f"{section.key}__{png.name}"


def write_report(out_dir: str | os.PathLike[str], *, results_dir: str | os.PathLike[str] | None = "benchmarks/results",
                 pipeline_dir: str | os.PathLike[str] | None = None, title: str = "DetCurate report") -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``figures/`` into ``out_dir``, whole or not at all.

    Returns ``{"html": ..., "markdown": ..., "figures": [...]}`` (paths inside ``out_dir``).
    """
    sections = collect_sections(results_dir, pipeline_dir=pipeline_dir)
    out = Path(out_dir)
    stage, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    for leftover in (stage, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    (stage / FIGURES_DIR).mkdir(parents=True)
    try:
        generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        (stage / HTML_NAME).write_text(render_html(sections, title=title, generated=generated), encoding="utf-8")
        for section in sections:
            for png in section.figures:
                (stage / FIGURES_DIR / _figure_name(section, png)).write_bytes(_png_bytes(png))
        (stage / MARKDOWN_NAME).write_text(render_markdown(sections, title=title), encoding="utf-8")
        for path in stage.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    return {"html": out / HTML_NAME, "markdown": out / MARKDOWN_NAME,
            "figures": sorted((out / FIGURES_DIR).glob("*.png"))}
