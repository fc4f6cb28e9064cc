"""Every public class and function of the package (the orchestration API, the runtime, the client, the
registry, the history model, the CLI, the stress harness, the testing tools and the providers' public
surface) says what it does (``help()`` shows something for each)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import duroxide_trio
from duroxide_trio.providers.base import Provider, ProviderAdmin, ProviderFactory

PACKAGES = (
    "duroxide_trio.cli",
    "duroxide_trio.stress",
    "duroxide_trio.testing",
    "duroxide_trio.providers",
    "duroxide_trio.orchestration",
    "duroxide_trio.runtime",
)
MODULES = ("duroxide_trio.registry", "duroxide_trio.client", "duroxide_trio.history", "duroxide_trio.activity")
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
    found.extend(importlib.import_module(name) for name in MODULES)
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


def test_the_user_facing_api_documents_arguments_returns_and_errors() -> None:
    """``help()`` on the classes users call shows Google-style sections for what each method takes,
    gives back and raises."""
    lacking = []
    for cls in (duroxide_trio.OrchestrationContext, duroxide_trio.Client, duroxide_trio.Registry):
        for name, member in vars(cls).items():
            if name.startswith("_") or isinstance(member, property) or not inspect.isfunction(member):
                continue
            if name.startswith(("encode", "decode_")):  # the engine's codec interface
                continue
            doc = inspect.getdoc(member) or ""
            signature = inspect.signature(member)
            if [p for p in signature.parameters if p != "self"] and "Args:" not in doc:
                lacking.append(f"{cls.__name__}.{name}: Args")
            if signature.return_annotation not in ("None", None) and "Returns:" not in doc:
                lacking.append(f"{cls.__name__}.{name}: Returns")
    assert lacking == []
    for documented in (
        duroxide_trio.Client,
        duroxide_trio.Client.start_orchestration,
        duroxide_trio.Client.wait_for_orchestration,
        duroxide_trio.OrchestrationContext.schedule_activity,
        duroxide_trio.OrchestrationContext.schedule_timer,
        duroxide_trio.Registry.add_activity,
        duroxide_trio.Registry.add_orchestration,
        duroxide_trio.RetryPolicy,
        duroxide_trio.RuntimeOptions,
    ):
        assert "Raises:" in (inspect.getdoc(documented) or ""), documented
    for with_attributes in (
        duroxide_trio.OrchestrationContext,
        duroxide_trio.OrchestrationState,
        duroxide_trio.ErrorDetails,
        duroxide_trio.ActivityContext,
        duroxide_trio.Backoff,
        duroxide_trio.Event,
    ):
        assert "Attributes:" in (with_attributes.__doc__ or ""), with_attributes
