"""The GAN updates as step objects with named phases; the loop that drives them stays dumb.

Paper-to-code name map (Chen et al., "Deep Photo Enhancer", CVPR 2018), written once here:
    X, Y             source photos (to enhance) and reference photos (the target style)
    G_X  (paper G_X) generator X -> Y, the enhancer we ship ............ ``self.g_x``
    G_Y  (paper G_Y) generator Y -> X, only used for the cycle ......... ``self.g_y``
    D_Y  (paper D_Y) critic: real y vs G_X(x) ........................... ``self.d_y``
    D_X  (paper D_X) critic: real x vs G_Y(y) ........................... ``self.d_x``
    lambda_Y, lambda_X  adaptive gradient-penalty weights of D_Y, D_X (A-WGAN) ``self.lambda_y/_x``
    iBN set 0 = real inputs (x, y), set 1 = generated inputs (G_X x, G_Y y in the cycle pass).
The one-way GAN keeps G_X and D_Y only; the supervised variant keeps G_X only.
"""

from __future__ import annotations

import torch
from torch import nn

from dpe_core.losses import (
    AdaptiveLambda,
    critic_wasserstein_loss,
    generator_adversarial_loss,
    gradient_penalty,
    masked_mse,
    per_image_mse,
    psnr_loss,
)
from dpe_core.nn import build_critic, build_generator
from dpe_core.nn.generator import ColourPrior
from dpe_core.training.config import TrainConfig
from dpe_core.training.data import Batch, UnpairedData
from dpe_core.training.transport import AffineColourTransport, QuantileColourTransport, fit_colour_transport


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch RNG that depends only on (seed, step): resumed runs draw the same numbers."""
    return torch.Generator(device="cpu").manual_seed(hash((seed, step, 3)) & 0x7FFFFFFFFFFF)


class GANStep:
    """Common state of all modes: named modules, two optimizers, A-WGAN weights, iteration counter."""

    generator_names: tuple[str, ...] = ()
    critic_names: tuple[str, ...] = ()

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        # Initial weights depend only on config.seed (a run is reproducible from its config), without
        # disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for name in self.generator_names:
                setattr(self, name, build_generator(config.generator).to(self.device).train())
            for name in self.critic_names:
                setattr(self, name, build_critic(config.critic).to(self.device).train())
        adam = {"lr": config.lr, "betas": config.betas}
        self.opt_g = torch.optim.Adam(self._generator_groups(config), **adam)
        self.opt_d = (
            torch.optim.Adam([p for n in self.critic_names for p in getattr(self, n).parameters()],
                             **adam | {"lr": config.lr * config.critic_lr_scale})
            if self.critic_names
            else None
        )
        self.lambdas = {f"lambda_{n[-1]}": AdaptiveLambda(config.adaptive_lambda) for n in self.critic_names}
        self.iteration = 0

    # -- bookkeeping -------------------------------------------------------------------------------
    def autocast(self) -> torch.autocast:
        """bf16 autocast of a forward pass when config.precision asks for it (weights stay fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def modules(self) -> dict[str, nn.Module]:
        return {n: getattr(self, n) for n in self.generator_names + self.critic_names}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g} | ({"opt_d": self.opt_d} if self.opt_d is not None else {})

    def _generator_groups(self, config) -> list[dict]:
        """Adam parameter groups of the generators: one per lr scale (config.lr_scales by name prefix)."""
        groups: dict[float, list] = {}
        for n in self.generator_names:
            for name, p in getattr(self, n).named_parameters():
                scale = next((v for k, v in config.lr_scales.items() if name.startswith(k)), 1.0)
                groups.setdefault(scale, []).append(p)
        return [{"params": ps, "lr": config.lr * s, "lr_scale": s} for s, ps in groups.items()]

    def set_lr(self, lr: float) -> None:
        """Generator lr ``lr`` times each group's lr_scale; the critic's is ``lr * config.critic_lr_scale``."""
        for name, opt in self.optimizers().items():
            for group in opt.param_groups:
                scale = self.config.critic_lr_scale if name == "opt_d" else group.get("lr_scale", 1.0)
                group["lr"] = lr * scale

    @property
    def enhancer(self) -> nn.Module:
        """The generator users get: G_X."""
        return self.g_x

    def generator_due(self) -> bool:
        """Whether this iteration also updates the generator(s) (every N-th critic step)."""
        n = self.config.critic_steps_per_generator_step if self.critic_names else 1
        return (self.iteration + 1) % n == 0

    def step(self, batch: Batch) -> dict[str, float]:
        """One iteration: a critic phase (GAN modes), then a generator phase when due."""
        batch = batch.to(self.device)
        rng = step_generator(self.config.seed, self.iteration)
        metrics: dict[str, float] = {}
        if self.critic_names:
            metrics |= self.critic_phase(batch, rng)
        if self.generator_due():
            metrics |= self.generator_phase(batch)
        self.iteration += 1
        return metrics

    def prepare(self, data: object) -> None:
        """Called once by the loop with the training data (data.train) before the first step; most modes need
        nothing from it."""

    def critic_phase(self, batch: Batch, rng: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def _critic_fakes(generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """G(x) for the critic, as the release computes it: inference-mode batch norm (running statistics),
        no gradient. The generator's running statistics therefore move only in its own update, never in a
        critic-only iteration; its train/eval mode is restored afterwards."""
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                return generator(x, domain=0)
        finally:
            generator.train(was_training)

    def generator_phase(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def _critic_update(
        self, pairs: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]], rng: torch.Generator
    ) -> dict[str, float]:
        """pairs: (lambda name, critic, real, fake). Wasserstein + lambda * penalty per critic, one Adam step."""
        self.opt_d.zero_grad(set_to_none=True)
        total = 0.0
        metrics: dict[str, float] = {}
        penalties = {}
        for lam_name, critic, real, fake in pairs:
            wasserstein = critic_wasserstein_loss(critic(real), critic(fake))
            penalty = gradient_penalty(critic, real, fake, generator=rng)
            total = total + wasserstein + self.lambdas[lam_name].value * penalty
            penalties[lam_name] = float(penalty.detach())
            metrics[f"wasserstein_{lam_name[-1]}"] = float(-wasserstein.detach())
            metrics[f"penalty_{lam_name[-1]}"] = penalties[lam_name]
        total.backward()
        self.opt_d.step()
        for lam_name, value in penalties.items():
            metrics[lam_name] = self.lambdas[lam_name].update(value)
        metrics["loss_critic"] = float(total.detach())
        return metrics


def set_colour_prior(prior: ColourPrior, transport: QuantileColourTransport | AffineColourTransport,
                     inverse: bool) -> None:
    """Make a generator's colour prior compute the transport (or its inverse) on [0,1] images."""
    if isinstance(transport, QuantileColourTransport):
        ends = (transport.reference, transport.source) if inverse else (transport.source, transport.reference)
        prior.set_curves(*(ends[k].to(prior.curve_in) for k in (0, 1)))
        return
    matrix, offset = transport.matrix_and_offset(inverse)
    prior.set_affine(matrix.to(prior.matrix), offset.to(prior.offset))


class TwoWayGANStep(GANStep):
    """Unpaired two-way GAN with iBN, A-WGAN critics, identity (1e3) and cycle (1e4) losses."""

    generator_names = ("g_x", "g_y")
    critic_names = ("d_x", "d_y")
    transport: QuantileColourTransport | AffineColourTransport | None = None

    def prepare(self, data: object) -> None:
        """With transport_weight > 0: the colour transport of the source photos to the references, from every
        pixel of both sets (recomputed on resume: it depends only on the photos)."""
        if self.config.transport_weight > 0 or self.config.transport_init:
            if not isinstance(data, UnpairedData):
                raise TypeError(f"transport_weight and transport_init need unpaired data (source and reference "
                                f"photos), got {type(data).__name__}")
            self.transport = fit_colour_transport(data.source.images, data.reference.images,
                                                  self.config.transport_kind)
        if self.config.transport_init:  # the same values on resume: the transport depends only on the photos
            set_colour_prior(self.g_x.colour_prior, self.transport, inverse=False)
            set_colour_prior(self.g_y.colour_prior, self.transport, inverse=True)

    def critic_phase(self, batch: Batch, rng: torch.Generator) -> dict[str, float]:
        fake_y = self._critic_fakes(self.g_x, batch.x)
        fake_x = self._critic_fakes(self.g_y, batch.y)
        return self._critic_update(
            [("lambda_y", self.d_y, batch.y, fake_y), ("lambda_x", self.d_x, batch.x, fake_x)], rng
        )

    def generator_phase(self, batch: Batch) -> dict[str, float]:
        c = self.config
        self.opt_g.zero_grad(set_to_none=True)
        fake_y = self.g_x(batch.x, domain=0)
        fake_x = self.g_y(batch.y, domain=0)
        adversarial = generator_adversarial_loss(self.d_y(fake_y)) + generator_adversarial_loss(self.d_x(fake_x))
        identity = masked_mse(fake_y, batch.x, batch.x_mask) + masked_mse(fake_x, batch.y, batch.y_mask)
        # Cycle pass: generated inputs go through iBN set 1; clip because they re-enter as images.
        generated = 1 if c.individual_bn else 0
        cycle_x = self.g_y(fake_y.clamp(0, 1), domain=generated)
        cycle_y = self.g_x(fake_x.clamp(0, 1), domain=generated)
        cycle = masked_mse(cycle_x, batch.x, batch.x_mask) + masked_mse(cycle_y, batch.y, batch.y_mask)
        loss = adversarial + c.identity_weight * identity + c.cycle_weight * cycle
        extra = {}
        if c.transport_weight > 0:
            if self.transport is None:
                raise RuntimeError("transport_weight > 0 but prepare(data) was not called")
            transport = (masked_mse(fake_y, self.transport.forward(batch.x), batch.x_mask)
                         + masked_mse(fake_x, self.transport.inverse(batch.y), batch.y_mask))
            loss = loss + c.transport_weight * transport
            extra["transport_mse"] = float(transport.detach())
        loss.backward()
        self.opt_g.step()
        return {
            "loss_generator": float(loss.detach()),
            "adversarial": float(adversarial.detach()),
            "identity_mse": float(identity.detach()),
            "cycle_mse": float(cycle.detach()),
        } | extra


class OneWayGANStep(GANStep):
    """Paired one-way GAN: G_X with critic D_Y on the expert targets plus a content MSE to the paired target."""

    generator_names = ("g_x",)
    critic_names = ("d_y",)

    def critic_phase(self, batch: Batch, rng: torch.Generator) -> dict[str, float]:
        fake_y = self._critic_fakes(self.g_x, batch.x)
        return self._critic_update([("lambda_y", self.d_y, batch.y, fake_y)], rng)

    def generator_phase(self, batch: Batch) -> dict[str, float]:
        self.opt_g.zero_grad(set_to_none=True)
        fake_y = self.g_x(batch.x, domain=0)
        adversarial = generator_adversarial_loss(self.d_y(fake_y))
        content = masked_mse(fake_y, batch.y, batch.x_mask)
        loss = adversarial + self.config.content_weight * content
        loss.backward()
        self.opt_g.step()
        return {
            "loss_generator": float(loss.detach()),
            "adversarial": float(adversarial.detach()),
            "content_mse": float(content.detach()),
        }


class SupervisedStep(GANStep):
    """Generator alone: loss = mean(log10(MSE + min_mse)) (maximise PSNR, the release), mean MSE, or mean
    sqrt(MSE + min_mse), over the valid region of each image."""

    generator_names = ("g_x",)

    def critic_phase(self, batch: Batch, rng: torch.Generator) -> dict[str, float]:
        return {}

    def generator_phase(self, batch: Batch) -> dict[str, float]:
        self.opt_g.zero_grad(set_to_none=True)
        freeze = self.config.freeze_bn_after is not None and self.iteration >= self.config.freeze_bn_after
        for module in self.g_x.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(self.g_x.training and not freeze)
        with self.autocast():
            out = self.g_x(batch.x, domain=0)
        out = out.float()
        if self.config.supervised_loss in ("mse", "rmse"):
            errors = per_image_mse(out, batch.y, batch.x_mask)
            rmse = self.config.supervised_loss == "rmse"
            loss = (errors + self.config.min_mse).sqrt().mean() if rmse else errors.mean()
            train_psnr = float(-10 * torch.log10(errors.detach() + 1e-10).mean())
        else:
            loss = psnr_loss(out, batch.y, batch.x_mask, self.config.min_mse)
            train_psnr = float(-10 * loss.detach())
        loss.backward()
        self.opt_g.step()
        return {"loss_generator": float(loss.detach()), "train_psnr": train_psnr}


STEP_CLASSES: dict[str, type[GANStep]] = {
    "two-way": TwoWayGANStep,
    "one-way": OneWayGANStep,
    "supervised": SupervisedStep,
}


def build_step(config: TrainConfig, device: torch.device | str = "cpu") -> GANStep:
    """The step object for config.mode."""
    return STEP_CLASSES[config.mode](config, device)
