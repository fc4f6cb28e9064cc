"""Every public class and function of the CLI, the stress harness, the testing tools and the providers'
public surface says what it does (``help()`` shows something for each)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import duroxide_trio
from duroxide_trio.providers.base import Provider, ProviderAdmin, ProviderFactory

PACKAGES = ("duroxide_trio.cli", "duroxide_trio.stress", "duroxide_trio.testing", "duroxide_trio.providers")
PROTOCOL_METHODS = {
    name
    for proto in (Provider, ProviderAdmin, ProviderFactory)
    for name in vars(proto)
    if not name.startswith("_")
}


def modules() -> list[ModuleType]:
    found = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        found.append(pkg)
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_") or info.name.endswith("__main__"):
                continue
            found.append(importlib.import_module(info.name))
    return found


def own_doc(obj: object) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else inspect.getdoc(obj)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


def missing() -> list[str]:
    absent = []
    for module in modules():
        in_providers = module.__name__.startswith("duroxide_trio.providers")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            where = f"{module.__name__}.{name}"
            if inspect.isfunction(obj):
                if not own_doc(obj):
                    absent.append(where)
                continue
            if not own_doc(obj):
                absent.append(where)
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = member.fget if isinstance(member, property) else member
                if isinstance(func, classmethod | staticmethod):
                    func = func.__func__
                if not inspect.isfunction(func):
                    continue
                # A provider method that implements the protocol is documented by the protocol.
                if in_providers and attr in PROTOCOL_METHODS and obj not in (Provider, ProviderAdmin):
                    continue
                inherited = inspect.getdoc(getattr(obj, attr))
                if not (inspect.getdoc(func) or inherited):
                    absent.append(f"{where}.{attr}")
    return absent


def test_public_names_have_docstrings() -> None:
    assert missing() == []


def test_the_constructors_document_their_arguments_and_errors() -> None:
    for constructor in (
        duroxide_trio.SqliteProvider.open,
        duroxide_trio.PostgresProvider.connect,
    ):
        doc = inspect.getdoc(constructor) or ""
        assert "Args:" in doc and "Returns:" in doc and "Raises:" in doc, constructor
    assert "create=False" in (inspect.getdoc(duroxide_trio.SqliteProvider.open) or "")
    assert "create_schema" in (inspect.getdoc(duroxide_trio.PostgresProvider.connect) or "")
