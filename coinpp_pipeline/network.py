"""The base network f_θ: a SIREN whose hidden layers are shifted (and optionally scaled) by
modulations that a linear hypernetwork computes from a per-patch latent vector."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


class ModulatedSiren(nn.Module):
    """SIREN with latent-driven modulations (COIN++ "LatentToModulation" + "ModulatedSiren").

    Hidden layer ``i`` computes ``sin(w0 * (a_i * (W_i h + b_i) + s_i))`` with shift ``s_i`` and
    scale ``a_i = 1 + c_i`` (``c_i = 0`` unless ``scale_modulations``); the last layer is
    linear and not modulated. ``(s, c) = H z + h_0``: one ``nn.Linear(latent_dim, n_mods)``.
    A zero latent therefore gives the meta-learned default modulation ``h_0``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dims = [c.in_features] + [c.width] * (c.depth - 1)
        self.hidden: list[nn.Linear] = nn.ModuleList(  # type: ignore[assignment]
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.last = nn.Linear(c.width, c.channels)
        self.to_modulations = nn.Linear(c.latent_dim, c.n_modulations)
        lr = torch.full((c.latent_dim,), float(c.inner_lr))
        # Meta-SGD: learned per-dimension inner learning rates (a buffer when disabled).
        if c.meta_sgd:
            self.inner_lr = nn.Parameter(lr)
        else:
            self.register_buffer("inner_lr", lr)
        self._siren_init()

    def _siren_init(self) -> None:
        w0 = self.config.w0
        with torch.no_grad():
            for i, layer in enumerate(self.hidden):
                fan_in = layer.in_features
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / w0
                layer.weight.uniform_(-bound, bound)
                layer.bias.uniform_(-bound, bound)
            bound = math.sqrt(6.0 / self.last.in_features) / w0
            self.last.weight.uniform_(-bound, bound)
            self.last.bias.zero_()
            self.to_modulations.bias.zero_()

    def modulations(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``latents (P, L)`` -> ``shifts (P, depth-1, width)``, ``scales`` or None."""
        m = self.to_modulations(latents)
        n_hidden, width = self.config.depth - 1, self.config.width
        if self.config.scale_modulations:
            shift, scale = m.split(n_hidden * width, dim=-1)
            return shift.view(-1, n_hidden, width), 1.0 + scale.view(-1, n_hidden, width)
        return m.view(-1, n_hidden, width), None

    def forward(self, coords: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``coords (P or 1, N, F)``, ``latents (P, L)`` -> values ``(P, N, C)``."""
        shifts, scales = self.modulations(latents)
        h = coords
        w0 = self.config.w0
        for i, layer in enumerate(self.hidden):
            pre = layer(h)
            if scales is not None:
                pre = pre * scales[:, i, None, :]
            h = torch.sin(w0 * (pre + shifts[:, i, None, :]))
        return self.last(h)
