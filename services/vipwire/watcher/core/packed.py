"""A mapping whose values are kept encoded, and decoded on each read.

The watcher keeps, for every Service of its cluster, the Service as the API
server has it, its EndpointSlices and what ipam and the lbdriver last said.
Decoded, a small Service alone is a tree of some twenty dicts, lists and
strings, about 3 KB; msgpack-encoded it is a few hundred bytes, and decoding
it again takes microseconds. A worker reads an entry a few times per change;
the mapping holds it for the Service's lifetime. So the trade is one-sided.

Each read returns a new object: mutating it changes nothing stored.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Generic, TypeVar, overload

import msgspec

T = TypeVar("T")
D = TypeVar("D")

_encode = msgspec.msgpack.Encoder().encode


class PackedDict(MutableMapping[str, T], Generic[T]):
    """``dict[str, T]`` in behaviour, with every value held as msgpack bytes.

    ``kind`` is what values decode to: a msgspec Struct (or union of tagged
    Structs), or ``dict[str, Any]`` for decoded JSON objects.
    """

    __slots__ = ("_data", "_decode")

    def __init__(self, kind: Any) -> None:
        self._data: dict[str, bytes] = {}
        self._decode = msgspec.msgpack.Decoder(kind).decode

    def __getitem__(self, key: str) -> T:
        value: T = self._decode(self._data[key])
        return value

    @overload
    def get(self, key: str, /) -> T | None: ...

    @overload
    def get(self, key: str, /, default: D) -> T | D: ...

    def get(self, key: str, /, default: Any = None) -> Any:
        # MutableMapping's get goes through __getitem__ and a KeyError: this is hot.
        data = self._data.get(key)
        return default if data is None else self._decode(data)

    def __setitem__(self, key: str, value: T) -> None:
        self._data[key] = _encode(value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)
