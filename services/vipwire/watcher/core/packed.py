"""A mapping whose values are kept encoded, and decoded on each read.

The watcher keeps, for every Service of its cluster, the Service as the API
server has it, its EndpointSlices and what ipam and the lbdriver last said.
Decoded, a small Service alone is a tree of some twenty dicts, lists and
strings, about 3 KB; msgpack-encoded it is a few hundred bytes, and decoding
it again takes microseconds. A worker reads an entry a few times per change;
the mapping holds it for the Service's lifetime. So the trade is one-sided.

Each read returns a new object: mutating it changes nothing stored.

:class:`Interned` is the other half of keeping a cluster's Services small: one copy of
what many of them hold alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar, overload

import msgspec

T = TypeVar("T")
D = TypeVar("D")
H = TypeVar("H", bound=Hashable)

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


class Interned(Generic[H]):
    """One copy of each equal value held, counted by holder, dropped with the last one.

    For values many entries hold alike (in DSR most Services of a cluster have the same
    member nodes): each holder keeps the shared copy instead of its own.
    """

    __slots__ = ("_copies", "_uses")

    def __init__(self) -> None:
        self._copies: dict[H, H] = {}
        self._uses: Counter[H] = Counter()

    def take(self, value: H) -> H:
        """The shared copy of ``value``, now held once more."""
        value = self._copies.setdefault(value, value)
        self._uses[value] += 1
        return value

    def release(self, value: H) -> None:
        """One holder of ``value`` let it go."""
        self._uses[value] -= 1
        if self._uses[value] <= 0:
            del self._uses[value]
            self._copies.pop(value, None)

    def __iter__(self) -> Iterator[H]:
        return iter(self._copies)

    def __len__(self) -> int:
        return len(self._copies)
