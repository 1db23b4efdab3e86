"""Pipeline templates shipped with the platform: one YAML definition per file in this folder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from training_platform.core.errors import NotFound

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Template:
    """A shipped definition: its name (the file's stem), YAML text and decoded form."""

    name: str
    text: str
    data: dict[str, Any]


@lru_cache(maxsize=1)
def all_templates() -> dict[str, Template]:
    """Every template, by name."""
    import yaml  # here: read on first use, not at every start of the API

    found = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        found[path.stem] = Template(path.stem, text, yaml.safe_load(text))
    return found


def get(name: str) -> Template:
    """A template by name, or NotFound listing those that exist."""
    templates = all_templates()
    if name not in templates:
        raise NotFound(f"no template {name!r}; templates: {', '.join(templates)}")
    return templates[name]
