"""The documentation stays true to the code: the generated configuration reference is fresh,
every configuration field is described, the README stays a front page, and no link is broken."""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import config_reference

README_MAX_LINES = 200
DOCS = REPO / "docs"
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path):
        m = _HEADING.match(line)
        if not m:
            continue
        base = config_reference.slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        if count:
            seen[f"{base}-{count}"] = 1
    return set(seen)


def broken_links(path: Path) -> list[str]:
    """Relative links of one markdown file whose file, or heading, does not exist."""
    problems = []
    for number, line in _prose_lines(path):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto:: not ours to check offline
            where = f"{path.relative_to(REPO)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            if file_part.startswith("/"):
                problems.append(f"{where} (absolute path: links must be relative)")
                continue
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


def test_configuration_reference_is_fresh():
    committed = (DOCS / "configuration.md").read_text() if (DOCS / "configuration.md").exists() else ""
    generated = config_reference.render()
    if generated != committed:
        diff = "\n".join(list(difflib.unified_diff(committed.splitlines(), generated.splitlines(), "committed",
                                                   "generated", lineterm=""))[:60])
        pytest.fail(f"docs/configuration.md is stale: run make docs\n{diff}")


def test_configuration_reference_is_the_same_on_every_machine(monkeypatch, tmp_path):
    generated, home = config_reference.render(), str(Path.home())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config_reference.render() == generated
    for local in (str(REPO), home, str(tmp_path)):
        assert len(local) <= 1 or local not in generated, f"docs/configuration.md names a path of this machine: {local}"


def test_every_configuration_field_has_a_description():
    missing = config_reference.undocumented()
    assert not missing, ("configuration fields without a description (Field(..., description=...)), which "
                         f"docs/configuration.md is made of: {missing}")


def test_every_configuration_section_has_a_docstring():
    missing = config_reference.models_without_docstring()
    assert not missing, f"configuration models without a docstring (their section's text): {missing}"


class LimitsConfig(BaseModel):
    """Limits used twice."""

    low: int = Field(1, ge=0, description="The floor.")
    high: int = 3


class RootConfig(BaseModel):
    """A tree with every shape the generator must walk."""

    mode: Literal["a", "b"] = Field("a", description="Which mode.")
    ratio: float | None = Field(None, gt=0, le=1, description="A share | a part.")
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig(low=2), description="The <main> limits.")
    more: LimitsConfig | None = Field(None, description="Other limits.")
    named: dict[str, LimitsConfig] = Field(default_factory=dict, description="Limits by name.")
    tags: list[str] = Field(default_factory=lambda: ["x", "y z"], description="Labels.")


def test_an_undescribed_field_is_caught():
    assert config_reference.undocumented(RootConfig) == ["LimitsConfig.high (<limits>.high)"]


def test_the_generator_walks_nested_optional_and_container_models():
    text = config_reference.render(RootConfig)
    assert "`<limits>` is any of `limits`, `more`, `named.<key>`." in text
    assert "| `mode` | `a` \\| `b` | `a` | Which mode. |" in text
    assert "| `ratio` | `float` \\| `null`, > 0, <= 1 | `null` | A share \\| a part. |" in text
    assert "its defaults, except `low: 2` | The &lt;main> limits. |" in text
    assert "| `tags` | `list[str]` | `[x, y z]` | Labels. |" in text
    assert "| `<limits>.low` | `int`, >= 0 | `1` | The floor. |" in text
    assert "Limits used twice." in text


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move "
                                            "details to docs/ and link them")


def test_relative_links_point_to_existing_files():
    problems = [problem for path in markdown_files() for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_finds_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#nope) [web](https://example.com)\n"
                    "`[code](missing.md)`\n```\n[fenced](missing.md)\n```\n[abs](/etc/hosts)\n")
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file)", "other.md#nope (no heading with anchor #nope)",
        "/etc/hosts (absolute path: links must be relative)"]
