"""The public surface: a small, curated, sorted, documented API."""

from __future__ import annotations

import inspect

import habitus
import habitus.errors
import habitus.ledger


def test_top_level_exports_are_sorted_complete_and_small() -> None:
    names = habitus.__all__
    assert names == sorted(names), "keep __all__ sorted"
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(habitus, name), name
    assert len(names) <= 35, "the top level is a curated API of about 30 names"


def test_every_public_symbol_has_a_docstring() -> None:
    for module in (habitus, habitus.ledger, habitus.errors):
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            assert inspect.getdoc(obj), f"{module.__name__}.{name} needs a docstring"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    assert inspect.getdoc(member), f"{name}.{attr} needs a docstring"


def test_every_error_is_a_habitat_error_with_a_code() -> None:
    for name in habitus.errors.__all__:
        obj = getattr(habitus.errors, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, habitus.HabitatError)
            assert obj in habitus.errors.ERROR_TABLE, f"{name} needs an exit code and HTTP status"
            assert name in (habitus.errors.__doc__ or ""), f"{name} is missing from the tree in the docstring"


def test_sync_facade_mirrors_every_async_ledger_method() -> None:
    async_methods = {
        name
        for name, member in vars(habitus.Ledger).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    sync_methods = {name for name in vars(habitus.SyncLedger) if not name.startswith("_")}
    assert async_methods <= sync_methods, async_methods - sync_methods
    assert inspect.signature(habitus.SyncLedger.append).parameters.keys() == (
        inspect.signature(habitus.Ledger.append).parameters.keys()
    )
