"""Make a second set of real photos from Debian's wallpaper packages: 28 photographs, 1024 px long side.

Why: the 46 natural photos of the shared test data were all there was for training, validation and test, and a
validation split of 6 photos could not tell two candidate models apart (a 1.5 dB gain on it vanished on the test
split). These 28 photographs (plants, landscapes, water, objects, architecture) are the photographic wallpapers
of four Debian packages; the drawings and abstract renderings in the same packages are left out. Licences: each
package's ``usr/share/doc/PACKAGE/copyright`` (GPL-2+ for mate-backgrounds, CC-BY-SA / LGPL per wallpaper for
plasma-workspace-wallpapers, CC-BY-SA for the lomiri wallpapers); the manifest written beside the photos names
package, version, path and the sha256 of every source file.

    python benchmarks/debian_photos.py OUT_DIR        # needs apt-get (Debian/Ubuntu) and dpkg-deb

Output: OUT_DIR/NAME.png (sRGB, 8 bit, long side 1024, Lanczos) and OUT_DIR/MANIFEST.tsv; each photo is written
atomically, so a rerun replaces them whole.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

LONG_SIDE = 1024

# (output name, package, path inside the package). Plasma wallpapers come in several sizes: the largest is taken.
PHOTOS: list[tuple[str, str, str]] = [
    ("lomiri_picture_1a", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Picture_1A_by_freespace.jpg"),
    ("lomiri_free", "lomiri-wallpapers-16.04", "usr/share/backgrounds/free_by_Peter_Nerlich.jpg"),
    ("lomiri_greentock", "lomiri-wallpapers-16.04", "usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg"),
    ("lomiri_kleiber", "lomiri-wallpapers-20.04", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
    *[(f"mate_{n.lower()}", "mate-backgrounds", f"usr/share/backgrounds/mate/nature/{n}.jpg") for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")],
    *[(f"plasma_{n.lower()}", "plasma-workspace-wallpapers", f"usr/share/wallpapers/{n}/contents/images") for n in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
        "OneStandsOut", "Path", "Volna", "summer_1am")],
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_packages(packages: set[str], into: Path) -> dict[str, tuple[Path, str]]:
    """apt-get download + dpkg-deb -x each package -> {package: (extracted root, version)}."""
    debs = into / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *sorted(packages)], cwd=debs, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"apt-get download {' '.join(sorted(packages))} failed (run 'apt-get update' first?):\n"
                         f"{result.stderr.strip()}")
    roots = {}
    for package in packages:
        (deb,) = debs.glob(f"{package}_*.deb")
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        root = into / package
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        roots[package] = (root, version)
    return roots


def source_file(root: Path, inner: str) -> Path:
    path = root / inner
    if path.is_dir():  # a plasma wallpaper: images/WIDTHxHEIGHT.jpg, take the largest
        path = max(path.iterdir(), key=lambda p: int(p.stem.split("x")[0]))
    if not path.is_file():
        raise SystemExit(f"{inner}: not in the package (a newer version may have dropped it)")
    return path


def write_photo(source: Path, out: Path) -> None:
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = LONG_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        tmp = out.with_suffix(".tmp.png")
        im.save(tmp, optimize=False)
        tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for NAME.png and MANIFEST.tsv")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["name\tpackage\tversion\tsource\tsource_sha256\tlicence"]
    with tempfile.TemporaryDirectory() as tmp:
        roots = fetch_packages({p for _, p, _ in PHOTOS}, Path(tmp))
        for name, package, inner in PHOTOS:
            root, version = roots[package]
            src = source_file(root, inner)
            write_photo(src, args.out / f"{name}.png")
            rows.append(f"{name}.png\t{package}\t{version}\t{src.relative_to(root)}\t{sha256(src)}\t"
                        f"usr/share/doc/{package}/copyright")
    (args.out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    print(f"{len(PHOTOS)} photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
