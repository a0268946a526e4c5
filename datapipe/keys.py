"""Sample keys: the stable, safe names every input and sample is stored under.

A key is a relative, slash-separated name without dots (WebDataset splits a tar member's name
at the first dot): ``cats/tom_01``. Samples an expanding stage derives from one input are
``KEY@NNNN``. Sources make keys with :func:`sanitize_key`; the engine and the store check
them with :func:`check_key`. A small core utility: stages may import it, it imports nothing
but :mod:`datapipe.errors`.

>>> sanitize_key("cats/tom_01.jpg")
'cats/tom_01'
>>> item_key_of("clips/a@0003")
'clips/a'
"""

from __future__ import annotations

import hashlib
import re

from datapipe.errors import ItemError

#: Keys are relative, slash-separated names without dots (WebDataset splits at the first dot).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-@]+(/[A-Za-z0-9_\-@]+)*$")
MAX_KEY_LENGTH = 200
#: a path stem that is already a key, as :func:`sanitize_key` would make it
_SAFE_STEM = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


def check_key(key: str, *, item: bool = False) -> str:
    """Refuse keys that could name a path outside the output or confuse a tar reader.

    ``item=True`` checks an input key, which may not contain '@' (reserved for the samples
    an expanding stage derives from it: ``KEY@0003``).

    Returns
    -------
    str
        ``key`` itself; a bad key raises :class:`~datapipe.errors.ItemError` instead.

    Examples
    --------
    >>> check_key("cats/tom_01")
    'cats/tom_01'
    >>> check_key("../x")
    Traceback (most recent call last):
    ...
    datapipe.errors.ItemError: security: unsafe sample key '../x': use letters, digits, _ - and /
    """
    if item and isinstance(key, str) and "@" in key:
        raise ItemError("invalid", f"input key {key!r} contains '@', reserved for derived samples")
    if not isinstance(key, str) or not key:
        raise ItemError("security", f"empty or non-string sample key {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ItemError("security", f"sample key longer than {MAX_KEY_LENGTH} characters")
    if not KEY_PATTERN.match(key):  # no dots, no empty parts: nothing like '..' gets through
        raise ItemError("security", f"unsafe sample key {key!r}: use letters, digits, _ - and /")
    return key


def sanitize_key(relpath: str) -> str:
    """A stable key from a relative path: drop the suffix, map unsafe characters to '_'.

    When characters had to be replaced, a short hash of the original path is appended, so
    ``a b.jpg`` and ``a_b.jpg`` (or ``é.jpg`` and ``è.jpg``) still get different keys.

    Returns
    -------
    str
        The key: the relative path without its suffix, safe for tar members.

    Examples
    --------
    >>> sanitize_key("cats/tom_01.jpg")
    'cats/tom_01'
    >>> sanitize_key("cats/tom 01.jpg")
    'cats/tom_01_5c9c4c78'
    """
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    if _SAFE_STEM.match(stem):  # the common case: nothing to replace or drop
        return stem
    parts = [p for p in stem.split("/") if p not in ("", ".")]
    safe = [re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in parts]
    key = "/".join(safe)
    if safe != parts:
        key += "_" + hashlib.blake2b(relpath.encode(), digest_size=4).hexdigest()
    return key


def item_key_of(sample_key: str) -> str:
    """The input key a sample came from: samples of an expanded item are ``KEY@NNNN``."""
    return sample_key.split("@", 1)[0]
