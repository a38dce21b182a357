"""A vision transformer with torchvision's ViT module names, written to trace cleanly with torch.fx.

Names and shapes follow torchvision's ``VisionTransformer`` (``conv_proj``, ``class_token``,
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp.0,
mlp.3}``, ``encoder.ln``, ``heads.head``), so a torchvision ``state_dict`` of the same configuration
loads with ``strict=True``. The default configuration is ViT-Ti/16 (DeiT-tiny: hidden 192, 12 layers,
3 heads, MLP 768; 5,717,416 parameters with 1000 classes). torchvision ships no such size; its
``vit_b_16`` is ``image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
mlp_dim=3072``.

Differences from torchvision, all invisible to a ``state_dict``: the class token is expanded with
``expand_as`` on a slice of the patch tokens (no ``x.shape[0]``), patches are flattened with
``flatten(2).transpose(1, 2)`` (no dynamic reshape), there is no input-size assertion (a wrong size
fails at the position-embedding add), and the classification head starts from small random weights
rather than zeros, so outputs of a freshly built model depend on its input (split-equals-original
tests would be vacuous on a constant output). ``nn.MultiheadAttention`` is a torch.fx leaf, so each
attention is one graph node.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from splitdnn.errors import ConfigError

__all__ = ["Encoder", "EncoderBlock", "VisionTransformer", "vit_tiny"]


class MLPBlock(nn.Sequential):
    """Linear, GELU, dropout, linear, dropout: children ``0`` ... ``4`` as torchvision's MLPBlock."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(
        self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, S, D)
        y = self.ln_1(x)
        y = self.self_attention(y, y, y, need_weights=False)[0]  # (B, S, D)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding, a stack of encoder blocks and a final layer norm."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        blocks: OrderedDict[str, nn.Module] = OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout))
            for i in range(num_layers)
        )
        self.layers = nn.Sequential(blocks)
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, S, D)
        x = self.dropout(x + self.pos_embedding)
        return self.ln(self.layers(x))


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021): patchify, prepend a class token, encode, classify the class token."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 3,
        hidden_dim: int = 192,
        mlp_dim: int = 768,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("mlp_dim", mlp_dim),
            ("num_classes", num_classes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"vision transformer {name} must be a positive integer, found {value!r}")
        if image_size % patch_size:
            raise ConfigError(
                f"vision transformer image_size must be a multiple of patch_size, found image_size="
                f"{image_size} and patch_size={patch_size}; pick e.g. image_size={patch_size * 2}"
            )
        if hidden_dim % num_heads:
            raise ConfigError(
                f"vision transformer hidden_dim must be a multiple of num_heads, found hidden_dim="
                f"{hidden_dim} and num_heads={num_heads}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes

        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1  # patches plus the class token
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(
            seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        self.seq_length = seq_length
        head = nn.Linear(hidden_dim, num_classes)
        self.heads = nn.Sequential(OrderedDict(head=head))

        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1.0 / fan_in))
        if self.conv_proj.bias is not None:
            nn.init.zeros_(self.conv_proj.bias)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, image_size, image_size)
        x = self.conv_proj(x)  # (B, D, n_h, n_w)
        x = torch.flatten(x, 2).transpose(1, 2)  # (B, N, D), N = n_h * n_w
        cls = self.class_token.expand_as(x[:, :1])  # (B, 1, D) without reading the batch size
        x = torch.cat([cls, x], dim=1)  # (B, N + 1, D)
        x = self.encoder(x)  # (B, N + 1, D)
        return self.heads(x[:, 0])  # (B, num_classes)


def vit_tiny(
    image_size: int = 224,
    patch_size: int = 16,
    num_layers: int = 12,
    num_heads: int = 3,
    hidden_dim: int = 192,
    mlp_dim: int = 768,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    num_classes: int = 1000,
) -> VisionTransformer:
    """ViT-Ti/16 by default (5,717,416 parameters at 224x224 with 1000 classes)."""
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
    )
