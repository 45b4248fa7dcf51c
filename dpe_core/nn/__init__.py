"""Networks of the Deep Photo Enhancer and the one factory that builds them.

``build_generator(config=None)`` and ``build_critic(config=None)`` return modules with the release's
defaults; ``save_model`` / ``load_model`` store a generator as safetensors + JSON sidecar (never pickle).
"""

from __future__ import annotations

from dpe_core.nn.config import CriticConfig, GeneratorConfig
from dpe_core.nn.critic import Critic
from dpe_core.nn.generator import GlobalUNetGenerator, conv_parameter_count
from dpe_core.nn.layers import IndividualBatchNorm2d, SymmetricConv2d, selu, symmetric_pad
from dpe_core.nn.modelfile import ModelFileError, ModelInfo, load_model, save_model


def build_generator(config: GeneratorConfig | dict | None = None) -> GlobalUNetGenerator:
    """Global U-Net generator; forward(x [B,3,H,W] in [0,1], domain=0) -> [B,3,H,W]."""
    if isinstance(config, dict):
        config = GeneratorConfig.model_validate(config)
    return GlobalUNetGenerator(config)


def build_critic(config: CriticConfig | dict | None = None) -> Critic:
    """Critic; forward(x [B,3,H,W] in [0,1]) -> scores [B]."""
    if isinstance(config, dict):
        config = CriticConfig.model_validate(config)
    return Critic(config)


__all__ = [
    "Critic",
    "CriticConfig",
    "GeneratorConfig",
    "GlobalUNetGenerator",
    "IndividualBatchNorm2d",
    "ModelFileError",
    "ModelInfo",
    "SymmetricConv2d",
    "build_critic",
    "build_generator",
    "conv_parameter_count",
    "load_model",
    "save_model",
    "selu",
    "symmetric_pad",
]
