"""Every reference to the project's docs resolves (docs/architecture.md#packages).

* ``docs/<page>.md`` and ``docs/<page>.md#<anchor>`` anywhere in code, configs, scripts and
  markdown: the page exists and has a heading with that GitHub anchor;
* relative markdown links ``[text](target)`` in README.md and docs/*.md: the target file
  exists, and its anchor when one is given (``#anchor`` alone: the same page);
* no reference to the team's private design note is left (the docs replace it).
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".md", ".cfg", ".toml"}
SKIP_TOP = {"data", "outputs"}  # generated data sets and run outputs (git-ignored contents)

DOCS_REF = re.compile(r"docs/([A-Za-z0-9_\-]+)\.md(?:#([A-Za-z0-9_\-]+))?")
MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# the private note cited by section number or file name (the pattern is written in two parts so
# that this file does not match it)
PRIVATE_NOTE = re.compile(r"\b" + "DESIGN" + r"(?:\.md\b|\s+\d)")

# the pages the code cites, with the anchors other modules rely on
REQUIRED = {
    "vq2d": ["visual-crop", "training-samples", "negative-frames", "model", "training", "detection-pass", "peaks",
             "tracking", "metrics", "submission", "published-settings", "released-weights", "outputs"],
    "nlq": ["naq", "window-expansion", "features", "labels", "vslnet", "reler", "snag", "training-recipe", "metrics",
            "submission", "published-settings", "text-encoders", "tacos"],
    "data": ["vq2d-annotations", "nlq-annotations", "narrations", "features", "naq-files", "tacos", "frames",
             "synthetic", "errors"],
    "architecture": ["packages", "config", "extending", "caches", "exit-status"],
    "reproducing": ["vq2d", "nlq", "synthetic-findings"],
}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of every heading outside code fences (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def source_files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_TOP or any(p.startswith(".") or p == "__pycache__" for p in rel.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name == "Makefile"):
            yield path


def _check_target(page: Path, anchor: str | None, cache: dict) -> str | None:
    if not page.is_file():
        return f"no file {page.name}"
    if anchor:
        if page not in cache:
            cache[page] = anchors(page.read_text(encoding="utf-8"))
        if anchor not in cache[page]:
            return f"no heading #{anchor} in {page.name}"
    return None


def broken_references(root: Path) -> list[str]:
    """``file:line: reference: problem`` for each docs reference or markdown link that does not resolve."""
    problems, cache = [], {}
    for path in source_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(root)
        for m in DOCS_REF.finditer(text):
            problem = _check_target(root / "docs" / f"{m.group(1)}.md", m.group(2), cache)
            if problem:
                problems.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}: {problem}")
        if path.suffix == ".md" and (rel == Path("README.md") or rel.parts[0] == "docs"):
            for m in MD_LINK.finditer(text):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                page = path if not file_part else (path.parent / file_part)
                problem = _check_target(page.resolve(), anchor or None, cache)
                if problem:
                    problems.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}: ({target}): {problem}")
    return problems


def private_note_references(root: Path) -> list[str]:
    found = []
    for path in source_files(root):
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if PRIVATE_NOTE.search(line):
                found.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    return found


def test_slug_follows_github():
    assert slug("Peaks") == "peaks"
    assert slug("Exit status") == "exit-status"
    assert slug("`data.root` and the NaQ files (v2)") == "dataroot-and-the-naq-files-v2"
    assert slug("Setting | why?") == "setting--why"
    assert anchors("# A\n## Metrics\n```\n## Not a heading\n```\n### Metrics\n") == {"a", "metrics", "metrics-1"}


@pytest.mark.parametrize("page", sorted(REQUIRED))
def test_required_anchors_exist(page):
    path = REPO / "docs" / f"{page}.md"
    assert path.is_file(), f"docs/{page}.md is missing"
    missing = [a for a in REQUIRED[page] if a not in anchors(path.read_text(encoding="utf-8"))]
    assert missing == [], f"docs/{page}.md lacks headings for {missing}"


def test_every_docs_reference_and_link_resolves():
    assert broken_references(REPO) == []


def test_no_reference_to_the_private_design_note():
    assert private_note_references(REPO) == []


def test_checkers_catch_broken_references(tmp_path):
    d = "docs" + "/"  # written in two parts: this file is scanned too
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "vq2d.md").write_text("# VQ2D\n## Peaks\nsee [data](data.md#frames) and [up](#peaks)\n")
    (tmp_path / "docs" / "data.md").write_text("# Data\n## Frames\n")
    (tmp_path / "README.md").write_text(f"[VQ2D]({d}vq2d.md#tracking) [gone]({d}gone.md)\n")
    (tmp_path / "mod.py").write_text(f'"""Peaks ({d}vq2d.md#peaks), crops ({d}vq2d.md#crop)."""\n')
    (tmp_path / "cfg.yaml").write_text("k: 1   # " + "DESIGN" + " 5.6\n")
    problems = broken_references(tmp_path)
    assert f"README.md:1: {d}vq2d.md#tracking: no heading #tracking in vq2d.md" in problems
    assert f"README.md:1: ({d}gone.md): no file gone.md" in problems
    assert f"mod.py:1: {d}vq2d.md#crop: no heading #crop in vq2d.md" in problems
    assert not any("#peaks" in p or "#frames" in p for p in problems)
    assert private_note_references(tmp_path) == ["cfg.yaml:1: k: 1   # " + "DESIGN" + " 5.6"]
