"""Model resolution for the storage codecs: sha256 -> loaded, verified :class:`Model`.

A chunk written by the coinpp codec names its model by the sha256 of the model file. To
decode, :func:`resolve_model` finds that file, checks its hash and keeps the loaded model in
a per-process cache. Search order:

1. models registered in this process with :func:`register_model` (tests, notebooks, a
   writer that still holds its model) and models already loaded (the cache);
2. every directory of the ``COINPP_MODEL_PATH`` environment variable, in order
   (``os.pathsep``-separated local directories or fsspec URLs such as ``s3://bucket/models``;
   ``scheme://`` prefixes survive the ``:`` separator), looking for ``<sha256>.coinpp``;
3. the ``model_url`` written in the codec's configuration (subject to the policy below).

Security policy
---------------
A store's metadata (``.zarray``/``zarr.json``, including the codec configuration) is
**untrusted input**:

* Opening a store or decoding a chunk never executes code: model files are safetensors
  tensors plus JSON metadata, parsed without pickle or ``torch.load``; chunk bytes are parsed
  by a bounds-checked reader (:mod:`coinpp_pipeline.bitstream`).
* Every model file is verified against the sha256 named by the codec before it is used, so
  a file found anywhere can only decode the chunks it wrote. A wrong or damaged file raises
  :class:`~coinpp_pipeline.errors.ModelMismatchError`; nothing is ever decoded with it.
* The ``model_url`` named by a store is fetched only when it is

  - a local path or a ``file://`` (or in-process ``memory://``) URL, or
  - relative, and the store's own location is known (passed as ``store_url``): it is
    resolved against that location and must stay inside the directory holding the store, or
  - an absolute URL under the directory holding the store (when known), or
  - under a prefix the user allowed: the ``COINPP_ALLOWED_MODEL_URLS`` environment variable
    (comma-separated prefixes such as ``s3://my-bucket/models/,https://example.org/m/``) or
    :func:`allow_model_urls`.

  Anything else (e.g. an ``http://`` or ``s3://`` URL chosen by whoever wrote the store) is
  refused with :class:`ModelURLNotAllowedError`, naming the hash, the URL and how to allow it.
  Model files larger than ``COINPP_MAX_MODEL_BYTES`` (default 1 GiB) or that are not regular
  files are refused before they are read.

Neither zarr codec API tells a codec where its store lives, so inside zarr the store location
is unknown: put models in ``COINPP_MODEL_PATH``, allow their URL prefix, or register them.
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
from collections.abc import Iterable

import fsspec

from .errors import ModelFileError, ModelMismatchError
from .model import Model

#: Environment variable listing directories (or fsspec URLs) holding ``<sha256>.coinpp`` files.
MODEL_PATH_ENV = "COINPP_MODEL_PATH"
#: Environment variable choosing the torch device of resolved models (default: cuda if present).
DEVICE_ENV = "COINPP_DEVICE"
#: Environment variable with comma-separated URL prefixes from which model files may be fetched.
ALLOWED_URLS_ENV = "COINPP_ALLOWED_MODEL_URLS"
#: Environment variable capping the size of a model file that will be read (bytes).
MAX_BYTES_ENV = "COINPP_MAX_MODEL_BYTES"
MODEL_SUFFIX = ".coinpp"
LOCAL_PROTOCOLS = frozenset({"file", "local", "memory"})

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")

_lock = threading.RLock()
_cache: dict[str, Model] = {}
_allowed: list[str] = []


class ModelURLNotAllowedError(ModelFileError):
    """A store names a model URL outside the allowed locations (see the module docstring)."""


# ------------------------------------------------------------------------ registry and policy
def register_model(model: Model) -> str:
    """Make ``model`` resolvable in this process without any file; return its sha256."""
    sha = model.sha256
    with _lock:
        _cache[sha] = model
    return sha


def forget_models() -> None:
    """Drop every registered and cached model (the next resolution reloads from files)."""
    with _lock:
        _cache.clear()


def allow_model_urls(*prefixes: str) -> None:
    """Allow model files to be fetched from URLs starting with any of ``prefixes``."""
    with _lock:
        for p in prefixes:
            if not isinstance(p, str) or not p:
                raise ValueError(f"a URL prefix must be a non-empty string, got {p!r}")
            if p not in _allowed:
                _allowed.append(p)


def disallow_model_urls() -> None:
    """Forget every prefix allowed with :func:`allow_model_urls` (not the environment's)."""
    with _lock:
        _allowed.clear()


def allowed_url_prefixes() -> list[str]:
    """Prefixes allowed by :func:`allow_model_urls` and ``COINPP_ALLOWED_MODEL_URLS``."""
    env = [p.strip() for p in os.environ.get(ALLOWED_URLS_ENV, "").split(",") if p.strip()]
    with _lock:
        return list(_allowed) + env


def split_search_path(value: str) -> list[str]:
    """Split an ``os.pathsep``-separated list, keeping ``scheme://`` URLs whole on POSIX."""
    parts = value.split(os.pathsep)
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if (
            os.pathsep == ":"
            and _SCHEME_RE.match(part)
            and i + 1 < len(parts)
            and parts[i + 1].startswith("//")
        ):
            part = f"{part}:{parts[i + 1]}"
            i += 1
        if part.strip():
            out.append(part.strip())
        i += 1
    return out


def model_search_path() -> list[str]:
    """The directories of ``COINPP_MODEL_PATH``, in order."""
    return split_search_path(os.environ.get(MODEL_PATH_ENV, ""))


def _max_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_ENV)
    return int(raw) if raw else 1 << 30


