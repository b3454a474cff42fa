"""Which keys a repository accepts: ``TrustStore``.

Trust is a set of whole public keys, loaded from key files or directories of ``.pub``
files, plus optionally bare key ids (``fedvc verify --trust 56475aa75463474c``): a key id
names a key the verifier does not hold a file for, and matches the author key a commit
carries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedvc.signing import (
    KEY_FILE_SUFFIXES,
    KeyFileError,
    KeyId,
    PublicKey,
    SigningError,
    load_public_key,
)


class TrustStore:
    """The public keys whose signatures a repository accepts. Never changed in place."""

    __slots__ = ("_extra_ids", "_key_ids", "_keys")

    def __init__(self, keys: Iterable[PublicKey] = (), key_ids: Iterable[str] = ()) -> None:
        self._keys: frozenset[PublicKey] = frozenset(keys)
        for key in self._keys:
            if not isinstance(key, PublicKey):
                raise SigningError(f"a trust store holds PublicKey objects, got {key!r}")
        self._extra_ids = frozenset(KeyId(key_id) for key_id in key_ids)
        self._key_ids: frozenset[KeyId] = frozenset(key.key_id for key in self._keys)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustStore:
        """Load every key named by ``paths``: key files, or directories of key files.

        In a directory, every regular file ending in .pub, .pem or .key is read (private key
        files contribute their public half); a directory with none of them is an error, since
        trusting nobody by accident would reject every signature.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        keys: list[PublicKey] = []
        for item in paths:
            location = Path(item)
            if location.is_dir():
                files = sorted(
                    entry
                    for entry in location.iterdir()
                    if entry.is_file() and entry.name.endswith(KEY_FILE_SUFFIXES)
                )
                if not files:
                    raise KeyFileError(
                        f"trust directory {location} holds no key files: expected files ending "
                        f"in {', '.join(KEY_FILE_SUFFIXES)} (for example a key's .pub file)"
                    )
                keys.extend(load_public_key(file) for file in files)
            else:
                keys.append(load_public_key(location))
        return cls(keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[PublicKey]:
        """Keys in key-id order, so listings are stable."""
        return iter(sorted(self._keys, key=lambda key: (key.key_id, key.raw)))

    def __repr__(self) -> str:
        return f"TrustStore(key_ids={sorted(self.key_ids())!r})"

    def key_ids(self) -> frozenset[KeyId]:
        """The ids of all trusted keys, the keys trusted by id alone included."""
        return self._key_ids | self._extra_ids

    def trusts_key_id(self, key_id: str) -> bool:
        """True iff a trusted key (or a key id trusted as such) has this id."""
        return key_id in self._key_ids or key_id in self._extra_ids

    def trusts(self, key: PublicKey) -> bool:
        """Whether signatures by ``key`` are accepted: the key itself or its id is trusted."""
        return key in self._keys or key.key_id in self._extra_ids

    def with_key(self, key: PublicKey) -> TrustStore:
        """A new store that also trusts ``key``."""
        return TrustStore((*self._keys, key), self._extra_ids)
