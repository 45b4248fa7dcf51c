"""Training: GAN steps, supervised learning on real photos, checkpoints and bit-exact resume, data pipeline."""

from __future__ import annotations

import copy
import glob

import pytest
import torch

from dpe_core.nn import build_generator, load_model
from dpe_core.quality.degradations import Degradation
from dpe_core.training import (
    CheckpointError,
    DataConfig,
    TrainConfig,
    build_step,
    export_model,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train,
)
from dpe_core.training.data import (
    Batch,
    DegradedPairData,
    PairedData,
    PhotoSet,
    dihedral,
    list_images,
    pad_to_square,
)
from dpe_core.training.loop import TrainingData

TINY_GAN = dict(image_size=64, batch_size=2, critic_steps_per_generator_step=3, lr=1e-3, seed=7, log_every=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_batch(size=64, n=2, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g) * 0.5
    return Batch(x, torch.ones(n, 1, size, size), y, torch.ones(n, 1, size, size))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    """Whether any trainable parameter moved (BN running statistics move in the generator phase's forward)."""
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


def test_critic_lr_scale_sets_the_critics_learning_rate_through_the_schedule():
    config = TrainConfig(mode="two-way", **(TINY_GAN | {"critic_lr_scale": 10.0, "lr": 2e-4, "steps": 10,
                                                        "decay_start": 5}))
    step = build_step(config)
    for iteration, expected in ((0, 2e-4), (8, 2e-4 * 2 / 5)):  # constant, then the linear decay
        step.set_lr(config.lr_at(iteration))
        assert step.opt_g.param_groups[0]["lr"] == pytest.approx(expected)
        assert step.opt_d.param_groups[0]["lr"] == pytest.approx(10 * expected)


def test_lr_scales_give_new_heads_their_own_learning_rate_and_zero_freezes():
    config = TrainConfig(mode="supervised", image_size=32, lr=1e-4, generator={"global_affine": True,
                         "global_stats": True}, lr_scales={"affine_mlp.": 10.0, "stats.": 0.0})
    step = build_step(config)
    rates = {}
    for group in step.opt_g.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    named = dict(step.g_x.named_parameters())
    assert rates[id(named["affine_mlp.0.weight"])] == pytest.approx(1e-3)
    assert rates[id(named["enc1.conv.weight"])] == pytest.approx(1e-4)
    before = named["stats.0.weight"].detach().clone()
    step.set_lr(5e-5)
    assert sorted(g["lr"] for g in step.opt_g.param_groups) == pytest.approx([0.0, 5e-5, 5e-4])
    for _ in range(2):
        step.step(_random_batch(size=32))
    assert torch.equal(named["stats.0.weight"], before)  # scale 0: frozen


def test_two_way_step_updates_all_four_networks_with_finite_losses():
    step = build_step(TrainConfig(mode="two-way", **TINY_GAN))
    before = {name: _snapshot(m) for name, m in step.modules().items()}
    generator_updates = []
    for i in range(6):
        g_x_before = _snapshot(step.g_x)
        metrics = step.step(_random_batch(seed=i))
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
        generator_updates.append(_changed(g_x_before, step.g_x))
        assert {"penalty_x", "penalty_y", "lambda_x", "lambda_y", "loss_critic"} <= metrics.keys()
    # Generators step only on every 3rd critic step (iterations 3 and 6).
    assert generator_updates == [False, False, True, False, False, True]
    for name, module in step.modules().items():
        assert _changed(before[name], module), f"{name} did not change"


def test_two_way_cycle_pass_trains_ibn_set_one():
    step = build_step(TrainConfig(mode="two-way", **(TINY_GAN | {"critic_steps_per_generator_step": 1})))
    set1 = step.g_y.enc1.bn.sets[1]
    before_mean = set1.running_mean.clone()
    step.step(_random_batch())
    assert not torch.equal(set1.running_mean, before_mean)  # G_Y saw generated inputs via set 1
    assert set1.weight.grad is not None or not torch.equal(set1.weight, torch.ones_like(set1.weight))


def _bn_buffers(module):
    return {k: v.detach().clone() for k, v in module.named_buffers()}


@pytest.mark.parametrize("mode", ["two-way", "one-way"])
def test_critic_only_iteration_leaves_generator_running_statistics_alone(mode):
    step = build_step(TrainConfig(mode=mode, **TINY_GAN))  # one generator step per 3 critic steps
    generators = {n: step.modules()[n] for n in step.generator_names}
    before = {n: _bn_buffers(g) for n, g in generators.items()}
    assert any("running_mean" in k for k in before["g_x"])
    metrics = step.step(_random_batch())  # iteration 1 of 3: critic only
    assert "loss_critic" in metrics and "loss_generator" not in metrics
    for name, g in generators.items():
        assert g.training, f"{name} left in eval mode"
        for key, value in g.named_buffers():
            assert torch.equal(before[name][key], value), f"{name}.{key} moved in a critic-only iteration"
    step.step(_random_batch(seed=1))
    step.step(_random_batch(seed=2))  # iteration 3: the generator phase updates the statistics
    assert any(not torch.equal(before["g_x"][k], v) for k, v in step.g_x.named_buffers())


@pytest.mark.parametrize("mode", ["two-way", "one-way"])
def test_critic_fakes_use_inference_mode_batch_norm(mode, monkeypatch):
    step = build_step(TrainConfig(mode=mode, **(TINY_GAN | {"critic_steps_per_generator_step": 1})))
    batch = _random_batch()
    for _ in range(2):  # move the running statistics away from their (0, 1) init first
        step.step(batch)
    seen = []
    update = step._critic_update
    monkeypatch.setattr(step, "_critic_update", lambda pairs, rng: seen.extend(pairs) or update(pairs, rng))
    generators = {"lambda_y": (step.g_x, batch.x), "lambda_x": (getattr(step, "g_y", None), batch.y)}
    expected = {}
    for lam, (g, x) in generators.items():
        if g is not None:
            with torch.no_grad():  # a train-mode forward moves running statistics: run it on a copy
                expected[lam] = (g.eval()(x, domain=0), copy.deepcopy(g).train()(x, domain=0))
            g.train()
    step.critic_phase(batch, torch.Generator().manual_seed(0))
    assert {lam for lam, *_ in seen} == set(expected)
    for lam, _critic, _real, fake in seen:
        eval_out, train_out = expected[lam]
        assert torch.equal(fake, eval_out)
        assert not torch.allclose(fake, train_out)  # batch statistics would give a different fake


def test_one_way_step_trains_generator_and_single_critic():
    step = build_step(TrainConfig(mode="one-way", **(TINY_GAN | {"critic_steps_per_generator_step": 2})))
    assert set(step.modules()) == {"g_x", "d_y"}
    g_before, d_before = _snapshot(step.g_x), _snapshot(step.d_y)
    metrics = {}
    for i in range(2):
        metrics = step.step(_random_batch(seed=i))
    assert "content_mse" in metrics and torch.isfinite(torch.tensor(metrics["loss_generator"]))
    assert _changed(g_before, step.g_x) and _changed(d_before, step.d_y)


def _fixed_transform_data(testdata, size=64):
    photos = PhotoSet(sorted(glob.glob(str(testdata / "natural" / "kpa_*.jpg")))[:6], size)
    transform = Degradation(gamma=1.3, white_balance=(1.1, 1.0, 0.85), contrast=0.9)
    inputs = PhotoSet.__new__(PhotoSet)
    inputs.urls, inputs.size = photos.urls, size
    inputs.images = [transform.apply(image) for image in photos.images]
    data = PairedData(inputs, photos)
    return TrainingData(data, [data.pair(i) for i in range(len(data))])


@pytest.mark.parametrize(("output", "loss"), [("residual", "log_mse"), ("affine", "rmse")])
def test_supervised_training_learns_a_global_colour_transform_on_real_photos(testdata, output, loss):
    data = _fixed_transform_data(testdata)
    config = TrainConfig(
        mode="supervised",
        supervised_loss=loss,
        min_mse=1e-6,
        generator={"output": output},
        image_size=64,
        batch_size=4,
        steps=200,
        lr=1e-3,
        decay_start=100,
        eval_every=100,
        log_every=50,
    )
    result = train(config, data=data)
    print(f"identity {result.metrics['eval_identity_psnr']:.2f} dB -> model {result.metrics['eval_psnr']:.2f} dB")
    assert result.metrics["eval_identity_psnr"] < 25
    assert result.metrics["eval_psnr"] >= 30.0


def test_checkpoint_round_trip_is_bit_exact_and_resume_matches_uninterrupted(tmp_path):
    config = TrainConfig(mode="two-way", steps=6, **TINY_GAN)
    data = TrainingData(_SyntheticUnpaired())
    uninterrupted = train(config, data=data)

    ckpt = tmp_path / "ckpt"
    resumable = config.model_copy(update={"checkpoint_url": str(ckpt), "checkpoint_every": 2})
    first = train(resumable, data=data, stop_after=4)  # "killed" after 4 iterations
    assert first.iteration == 4 and latest_checkpoint(str(ckpt)).endswith("step-00000004.json")
    resumed = train(resumable, data=data)
    assert resumed.resumed_from.endswith("step-00000004.json") and resumed.iteration == 6
    for name, module in uninterrupted.step.modules().items():
        other = resumed.step.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key} differs after resume"
    assert uninterrupted.step.lambdas["lambda_y"].state_dict() == resumed.step.lambdas["lambda_y"].state_dict()

    # A loaded checkpoint reproduces the outputs bit for bit.
    clone = build_step(resumable)
    load_checkpoint(clone, latest_checkpoint(str(ckpt)))
    x = torch.rand(1, 3, 40, 56)
    for name in ("g_x", "g_y"):
        a, b = resumed.step.modules()[name].eval(), clone.modules()[name].eval()
        with torch.no_grad():
            assert torch.equal(a(x), b(x))