def _protocol(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def _is_local(url: str) -> bool:
    return _protocol(url) in LOCAL_PROTOCOLS


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if "://" in base else os.path.join(base, name)


def _store_dir(store_url: str) -> str:
    """The directory holding a store: ``s3://b/x/data.zarr`` -> ``s3://b/x``."""
    return store_url.rstrip("/").rsplit("/", 1)[0] if "/" in store_url.rstrip("/") else ""


def _resolve_relative(url: str, store_url: str) -> str:
    """Resolve a relative ``url`` against the directory holding the store."""
    base = _store_dir(store_url)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, url))}"
    return os.path.normpath(os.path.join(base or ".", url))


def _under(url: str, directory: str) -> bool:
    d = directory.rstrip("/")
    return url == d or url.startswith(d + "/")


def check_model_url(sha256: str, url: str, store_url: str | None = None) -> str:
    """Apply the URL policy; return the URL to fetch or raise :class:`ModelURLNotAllowedError`."""
    relative = "://" not in url and not os.path.isabs(url)
    if relative:
        if store_url is None:
            if ".." in url.replace("\\", "/").split("/"):
                raise ModelURLNotAllowedError(
                    f"model {sha256}: relative model URL {url!r} climbs out of the working "
                    "directory and the store's location is unknown"
                )
            return url  # a local path relative to the working directory
        resolved = _resolve_relative(url, store_url)
        base = _store_dir(store_url)
        if _is_local(resolved) or (base and _under(resolved, base)):
            return resolved
        raise ModelURLNotAllowedError(
            f"model {sha256}: relative model URL {url!r} resolves to {resolved!r}, outside the "
            f"directory of the store {store_url!r}"
        )
    if _is_local(url):
        return url
    if store_url is not None and _store_dir(store_url) and _under(url, _store_dir(store_url)):
        return url
    for prefix in allowed_url_prefixes():
        if url.startswith(prefix):
            return url
    raise ModelURLNotAllowedError(
        f"model {sha256}: the store names the model URL {url!r}, which is not allowed: a store's "
        "metadata is untrusted, so coinpp fetches only local files, files next to the store, and "
        f"URLs under prefixes you allow. To trust it, set {ALLOWED_URLS_ENV}={url!r} (comma-"
        f"separated prefixes), call coinpp_pipeline.resolve.allow_model_urls({url!r}), or copy "
        f"the file to a directory in {MODEL_PATH_ENV} as {sha256}{MODEL_SUFFIX}"
    )


