"""Lists that psycopg dumps as a fixed array type, without looking at their elements first.

A plain ``list`` parameter makes psycopg scan it to choose the element type (and, for ints, the
smallest integer type that fits every element) before it can dump it: a turn's commit passes seventeen
arrays, and that scan was ~40 % of the parameter conversion, itself ~7 % of the runtime's CPU on
PostgreSQL. The statements cast every array parameter anyway (``%b::bigint[]``), so the hot paths pass
these subclasses, whose dumpers carry the array type: ``TextArray`` (``text[]``), ``BigintArray``
(``bigint[]``), ``BoolArray`` (``boolean[]``). ``None`` elements are SQL NULLs, as with plain lists.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import postgres
from psycopg.types.array import ListBinaryDumper

__all__ = ["BigintArray", "BoolArray", "TextArray"]


class TextArray(list[Any]):
    """A list dumped as ``text[]``."""


class BigintArray(list[Any]):
    """A list dumped as ``bigint[]``."""


class BoolArray(list[Any]):
    """A list dumped as ``boolean[]``."""


def _dumper(type_name: str) -> type[ListBinaryDumper]:
    info = postgres.types[type_name]
    # With ``oid`` set psycopg neither scans the list nor "upgrades" the dumper; ``element_oid`` picks the
    # element dumper (the same attributes ``psycopg.types.array.register_array`` gives its dumpers).
    attributes = {"oid": info.array_oid, "element_oid": info.oid}
    return type(f"{type_name.title()}ArrayDumper", (ListBinaryDumper,), attributes)


# Registered once on psycopg's global adapters, which every connection copies when it is made; only
# these three classes are affected.
for _cls, _name in ((TextArray, "text"), (BigintArray, "int8"), (BoolArray, "bool")):
    psycopg.adapters.register_dumper(_cls, _dumper(_name))