def test_checkpoints_are_pruned_and_refuse_a_different_mode(tmp_path):
    config = TrainConfig(
        mode="two-way", steps=3, checkpoint_url=str(tmp_path), checkpoint_every=1, keep_checkpoints=2, **TINY_GAN
    )
    train(config, data=TrainingData(_SyntheticUnpaired()))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == [
        "step-00000002.json",
        "step-00000002.safetensors",
        "step-00000003.json",
        "step-00000003.safetensors",
    ]
    other = build_step(TrainConfig(mode="supervised", image_size=32))
    with pytest.raises(CheckpointError, match="two-way"):
        load_checkpoint(other, latest_checkpoint(str(tmp_path)))


def test_checkpoint_on_object_storage_round_trips():
    step = build_step(TrainConfig(mode="supervised", image_size=32))
    step.step(_random_batch())
    url = save_checkpoint(step, "memory://dpe-test/ckpt")
    clone = build_step(TrainConfig(mode="supervised", image_size=32))
    load_checkpoint(clone, url)
    assert clone.iteration == 1
    assert all(torch.equal(v, clone.g_x.state_dict()[k]) for k, v in step.g_x.state_dict().items())


def test_export_model_rebuilds_the_generator_from_its_sidecar(tmp_path):
    config = TrainConfig(mode="supervised", steps=1, image_size=32, batch_size=2)
    result = train(config, data=TrainingData(_SyntheticPaired()))
    info = export_model(result, str(tmp_path / "m.safetensors"), name="tiny", version="3")
    generator, loaded = load_model(str(tmp_path / "m.safetensors"))
    assert loaded.name == "tiny" and loaded.version == "3" and loaded.training["mode"] == "supervised"
    assert loaded.weights_sha256 == info.weights_sha256
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(generator(x), result.step.enhancer.eval()(x))


