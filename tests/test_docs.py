"""The README documents every public name, method and CLI command (in the spirit of
sqlite-utils' test_docs)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import workmatic

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(n for n in workmatic.__all__ if n != "__version__"))
def test_public_name_is_documented(name: str) -> None:
    assert re.search(rf"\b{re.escape(name)}\b", README), f"{name} is not in the README"


def _public_methods(cls: type) -> list[str]:
    # Inherited ones too: Database gets most of its methods from mixins (_operations.py).
    return sorted(
        {
            n for base in cls.__mro__[:-1] for n, v in vars(base).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "method"),
    [
        (cls, m)
        for cls in (workmatic.Database, workmatic.Client, workmatic.Worker, workmatic.Orchestrator)
        for m in _public_methods(cls)
    ],
    ids=lambda v: v.__name__ if inspect.isclass(v) else str(v),
)
def test_public_method_is_documented(cls: type, method: str) -> None:
    assert re.search(rf"\b{re.escape(method)}\b", README), f"{cls.__name__}.{method} missing"


def test_readme_starts_with_the_two_setup_commands() -> None:
    block = README.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert "examples/with_dashboard.py" in block[0]
    assert block[1] == "bash .ci/run"
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "tox" in ci
