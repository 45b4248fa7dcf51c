"""Training recipe of the default model: named splits, crops at several scales, undamaged pairs, bf16 steps."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dpe_core.losses import masked_mse, psnr_loss
from dpe_core.training import DataConfig, TrainConfig, build_step
from dpe_core.training.data import Batch, DegradedPairData, PhotoSet
from dpe_core.training.loop import build_data, evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo_folder(tmp_path, n=6):
    """Small real-looking photos: smooth gradients with texture, different per file (PNG, lossless)."""
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        h, w = 60 + 8 * i, 90 - 4 * i
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        img = torch.stack([yy, xx, (yy + xx) / 2]) * 0.6 + 0.2 + 0.05 * torch.rand(3, h, w, generator=g)
        array = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(tmp_path / f"p{i}.png")
    return tmp_path


def test_named_splits_keep_test_photos_unread_and_validation_apart(tmp_path):
    folder = _photo_folder(tmp_path)
    config = TrainConfig(mode="supervised", image_size=32, data=DataConfig(
        degrade_url=str(folder), val_names=["p1.png", "p2.png"], exclude_names=["p5.png"], clean_share=0.25,
        eval_degradations=2))
    data = build_data(config)
    train_names = [u.rsplit("/", 1)[-1] for u in data.train_urls]
    assert train_names == ["p0.png", "p3.png", "p4.png"]
    assert [u.rsplit("/", 1)[-1] for u in data.holdout_urls] == ["p1.png", "p2.png"]
    # 2 photos x 2 fixed degradations + 2 no-harm pairs (input is the target).
    assert len(data.eval_pairs) == 6 and sum(torch.equal(x, y) for x, y in data.eval_pairs) == 2
    with pytest.raises(ValueError, match="not found: nope.png"):
        build_data(config.model_copy(update={"data": config.data.model_copy(update={"val_names": ["nope.png"]})}))


def test_extra_training_photos_join_training_only_and_never_shadow_held_out_names(tmp_path):
    (tmp_path / "main").mkdir()
    (tmp_path / "extra").mkdir()
    folder = _photo_folder(tmp_path / "main")
    extra = _photo_folder(tmp_path / "extra", 2)
    extra_urls = [str(extra / "p0.png").replace("p0", "x0"), str(extra / "p1.png")]
    (extra / "p0.png").rename(extra_urls[0])
    config = TrainConfig(mode="supervised", image_size=32, data=DataConfig(
        degrade_url=str(folder), val_names=["p2.png"], exclude_names=["p5.png"], extra_train_urls=extra_urls[:1]))
    data = build_data(config)
    assert data.train_urls[-1] == extra_urls[0] and len(data.train.photos) == 5  # p0 p1 p3 p4 + x0
    assert [u.rsplit("/", 1)[-1] for u in data.holdout_urls] == ["p2.png"]  # evaluation is unchanged
    # An extra photo named like a held-out one would blur the line between training and evaluation.
    for held in ("p2.png", "p5.png"):
        (extra / "p1.png").rename(extra / held)
        clash = config.data.model_copy(update={"extra_train_urls": [str(extra / held)]})
        with pytest.raises(ValueError, match=held):
            build_data(config.model_copy(update={"data": clash}))
        (extra / held).rename(extra / "p1.png")


def test_extra_validation_photos_are_evaluated_never_trained_on(tmp_path):
    (tmp_path / "main").mkdir()
    (tmp_path / "more").mkdir()
    folder = _photo_folder(tmp_path / "main", 4)
    more = _photo_folder(tmp_path / "more", 2)
    for i in range(2):
        (more / f"p{i}.png").rename(more / f"v{i}.png")
    config = TrainConfig(mode="supervised", image_size=32, data=DataConfig(
        degrade_url=str(folder), val_names=["p1.png"], eval_degradations=2,
        extra_val_urls=[str(more / "v0.png"), str(more / "v1.png")]))
    data = build_data(config)
    assert [u.rsplit("/", 1)[-1] for u in data.train_urls] == ["p0.png", "p2.png", "p3.png"]
    assert [u.rsplit("/", 1)[-1] for u in data.holdout_urls] == ["p1.png", "v0.png", "v1.png"]
    assert len(data.eval_pairs) == 3 * 2  # every validation photo, both fixed degradations
    # A validation photo named like a training photo (the same file under two folders) is refused.
    (more / "v1.png").rename(more / "p3.png")
    clash = config.data.model_copy(update={"extra_val_urls": [str(more / "v0.png"), str(more / "p3.png")]})
    with pytest.raises(ValueError, match="p3.png"):
        build_data(config.model_copy(update={"data": clash}))


def test_crops_at_several_scales_and_clean_share(tmp_path):
    folder = _photo_folder(tmp_path, 3)
    photos = PhotoSet([str(folder / f"p{i}.png") for i in range(3)], 64)
    data = DegradedPairData(photos, augment=False, clean_share=0.5, crop_scale=(0.4, 1.0), whole_share=0.0,
                            train_size=32)
    batch = data.batch(seed=1, step=0, batch_size=16)
    assert batch.x.shape == (16, 3, 32, 32)
    clean = [torch.equal(batch.x[i], batch.y[i]) for i in range(16)]
    assert 2 <= sum(clean) <= 14  # some undamaged pairs, some damaged
    valid_areas = {int(m.sum()) for m in batch.x_mask}
    assert len(valid_areas) > 3  # crops of different shapes, not one fixed framing
    again = data.batch(seed=1, step=0, batch_size=16)
    assert torch.equal(again.x, batch.x) and torch.equal(again.y, batch.y)  # resumable: a function of (seed, step)


def test_target_jitter_moves_the_target_not_the_pairing(tmp_path):
    folder = _photo_folder(tmp_path, 1)
    photos = PhotoSet([str(folder / "p0.png")], 32)
    targets = {}
    for jitter in (0.0, 0.3):
        data = DegradedPairData(photos, augment=False, clean_share=1.0, target_jitter=jitter)
        batch = data.batch(seed=3, step=0, batch_size=8)
        assert torch.equal(batch.x, batch.y)  # undamaged draws: the input is still its own target
        targets[jitter] = batch.y
    assert all(torch.equal(t, targets[0.0][0]) for t in targets[0.0])  # no jitter: always the photo
    moved = [(t - targets[0.0][0]).abs().mean().item() for t in targets[0.3]]
    assert sum(m > 1e-3 for m in moved) >= 3 and max(moved) < 0.15  # mild moves, different per draw


def test_masked_mse_weighs_every_image_alike_whatever_its_padding():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.zeros(2, 3, 8, 8)
    b[0] = 1.0  # image 0 is wrong everywhere; image 1 is right
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :2, :2] = 1  # image 0: 4 valid pixels
    mask[1] = 1  # image 1: 64 valid pixels
    assert float(masked_mse(a, b, mask)) == pytest.approx(0.5)  # mean of per-image MSEs (1 and 0)
    # The loss floor stops a reproduced pair from dominating: log10(0 + 1e-5) = -5, not -10.
    assert float(psnr_loss(a[1:], b[1:], mask[1:], min_mse=1e-5)) == pytest.approx(-5.0)


def test_bf16_supervised_step_learns_and_evaluation_reports_no_harm():
    config = TrainConfig(mode="supervised", image_size=32, batch_size=4, lr=1e-3, precision="bf16", min_mse=1e-5,
                         seed=3)
    step = build_step(config)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 0.5 + 0.25
    target = (x * 1.3).clamp(0, 1)
    batch = Batch(x, torch.ones(4, 1, 32, 32), target, torch.ones(4, 1, 32, 32))
    first = step.step(batch)["train_psnr"]
    for _ in range(30):
        last = step.step(batch)["train_psnr"]
    assert last > first + 3  # learns in bf16 autocast; weights stay fp32
    assert all(p.dtype == torch.float32 for p in step.g_x.parameters())
    metrics = evaluate(step.g_x, [(x[0], target[0]), (target[1], target[1])])
    assert set(metrics) == {"eval_psnr", "eval_identity_psnr", "eval_noharm_psnr"}


def test_checkpoint_choice_uses_validation_scores_and_export_names_the_test_split(tmp_path):
    from dpe_core.nn import load_model
    from dpe_core.training import train
    from dpe_core.training.select import checkpoint_scores, export_checkpoint, select_checkpoint

    (tmp_path / "photos").mkdir()
    folder = _photo_folder(tmp_path / "photos")
    config = TrainConfig(mode="supervised", image_size=32, batch_size=2, steps=6, lr=1e-3, eval_every=2,
                         checkpoint_every=2, keep_checkpoints=10, checkpoint_url=str(tmp_path / "ckpt"),
                         data=DataConfig(degrade_url=str(folder), val_names=["p1.png"], exclude_names=["p5.png"],
                                         clean_share=0.2))
    train(config)
    rows = checkpoint_scores(str(tmp_path / "ckpt"))
    assert [r["iteration"] for r in rows] == [2, 4, 6] and all("eval_psnr" in r["metrics"] for r in rows)
    best = select_checkpoint(str(tmp_path / "ckpt"))
    assert best["metrics"]["eval_psnr"] == max(r["metrics"]["eval_psnr"] for r in rows)
    # An unreachable no-harm bar falls back to every checkpoint rather than failing.
    assert select_checkpoint(str(tmp_path / "ckpt"), min_noharm=1e9)["iteration"] == best["iteration"]
    info = export_checkpoint(best["sidecar"], str(tmp_path / "model"), "m", "1")
    model, loaded = load_model(str(tmp_path / "model"))
    assert loaded.training["test_photos"] == ["p5.png"] and loaded.training["holdout_photos"] == ["p1.png"]
    assert "p5.png" not in loaded.training["train_photos"] and info.name == "m"

    # Weight averaging over checkpoints 4 and 6: every floating tensor of G_X is the mean of theirs, scored on
    # the same validation pairs.
    from dpe_core.training.checkpoint import checkpoint_urls, read_checkpoint
    from dpe_core.training.select import average_checkpoints

    averaged = average_checkpoints(str(tmp_path / "ckpt"), start=3)
    assert averaged.metrics["averaged_checkpoints"] == 2 and "eval_psnr" in averaged.metrics
    four, six = (read_checkpoint(checkpoint_urls(str(tmp_path / "ckpt"), i)[1])[1] for i in (4, 6))
    state = averaged.step.g_x.state_dict()
    assert not torch.equal(four["g_x.enc1.conv.weight"], six["g_x.enc1.conv.weight"])  # they differ: a real mean
    for key in ("enc1.conv.weight", "out2.bias"):
        expected = (four[f"g_x.{key}"].double() + six[f"g_x.{key}"].double()) / 2
        assert torch.allclose(state[key].double(), expected, atol=1e-7)
    with pytest.raises(ValueError, match="no checkpoint"):
        average_checkpoints(str(tmp_path / "ckpt"), start=7)
    # Checkpoints of another run (here: the same folder again, from step 3) join the mean one checkpoint, one
    # share: {6} + {4, 6} -> (6 + 4 + 6) / 3, scored on the first run's validation pairs.
    pooled = average_checkpoints(str(tmp_path / "ckpt"), start=5, also=[(str(tmp_path / "ckpt"), 3)])
    assert pooled.metrics["averaged_checkpoints"] == 3
    expected = (four["g_x.out2.bias"].double() + 2 * six["g_x.out2.bias"].double()) / 3
    assert torch.allclose(pooled.step.g_x.state_dict()["out2.bias"].double(), expected, atol=1e-7)
    with pytest.raises(ValueError, match="no checkpoint"):
        average_checkpoints(str(tmp_path / "ckpt"), start=5, also=[(str(tmp_path / "ckpt"), 9)])