def test_pad_to_square_is_symmetric_bottom_right_with_valid_mask():
    image = torch.rand(3, 20, 32)
    padded, mask = pad_to_square(image, 32)
    assert padded.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert torch.equal(padded[:, :20], image)
    assert torch.equal(padded[:, 20], image[:, 19])  # symmetric: the edge row is repeated first
    assert mask[0, :20].all() and not mask[0, 20:].any()


def test_eight_dihedral_transforms_are_distinct_and_invertible():
    image = torch.arange(12.0).reshape(1, 3, 4)
    outs = [dihedral(image, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8


def test_photos_are_resized_on_long_side_never_squashed(testdata):
    urls = list_images(str(testdata / "natural"))
    assert len(urls) >= 40
    photos = PhotoSet(urls[:3], 96)
    for url, image in zip(photos.urls, photos.images, strict=True):
        from PIL import Image, ImageOps

        with Image.open(url) as im:
            w, h = ImageOps.exif_transpose(im).size
        assert max(image.shape[1:]) == 96
        assert abs(image.shape[2] / image.shape[1] - w / h) < 0.03


def test_degraded_pairs_are_deterministic_per_step(testdata):
    data = DegradedPairData(PhotoSet(list_images(str(testdata / "natural"))[:4], 48))
    a, b, c = data.batch(1, 5, 3), data.batch(1, 5, 3), data.batch(1, 6, 3)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.shape == (3, 3, 48, 48) and a.x_mask.shape == (3, 1, 48, 48)


def test_data_config_requires_both_domains_for_two_way():
    with pytest.raises(ValueError, match="reference_url"):
        TrainConfig(mode="two-way", data=DataConfig(source_url="x/"))
    with pytest.raises(ValueError, match="image_size >= 64"):
        TrainConfig(mode="two-way", image_size=32)


def test_learning_rate_is_constant_then_linear_decay():
    config = TrainConfig(steps=100, lr=1.0, decay_start=60)
    assert [config.lr_at(s) for s in (0, 59, 60, 80, 100)] == [1.0, 1.0, 1.0, 0.5, 0.0]


class _SyntheticUnpaired:
    """Tiny random unpaired data for step mechanics (real-photo behaviour is tested above)."""

    def batch(self, seed, step, batch_size):
        return _random_batch(64, batch_size, seed=hash((seed, step)) & 0xFFFF)


class _SyntheticPaired(_SyntheticUnpaired):
    pass


def test_build_generator_accepts_dict_config():
    g = build_generator({"base_channels": 8})
    assert g.enc1.conv.out_channels == 8


@pytest.mark.parametrize("individual", [True, False])
def test_shared_bn_ablation_sends_generated_inputs_through_the_real_inputs_bn_set(individual):
    config = TrainConfig(mode="two-way", steps=3, individual_bn=individual, **TINY_GAN)
    step = build_step(config)
    bn = step.g_x.enc1.bn  # first iBN of G_X
    before = [s.running_mean.clone() for s in bn.sets]
    for i in range(3):  # the third iteration is a generator step (3 critic steps per generator step)
        step.step(_SyntheticUnpaired().batch(0, i, 2))
    moved = [not torch.equal(s.running_mean, b) for s, b in zip(bn.sets, before, strict=True)]
    assert moved == [True, individual]  # set 1 sees the cycle pass only with iBN
