"""Generators for the inference tests: random weights far from the identity, and the fold/save check."""

from __future__ import annotations

import torch

from dpe_core.inference_graph import FoldedGenerator
from dpe_core.nn import GeneratorConfig, build_generator, save_model


def randomised_generator(seed: int = 0, init_scale: float = 0.05, output: str = "residual"):
    """A generator whose residual is far from zero and whose iBN sets hold distinct, non-trivial statistics."""
    torch.manual_seed(seed)
    g = build_generator(GeneratorConfig(init_scale=init_scale, output=output))
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return g.eval()


def assert_folds_and_round_trips(model, photo: torch.Tensor, tmp_path) -> None:
    """The folded graph computes model's function, and a saved-then-loaded copy computes it bit for bit."""
    from dpe_core.nn import load_model

    folded = FoldedGenerator(model)
    save_model(model, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    with torch.inference_mode():
        ref = model(photo)
        assert torch.allclose(folded(photo), ref, atol=2e-5 * float((ref - photo).abs().max()), rtol=0)
        assert torch.equal(loaded.eval()(photo), ref)
