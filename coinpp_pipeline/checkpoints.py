"""Model files: one safetensors file whose header metadata carries the JSON description.

No pickle and no ``torch.load``: tensors are parsed by safetensors, the description by
``json``. A model is identified by the sha256 of the file's bytes. Files are read and
written at any fsspec URL (local path, ``memory://``, ``s3://`` ...).

Metadata keys: ``format = "coinpp-model"``, ``format_version = "1"``, ``coinpp`` = JSON
with the model config, normalisation, quantizer bits and training report.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import fsspec
import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .errors import ModelFileError

FORMAT = "coinpp-model"
MODEL_FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serialize(
    tensors: dict[str, torch.Tensor | np.ndarray], description: dict[str, Any], fmt: str = FORMAT
) -> bytes:
    """Tensors + JSON description -> safetensors bytes (deterministic for equal inputs)."""
    ts = {
        k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in sorted(tensors.items())
    }
    metadata = {
        "format": fmt,
        "format_version": str(MODEL_FORMAT_VERSION),
        "coinpp": json.dumps(description, sort_keys=True, separators=(",", ":")),
    }
    return _canonical(safetensors_save(ts, metadata=metadata))


def _canonical(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys. safetensors serialises its metadata
    from a hash map whose order changes from call to call, which made equal models save to
    different bytes (and so get different sha256 identities)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def deserialize(
    data: bytes, expected_sha256: str | None = None, where: str = "<bytes>", fmt: str = FORMAT
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and parse model bytes. Raises :class:`ModelFileError` with ``where`` named."""
    if expected_sha256 is not None:
        got = sha256_hex(data)
        if got != expected_sha256.lower():
            raise ModelFileError(
                f"model file {where} has sha256 {got}, expected {expected_sha256}: "
                "it is a different or damaged model"
            )
    if len(data) < 8:
        raise ModelFileError(f"model file {where} is truncated ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise ModelFileError(f"model file {where} is not a safetensors file (header size {n})")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise ModelFileError(f"model file {where} has an unreadable header: {exc}") from exc
    if meta.get("format") != fmt:
        raise ModelFileError(f"{where} is not a {fmt} file (format={meta.get('format')!r})")
    if meta.get("format_version") != str(MODEL_FORMAT_VERSION):
        raise ModelFileError(
            f"model file {where} has format version {meta.get('format_version')!r}; "
            f"this build reads version {MODEL_FORMAT_VERSION}"
        )
    try:
        description = json.loads(meta["coinpp"])
        tensors = safetensors_load(data)  # safetensors' parser: no pickle
    except Exception as exc:
        raise ModelFileError(f"model file {where} is damaged: {exc}") from exc
    return tensors, description


def differences(a: bytes, b: bytes) -> list[str]:
    """What differs between two model files apart from their reports (which hold wall times):
    ``"config"`` and the names of tensors missing from one or unequal; empty: the same model."""
    (ta, da), (tb, db) = deserialize(a), deserialize(b)
    diff = [] if da.get("config") == db.get("config") else ["config"]
    diff += sorted(set(ta) ^ set(tb))
    return diff + [k for k in ta if k in tb and not torch.equal(ta[k], tb[k])]


def read_bytes(url: str, **storage_options: Any) -> bytes:
    with fsspec.open(url, "rb", **storage_options) as f:
        return f.read()


def write_bytes(url: str, data: bytes, **storage_options: Any) -> None:
    """Write atomically where the filesystem allows (temporary name, then move)."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{sha256_hex(data)[:12]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


TRAIN_STATE_FORMAT = "coinpp-train-state"


def save_train_state(
    url: str,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor],
    info: dict[str, Any],
    **storage_options: Any,
) -> None:
    """Write a resumable meta-training checkpoint (safetensors + JSON, no pickle)."""
    opt = optimizer.state_dict()
    tensors: dict[str, Any] = {f"net.{k}": v for k, v in network.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_state.items()}
    for idx, st in opt["state"].items():
        for name, v in st.items():
            tensors[f"opt.{idx}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    desc = dict(info, param_groups=opt["param_groups"])
    write_bytes(url, serialize(tensors, desc, fmt=TRAIN_STATE_FORMAT), **storage_options)


def load_train_state(
    url: str, network: torch.nn.Module, optimizer: torch.optim.Optimizer, **storage_options: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore network and optimizer in place; return ``(best_state, info)``."""
    tensors, desc = deserialize(read_bytes(url, **storage_options), where=url, fmt=TRAIN_STATE_FORMAT)
    network.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": desc.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return best, desc


def exists(url: str, **storage_options: Any) -> bool:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return bool(fs.exists(path))
