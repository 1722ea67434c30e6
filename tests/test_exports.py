"""The public surface: one sorted ``__all__``, every name importable and typed, and an
``import workmatic`` that is polite (patches nothing, imports no werkzeug)."""

from __future__ import annotations

import subprocess
import sys

import workmatic


def test_all_is_sorted_and_every_name_exists() -> None:
    def isort_style(name: str) -> tuple[int, str]:  # ruff's RUF022 order
        kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
        return kind, name

    assert list(workmatic.__all__) == sorted(workmatic.__all__, key=isort_style)
    assert len(set(workmatic.__all__)) == len(workmatic.__all__)
    for name in workmatic.__all__:
        assert getattr(workmatic, name) is not None, name


def test_exceptions_form_one_tree() -> None:
    for name in workmatic.__all__:
        obj = getattr(workmatic, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, workmatic.WorkmaticError), name
    assert issubclass(workmatic.ValidationError, ValueError)
    assert issubclass(workmatic.JobNotFoundError, KeyError)


def test_import_is_polite() -> None:
    code = (
        "import sys, threading, socket, logging\n"
        "import workmatic\n"
        "from gevent import monkey\n"
        "assert not monkey.is_anything_patched(), 'patched on import'\n"
        "assert 'werkzeug' not in sys.modules, 'werkzeug imported eagerly'\n"
        "assert not logging.getLogger('workmatic').handlers\n"
        "assert threading.active_count() == 1\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_package_is_typed() -> None:
    from importlib import resources

    assert resources.files("workmatic").joinpath("py.typed").is_file()
