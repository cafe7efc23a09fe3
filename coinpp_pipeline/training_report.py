"""Training reports: a learning-curve PNG and a markdown summary of a meta-trained model."""

from __future__ import annotations

import io
from typing import Any

import fsspec

from .model import Model


def learning_curve_png(report: dict[str, Any], url: str, storage_options: dict[str, Any]) -> str | None:
    """Plot validation PSNR and training loss against steps; write a PNG to ``url``.

    Returns the URL, or None when matplotlib is not installed or there is no history.
    """
    history = report.get("history") or []
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if "val_psnr" in history[0]:  # patch model (meta-learning)
        ax.plot(steps, [h["val_psnr"] for h in history], "o-", label="validation PSNR (normalised units)")
        ax.set_xlabel("outer step")
        ax.set_ylabel("dB")
        ax2 = ax.twinx()
        ax2.semilogy(steps, [h["train_loss"] for h in history], "r--", label="training loss")
        ax2.set_ylabel("MSE (normalised)")
    else:  # latent-grid model: training MSE and bits per value
        ax.semilogy(steps, [h["mse"] for h in history], "o-", label="training MSE (normalised)")
        ax.set_xlabel("step")
        ax2 = ax.twinx()
        ax2.plot(steps, [h["bpv"] for h in history], "r--", label="bits/value (rate proxy)")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with fsspec.open(url, "wb", **storage_options) as f:
        f.write(buf.getvalue())
    return url


def report_markdown(model: Model, url: str, curve: str | None) -> str:
    r = model.report
    if r.get("kind") == "grid":
        last = (r.get("history") or [{}])[-1]
        lines = [
            f"# COIN++ latent-grid model `{model.sha256[:16]}…`",
            "",
            f"- file: `{url}` ({len(model.to_bytes()):,} bytes), sha256 `{model.sha256}`",
            f"- config: {model.config.to_dict()}",
            f"- training: {r.get('items')} fields of shape {r.get('field_shape')}, "
            f"{r.get('train_seconds', 0):.0f} s; final MSE {last.get('mse', float('nan')):.4f} "
            f"(normalised), {last.get('bpv', float('nan')):.4f} bits/value",
        ]
        if curve:
            lines += ["", f"Learning curve: `{curve}`"]
        return "\n".join(lines)
    lines = [
        f"# COIN++ model `{model.sha256[:16]}…`",
        "",
        f"- file: `{url}` ({len(model.to_bytes()):,} bytes), sha256 `{model.sha256}`",
        f"- architecture: depth {model.config.depth}, width {model.config.width}, latent "
        f"{model.config.latent_dim}, patch {model.config.patch_shape}, grid {model.config.grid}, "
        f"coords {model.config.coords}, {model.config.bits} bits",
        f"- training: {r.get('train_items')} items, validation {r.get('val_items')} items, "
        f"best step {r.get('best_step')}, device {r.get('device')}, "
        f"{r.get('train_seconds', 0):.0f} s",
        f"- best validation PSNR (normalised units): {r.get('best_val_psnr_normalised')}",
    ]
    if curve:
        lines += ["", f"Learning curve: `{curve}`"]
    return "\n".join(lines)


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) derived from ``text``."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60] or "coinpp"
