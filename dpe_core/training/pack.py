"""Pack a supervised (degrade_url) training config's photos for another machine: decoded once, at load size.

    python -m dpe_core.training.pack CONFIG OUT_DIR [--root PREFIX]

A lent GPU machine reaches nothing outside the folder sent to it, and what is sent has a size limit (the full-size
photos of the default model's config are ~110 MB). Training reads every photo at ``data.load_size`` anyway, so
this writes each photo the run would read (training and validation splits; never ``exclude_names``, the test
split) as an 8-bit sRGB PNG at that long side, decoded by the same ``load_rgb`` (orientation applied, HEIC and
MPO decoded here, where pillow-heif is installed), and a copy of the config whose URLs point at OUT_DIR
(``--root`` replaces OUT_DIR in them when the folder will sit elsewhere there). The run on the other side then
reads the same pixels up to one 8-bit rounding (< 0.5/255), and resizes nothing.

Every file name gains ``.png`` unless it has it; ``val_names`` and the extra URL lists follow, ``exclude_names``
stays as it is (nothing of it is packed). Writes OUT_DIR/train_config.json and OUT_DIR/MANIFEST.tsv (packed name,
source URL).
"""

from __future__ import annotations

import argparse
import json
import posixpath
from pathlib import Path

import numpy as np
from PIL import Image

from dpe_core.training.apart import check_apart_from_photos
from dpe_core.training.config import TrainConfig
from dpe_core.training.data import list_images, load_rgb


def packed_name(name: str) -> str:
    """'rocket.jpg' -> 'rocket.jpg.png'; 'coffee.png' stays (one format on the other side, names still unique)."""
    return name if name.lower().endswith(".png") else f"{name}.png"


def _write_png(url: str, path: Path, long_side: int) -> None:
    image = load_rgb(url, long_side)
    pixels = (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG", compress_level=6)
    tmp.replace(path)


def pack(config: TrainConfig, out_dir: str | Path, root: str | None = None) -> TrainConfig:
    """Write the photos CONFIG reads (at data.load_size, PNG) under out_dir; return the config that reads them.

    Raises ValueError for a config without degrade_url (paired or two-way folders are copied as they are), and
    for an out_dir that is, lies inside or holds a folder of the photos (nothing is written then).
    """
    d = config.data
    if not d.degrade_url:
        raise ValueError("pack handles degrade_url configs only (paired/two-way folders can be copied as they are)")
    out = Path(out_dir)
    check_apart_from_photos(d, str(out), "output folder")
    prefix = (root or str(out)).rstrip("/")
    long_side = d.load_size or config.image_size
    excluded = set(d.exclude_names)
    manifest = []
    base = d.degrade_url.rstrip("/")
    for url in list_images(d.degrade_url, **d.storage_options):
        rel = posixpath.relpath(url, base)
        if posixpath.basename(rel) in excluded:
            continue
        rel_packed = posixpath.join(posixpath.dirname(rel), packed_name(posixpath.basename(rel)))
        _write_png(url, out / "degrade" / rel_packed, long_side)
        manifest.append((f"degrade/{rel_packed}", url))

    def extra(urls: list[str], folder: str) -> list[str]:
        moved = []
        for url in urls:
            name = packed_name(posixpath.basename(url))
            _write_png(url, out / folder / name, long_side)
            manifest.append((f"{folder}/{name}", url))
            moved.append(f"{prefix}/{folder}/{name}")
        return moved

    data = d.model_copy(update={
        "degrade_url": f"{prefix}/degrade",
        "val_names": [packed_name(n) for n in d.val_names],
        "extra_train_urls": extra(list(d.extra_train_urls), "extra_train"),
        "extra_val_urls": extra(list(d.extra_val_urls), "extra_val"),
        "load_size": long_side,
    })
    packed = config.model_copy(update={"data": data})
    (out / "train_config.json").write_text(json.dumps(packed.model_dump(mode="json"), indent=1))
    (out / "MANIFEST.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in manifest))
    return packed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("out_dir")
    parser.add_argument("--root", help="prefix of OUT_DIR on the other machine (default: OUT_DIR as given)")
    args = parser.parse_args(argv)
    config = TrainConfig.model_validate_json(Path(args.config).read_text())
    packed = pack(config, args.out_dir, args.root)
    n = len(packed.data.extra_train_urls) + len(packed.data.extra_val_urls)
    print(f"packed into {args.out_dir}: degrade folder + {n} extra photos at {packed.data.load_size} px")


if __name__ == "__main__":
    main()