# ------------------------------------------------------------------------ loading
def _try_load(url: str, sha256: str, storage_options: dict | None) -> Model | None:
    """Load and verify ``url``; None if it does not exist. Raises on a bad or wrong file."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if not fs.exists(path):
            return None
        info = fs.info(path)
    except FileNotFoundError:
        return None
    except ModelFileError:
        raise
    except Exception as exc:  # network errors, bad URLs, missing credentials ...
        raise ModelFileError(f"cannot access model file {url}: {type(exc).__name__}: {exc}") from exc
    if info.get("type") not in ("file", None):
        raise ModelFileError(f"model location {url} is not a regular file ({info.get('type')})")
    size = info.get("size")
    if size is not None and size > _max_bytes():
        raise ModelFileError(
            f"model file {url} has {size} bytes, more than {MAX_BYTES_ENV}={_max_bytes()}"
        )
    with fs.open(path, "rb") as f:
        data = f.read(_max_bytes() + 1)
    if len(data) > _max_bytes():
        raise ModelFileError(f"model file {url} exceeds {MAX_BYTES_ENV}={_max_bytes()} bytes")
    try:
        return Model.from_bytes(data, sha256, where=url)
    except ModelFileError as exc:
        if "has sha256" in str(exc):
            raise ModelMismatchError(str(exc)) from exc
        raise


def _candidates(sha256: str, url: str | None, store_url: str | None) -> Iterable[tuple[str, str]]:
    for d in model_search_path():
        yield f"{MODEL_PATH_ENV} entry {d!r}", _join(d, f"{sha256}{MODEL_SUFFIX}")
    if url:
        yield "model_url of the codec configuration", url


def resolve_model(
    sha256: str,
    url: str | None = None,
    store_url: str | None = None,
    storage_options: dict | None = None,
) -> Model:
    """Return the model whose file has this ``sha256`` (loaded once per process).

    Args:
        sha256: 64 lowercase hex digits, as written in the codec configuration.
        url: the codec configuration's ``model_url`` (checked by :func:`check_model_url`).
        store_url: where the store lives, when known (enables store-relative URLs).
        storage_options: fsspec options used for ``url`` (not for ``COINPP_MODEL_PATH``).
    Raises:
        ModelFileError: no such model anywhere (the message lists every place searched), or
            the configured URL is refused (:class:`ModelURLNotAllowedError`).
        ModelMismatchError: files were found but none has this hash.
    """
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256.lower()):
        raise ModelFileError(f"codec configuration names an invalid model hash {sha256!r}")
    sha256 = sha256.lower()
    with _lock:
        if sha256 in _cache:
            return _cache[sha256]
        searched: list[str] = ["models registered in this process"]
        problems: list[str] = []
        mismatch = False
        refused: ModelURLNotAllowedError | None = None
        for what, candidate in _candidates(sha256, url, store_url):
            opts = storage_options if what.startswith("model_url") else None
            if what.startswith("model_url"):
                try:
                    candidate = check_model_url(sha256, candidate, store_url)
                except ModelURLNotAllowedError as exc:
                    refused = exc
                    searched.append(f"{what}: {candidate} (refused by the URL policy)")
                    continue
            searched.append(f"{what}: {candidate}")
            try:
                model = _try_load(candidate, sha256, opts)
            except ModelMismatchError as exc:
                mismatch = True
                problems.append(str(exc))
                continue
            except ModelFileError as exc:
                problems.append(str(exc))
                continue
            if model is not None:
                # Decode on the GPU when there is one (COINPP_DEVICE=cpu|cuda|cuda:1 overrides).
                _cache[sha256] = model.to(os.environ.get(DEVICE_ENV) or None)
                return model
        if not model_search_path():
            searched.append(f"{MODEL_PATH_ENV} (not set)")
        if url is None:
            searched.append("model_url (not set in the codec configuration)")
    where = "\n  - ".join(searched)
    if problems:
        detail = "\n  - ".join(problems)
        cls = ModelMismatchError if mismatch else ModelFileError
        raise cls(
            f"no valid file for coinpp model {sha256}; searched:\n  - {where}\nproblems:\n"
            f"  - {detail}"
        )
    if refused is not None:
        raise ModelURLNotAllowedError(f"{refused}\nsearched:\n  - {where}")
    raise ModelFileError(
        f"coinpp model {sha256} not found; searched:\n  - {where}\nPut the model file in a "
        f"directory of {MODEL_PATH_ENV} as {sha256}{MODEL_SUFFIX}, or register it with "
        "coinpp_pipeline.resolve.register_model(model)"
    )
