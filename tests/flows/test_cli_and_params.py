"""Flow parameters, the CLI's usage errors and config files, deploy/ consistency, and the no-torch rule.

No Prefect server or cluster here: what a user gets before any work starts.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from flows.params import EnhanceParams, IngestParams, TrainParams

REPO = Path(__file__).resolve().parents[2]
DPE = str(Path(sys.executable).parent / "dpe")


def test_flow_modules_import_without_torch():
    """The flow process may run on a CPU-only pod: importing every flow, task and the CLI loads no torch."""
    code = ("import sys\nimport flows.cli, flows.enhance, flows.ingest, flows.train, flows.cluster, flows.server\n"
            "import tasks.enhance, tasks.ingest, tasks.train, tasks.models, tasks.registry, tasks.storage\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(len(bad))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_parameters_render_as_a_form():
    """Every field the Prefect UI shows has a description; choices are enums; numbers have bounds."""
    from flows.enhance import enhance_archive
    from flows.ingest import ingest_dataset
    from flows.train import train_style

    for flow, model in ((enhance_archive, "EnhanceParams"), (ingest_dataset, "IngestParams"),
                        (train_style, "TrainParams")):
        schema = flow.parameters.model_dump()["definitions"][model]
        props = schema["properties"]
        missing = [k for k, v in props.items() if not v.get("description")]
        assert not missing, f"{model}: fields without description: {missing}"
        assert not any("key" in k or "secret" in k or "password" in k for k in props), "secrets in parameters"
    enhance = enhance_archive.parameters.model_dump()["definitions"]["EnhanceParams"]["properties"]
    assert enhance["mode"]["enum"] == ["full", "paper", "tiled"]
    assert enhance["quality"]["minimum"] == 50 and enhance["quality"]["maximum"] == 100
    assert list(enhance)[:2] == ["source_url", "dest_url"]


def test_parameter_validation():
    with pytest.raises(ValidationError, match="must differ"):
        EnhanceParams(source_url="/data/a", dest_url="/data/a/")
    with pytest.raises(ValidationError, match="must not lie inside"):
        EnhanceParams(source_url="s3://b/archive/2024", dest_url="s3://b/archive")
    with pytest.raises(ValidationError, match="must not lie inside source_url"):  # outputs among the originals
        EnhanceParams(source_url="s3://b/archive", dest_url="s3://b/archive/enhanced")
    with pytest.raises(ValidationError, match="must differ"):  # one bucket, two spellings
        EnhanceParams(source_url="S3://b/archive", dest_url="s3a://b/archive/")
    EnhanceParams(source_url="s3://b/archive", dest_url="s3://b/archive-enhanced")
    with pytest.raises(ValidationError):
        EnhanceParams(source_url="a", dest_url="b", shard_size=0)
    with pytest.raises(ValidationError):
        EnhanceParams(source_url="a", dest_url="b", formats=["gif"])
    with pytest.raises(ValidationError, match="needs source_url and reference_url"):
        TrainParams(name="warm", source_url="a")
    with pytest.raises(ValidationError):
        TrainParams(name="Warm Style", source_url="a", reference_url="b")
    with pytest.raises(ValidationError, match="not in overrides"):
        TrainParams(name="warm", source_url="a", reference_url="b", overrides={"steps": 3})
    with pytest.raises(ValidationError, match="must differ"):
        IngestParams(source_url="x", dest_url="x")


def _dpe(args: list[str], tmp_path: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ) | {"DPE_HOME": str(tmp_path / "home"), "DPE_REGISTRY": str(tmp_path / "registry")}
    return subprocess.run([DPE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("bad_args, message", [
    (["enhance", "{src}", "{src}"], "must differ"),
    (["enhance", "{missing}", "{dst}"], "does not exist"),
    (["enhance", "{src}", "{dst}", "--model", "no-such-style"], "no model named"),
    (["enhance", "{src}", "{dst}", "--mode", "fast"], "fast"),
    (["enhance", "{src}", "{dst}", "--format", "gif"], "formats"),
    (["enhance", "{src}", "{dst}", "--strength", "1.5"], "strength"),
    (["enhance", "{src}", "{dst}", "--bf16", "sometimes"], "bf16: Input should be 'auto', 'on' or 'off'"),
    (["train", "--name", "warm", "--source", "{src}"], "reference_url"),
    (["ingest", "{missing}", "{dst}"], "does not exist"),
])
def test_bad_usage_exits_2_before_any_work(bad_args, message, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    args = [a.format(src=src, dst=tmp_path / "dst", missing=tmp_path / "missing") for a in bad_args]
    done = _dpe(args, tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr + done.stdout
    assert not (tmp_path / "dst").exists() and not (tmp_path / "home").exists()  # no server started, nothing written


def test_strength_is_a_cli_option_a_parameter_and_part_of_the_settings_key(tmp_path):
    from flows.enhance import run_settings
    from tasks.plan import settings_key

    done = _dpe(["enhance", "--help"], tmp_path, timeout=120)
    assert done.returncode == 0 and "--strength" in done.stdout
    base = EnhanceParams(source_url="s3://b/a", dest_url="s3://b/out")
    assert base.strength == 1.0
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValidationError, match="strength"):
            EnhanceParams(source_url="s3://b/a", dest_url="s3://b/out", strength=bad)
    # Strength 1 keeps the key that runs had before strength existed (their outputs stay done); any other
    # strength changes it, so a rerun with another strength redoes the outputs.
    old_key = settings_key({"model": "m@1", "mode": "full", "output_format": "same", "quality": 95,
                            "max_pixels": 120_000_000})
    assert run_settings(base, "m@1") == old_key
    keys = {run_settings(base.model_copy(update={"strength": s}), "m@1") for s in (0.0, 0.5, 0.7)}
    assert len(keys) == 3 and old_key not in keys


def test_train_config_file_maps_onto_parameters(tmp_path):
    from flows.cli import UsageError, params_from_config_file

    config = {"mode": "supervised", "data": {"degrade_url": "photos", "holdout": 2, "degrade_strength": 0.5},
              "image_size": 128, "steps": 50, "lr": 5e-4, "generator": {"train_size": 128}, "threads": 1,
              "checkpoint_every": 10}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    fields = params_from_config_file(str(path))
    params = TrainParams(name="demo", **fields)
    assert (params.mode, params.degrade_url, params.holdout, params.degrade_strength) == ("supervised", "photos", 2,
                                                                                          0.5)
    assert (params.image_size, params.steps, params.lr, params.checkpoint_every) == (128, 50, 5e-4, 10)
    assert params.overrides == {"generator": {"train_size": 128}, "threads": 1}
    from flows.train import train_config

    built = train_config(params, {"degrade": "copies"}, "ckpt", threads=None)
    assert built["data"] == {"holdout": 2, "degrade_url": "copies", "degrade_strength": 0.5}
    assert built["threads"] == 1 and built["checkpoint_url"] == "ckpt"
    path.write_text(json.dumps({"data": {"source_url": "a", "storage_options": {"key": "AKIA..."}}}))
    with pytest.raises(UsageError, match="credentials"):
        params_from_config_file(str(path))


def test_models_lists_an_empty_registry(tmp_path):
    done = _dpe(["models", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["models"] == [] and listing["registry"] == str(tmp_path / "registry")
    bundled = {row["name"]: row for row in listing["bundled"]}
    # The shipped default model is listed with what a user needs to choose it: version, mode, its card.
    assert bundled["default"]["mode"] == "supervised" and bundled["default"]["version"]
    assert Path(bundled["default"]["card"]).read_text().startswith("# Bundled model `default`")
    # A bundled style is listed with its look and its held-out scores.
    look = bundled["look-warm-contrast"]
    assert look["mode"] == "two-way" and look["look"] == "warm-contrast"
    assert look["scores"]["psnr_vs_look_db"] > look["scores"]["identity_psnr_db"]


def test_deployments_point_at_the_flows():
    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    entrypoints = {d["name"]: d["entrypoint"] for d in spec["deployments"]}
    assert len(entrypoints) >= 3
    for entrypoint in entrypoints.values():
        path, _, name = entrypoint.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, name), "fn"), entrypoint  # a Prefect flow
    nightly = [d for d in spec["deployments"] if d.get("schedules")]
    assert nightly and nightly[0]["schedules"][0]["cron"]
    for deployment in spec["deployments"]:
        flat = json.dumps(deployment).lower()
        assert "secret_access_key" not in flat and "password" not in flat


def test_enhance_summary_table_shows_time_to_first_output(monkeypatch):
    from rich.console import Console

    from flows import cli

    summary = {"total": 3, "counts": {"ok": 2, "error": 1}, "model": "default:3", "mode": "full", "strength": 1.0,
               "workers": 2, "photos_per_s": 1.5, "total_s": 2.0, "report_url": "/x/.dpe/report.jsonl"}
    for first, shown in ((0.84, "0.84 s"), (None, "n/a")):
        recorder = Console(record=True, width=120)
        monkeypatch.setattr(cli, "console", recorder)
        cli._print_enhance_summary(summary | {"first_output_s": first}, as_json=False)
        text = recorder.export_text()
        assert "first output" in text and shown in text and "None" not in text


@pytest.mark.parametrize(("recipe_name", "look"), [("style-look-warm-v4.json", "warm-contrast"),
                                                    ("style-look-cool-v6.json", "cool-faded")])
def test_the_shipped_style_recipes_build_the_bundled_looks_training_configs(recipe_name, look):
    from dpe_core.training import TrainConfig
    from flows.cli import params_from_config_file
    from flows.train import train_config

    recipe = Path(__file__).resolve().parents[2] / "deploy" / "recipes" / recipe_name
    params = TrainParams(name="my-look", source_url="photos", reference_url="refs", **params_from_config_file(
        str(recipe)))
    built = TrainConfig(**train_config(params, {"source": "s", "reference": "r"}, "ckpt", threads=1))
    bundled = json.loads((Path(__file__).resolve().parents[2] / "dpe_core" / "models" / f"look-{look}" /
                          "model.json").read_text())["training"]["config"]
    for key in ("mode", "image_size", "batch_size", "steps", "critic_steps_per_generator_step", "lr",
                "critic_lr_scale", "identity_weight", "cycle_weight", "transport_weight", "transport_kind",
                "transport_init", "seed"):
        assert getattr(built, key) == bundled[key], key
    assert built.critic.global_stats == bundled["critic"]["global_stats"] == "only"
    assert built.generator.colour_prior is bundled["generator"]["colour_prior"] is True
    assert (built.data.source_url, built.data.reference_url) == ("s", "r")
