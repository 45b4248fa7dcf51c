"""Real photos from Debian packages: 28 wallpapers, 16 puzzle, 31 game, 115 GCompris or 49 Scratch photos.

Why: the 46 natural photos of the shared test data were all there was for training, validation and test, and a
validation split of 6 photos could not tell two candidate models apart (a 1.5 dB gain on it vanished on the test
split). These 28 photographs (plants, landscapes, water, objects, architecture) are the photographic wallpapers
of four Debian packages; the drawings and abstract renderings in the same packages are left out. Licences: each
package's ``usr/share/doc/PACKAGE/copyright`` (GPL-2+ for mate-backgrounds, CC-BY-SA / LGPL per wallpaper for
plasma-workspace-wallpapers, CC-BY-SA for the lomiri wallpapers); the manifest written beside the photos names
package, version, path and the sha256 of every source file.

    python benchmarks/debian_photos.py OUT_DIR                  # the 28 wallpapers
    python benchmarks/debian_photos.py OUT_DIR --set puzzles    # the 16 puzzle photos
    python benchmarks/debian_photos.py OUT_DIR --set games      # the 31 photos of Tux Paint and Tux Typing
    python benchmarks/debian_photos.py OUT_DIR --set gcompris   # the 115 photos of GCompris
    python benchmarks/debian_photos.py OUT_DIR --set scratch    # the 49 photographic backdrops of Scratch 1.4
    # needs apt-get (Debian/Ubuntu) and dpkg-deb

The puzzle set: the photos of two jigsaw games, ``palapeli-data`` (5 Wikimedia Commons photos, licence and
author in each puzzle's ``.desktop`` file: GFDL / CC-BY-SA) and ``jigzo-data`` (11 photos, GPL-2+ / GPL-2 by the
package's copyright file; its 12th, the penguin, is CC-BY-NC-SA and left out). A jigzo ``.pzl`` file holds a
texture atlas JPEG; the photo is the atlas rectangle its ``image X Y W H`` line names (about 480x640 px).

The games set: the 19 photographs that ``tuxpaint-data`` ships as drawing templates (bark, cliff, corn maze,
jellyfish, waves, trees, sheep, a mill machine; by Bill Kendrick, GPL-2+ by the package's copyright file and
AUTHORS.txt), and the 12 landscape photographs of ``tuxtype-data`` (``images/kcas0-11.jpg``: glaciers, coasts, rice
terraces, a volcano, a hot spring; "featured images from Wikimedia Commons" by the package's
``usr/share/tuxtype/images/README_IMAGES.TXT``, shipped in Debian main). Tux Typing's five space backgrounds and Tux
Math's backgrounds are left out: telescope images over a drawn lunar horizon, not photographs of the kind archives
hold.

The gcompris set: the 115 photographs of five activities of the educational suite GCompris, ``gcompris-qt-data``
(GPL-3+ by the package's copyright file, whose ``Files: *`` stanza covers them): 49 monuments (Egypt, France,
Germany, India, the USA, the seven wonders), 15 wild and 9 farm animals, 9 musicians and instruments, and the 33
animal photos of the "erase" activity. They are WebP files inside compiled Qt resource files (``rcc/*.rcc``), read
by ``qt_resources``. The drawings, paintings and cartoon backgrounds of other activities are left out. They came
after every model up to v6 had been trained and chosen, so none of them has been trained or chosen on.

The scratch set: the 49 photographic stage backdrops of ``scratch`` 1.4 (``Media/Backgrounds``: rooms, nature,
buildings, streets, sports fields; 480x360, by MIT, CC-BY-SA-3.0 by the package's copyright file). The drawn
backdrops (party room, rooms 1-3, stage, school, woods and bench, the brick walls on a drawn floor, the drawn
basketball courts, the chalkboard) and the GIFs are left out. Small, but well-exposed everyday scenes of the kind
archives hold.

``--split`` also links each photo into OUT_DIR/val/ or OUT_DIR/test/ (``split_of``): the default model's card
chooses on the gcompris val photos and reports on the test ones.

Output: OUT_DIR/NAME.png (sRGB, 8 bit, long side 1024, Lanczos) and OUT_DIR/MANIFEST.tsv; each photo is written
atomically, so a rerun replaces them whole. The manifest keeps the rows of other sets made into the same folder.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import struct
import subprocess
import sys
import tempfile
import zlib
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


# (output name, package, path inside the package). A .pzl is cut out of its texture atlas (see crop_pzl).
PUZZLES: list[tuple[str, str, str]] = [
    *[(f"palapeli_{n.replace('-', '_')}", "palapeli-data", f"usr/share/palapeli/collection/{n}.jpg") for n in (
        "castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee", "panther-chameleon-female")],
    *[(f"jigzo_{n.split('-')[0]}", "jigzo-data", f"usr/share/games/jigzo/puzzles/00_default/{n}.pzl") for n in (
        "bike-3x4", "bird-2x3", "blackberry-3x3", "castle-6x3", "clouds-4x4", "gorilla2-3x3", "heli-4x3",
        "horse-4x3", "tobogan-4x3", "train-2x2", "windmill-4x4")],
]
GAMES: list[tuple[str, str, str]] = [
    *[(f"tuxpaint_{n}", "tuxpaint-data", f"usr/share/tuxpaint/templates/{n}.jpg") for n in (
        "burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse", "mossy_bark", "mossy_log", "mudstone",
        "ocean_splash", "ocean_waves", "redwoods_above", "rocks", "sheep", "spiders_web", "sun_behind_clouds",
        "sun_behind_leaves", "trees_above", "trees_at_dusk", "wool_mill_machine")],
    *[(f"tuxtype_kcas{n}", "tuxtype-data", f"usr/share/tuxtype/images/kcas{n}.jpg") for n in range(12)],
]
GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"


def _gcompris(activity: str, prefix: str, folder: str, names: str) -> list[tuple[str, str, str]]:
    """(output name, package, RCC_FILE!RESOURCE_PATH) for photos inside one GCompris activity's resource file."""
    return [(f"gcompris_{prefix}_{name.lower()}", "gcompris-qt-data",
             f"{GCOMPRIS_RCC}/{activity}.rcc!/gcompris/src/activities/{activity}/resource/{folder}{name}.webp")
            for name in names.split()]


GCOMPRIS: list[tuple[str, str, str]] = [
    *_gcompris("explore_monuments", "egypt", "egypt/", "bentPyramid greatPyramidOfGiza meidumPyramid redPyramid"),
    *_gcompris("explore_monuments", "france", "france/", "arlesAmphitheater chateaudeChambord chateaudeChenonceau "
               "citedeCarcassonne eiffelTower montStMichel palaisdesPapes pontduGard reimsCathedral rocamadour"),
    *_gcompris("explore_monuments", "germany", "germany/", "aulaPalatina berlinCathedral brandenburgGate "
               "neuschwansteinCastle schwerinPalace trierImperialBaths wormsCathedral"),
    *_gcompris("explore_monuments", "india", "india/", "ajantaCave charminar gatewayofIndia goldenTemple greatStupa "
               "hawaMahal konarkSunTemple mysorePalace qutubMinar rangGhar victoriaMemorial"),
    *_gcompris("explore_monuments", "usa", "usa/", "cabrillo canyondeChelly castillodeSanMarcos castleClinton "
               "fortSumter georgeWashingtonBirthplace lincolnMemorial mountRushmore navajo statueofLiberty"),
    *_gcompris("explore_monuments", "wonders", "wonders/", "chichenItza christTheRedeemer colosseum "
               "greatWallofChina machuPicchu petra tajMahal"),
    *_gcompris("explore_world_animals", "wild", "animals/", "bison chameleon crocodile dragon giraffe hedgehog "
               "jaguar kangaroo koala lemur moose narwhal panda polar_bear scarlet_macaw"),
    *_gcompris("explore_farm_animals", "farm", "animals/", "cat chicken cow dog duck horse owl pig sheep"),
    *_gcompris("explore_world_music", "music", "music/", "africa america australia ireland italy japan mexico "
               "middleeast orchestra"),
    *_gcompris("erase", "erase", "", "alpaca bee butterfly calf camels caterpillar chamaeleon cheetah crab dolphin "
               "flying_fox gibbon giraffe goat gorilla gosling heron horse kingfisher kitten long_nosed_monkey "
               "macaque meerkats northern_harrier nubian_ibex penguin pika red_panda rhinoceros spoonbills squirrel "
               "swans toucan"),
]
SCRATCH_BACKGROUNDS = "usr/share/scratch/Media/Backgrounds"
SCRATCH: list[tuple[str, str, str]] = [
    (f"scratch_{name.replace('-', '_')}", "scratch", f"{SCRATCH_BACKGROUNDS}/{folder}/{name}.jpg")
    for folder, names in (
        ("Indoors", "clothing-store hall kitchen the-movies-inside"),
        ("Nature", "beach-malibu canyon flower-bed forest garden-rock grand-canyon gravel-desert hill lake moon "
                   "pathway tree water-and-rocks wave"),
        ("Outdoors", "all-sports-mural atom-playground bench-with-view berkeley-mural boardwalk brick-wall-and-stairs "
                     "building-at-mit building-fireproof castle city-with-water city-with-water2 driveway graffiti "
                     "hallway_outdoors hay_field houses mansion mural-faro parking-ramp pool route66 silos the-movies "
                     "train-tracks1 train-tracks2 village wooden-house"),
        ("Sports", "baseball-field football-field playing-field tennis-backboard"),
    ) for name in names.split()
]
SETS = {"wallpapers": PHOTOS, "puzzles": PUZZLES, "games": GAMES, "gcompris": GCOMPRIS, "scratch": SCRATCH}

# Where a package states its photos' licence other than in its copyright file.
LICENCE_FILES = {"tuxtype-data": "usr/share/tuxtype/images/README_IMAGES.TXT"}


def crop_pzl(data: bytes, name: str) -> Image.Image:
    """The photo inside a jigzo puzzle: the largest embedded JPEG (the atlas), cut to its ``image`` rectangle."""
    header = data[:4096].decode("latin-1").splitlines()
    rect = next((line.split()[1:5] for line in header if line.startswith("image ")), None)
    if rect is None:
        raise SystemExit(f"{name}: no 'image X Y W H' line in the puzzle header")
    x, y, w, h = map(int, rect)
    atlas, start = None, 0
    while (start := data.find(b"\xff\xd8\xff", start)) >= 0:
        try:
            with Image.open(io.BytesIO(data[start:])) as im:
                im.load()
                if atlas is None or im.width * im.height > atlas.width * atlas.height:
                    atlas = im.convert("RGB")
        except OSError:
            pass  # a JPEG marker inside other data
        start += 3
    if atlas is None or x + w > atlas.width or y + h > atlas.height:
        raise SystemExit(f"{name}: no texture atlas holding the {w}x{h} photo at ({x}, {y})")
    return atlas.crop((x, y, x + w, y + h))


def qt_resources(blob: bytes, rcc_name: str) -> dict[str, bytes]:
    """{resource path: file bytes} of a compiled Qt resource file (``rcc`` binary format, versions 1-3).

    Layout: a "qres" header (version, then the offsets of the tree, data and names sections), a tree of fixed-size
    nodes (directories name their children, files their data offset), each data entry prefixed by its length.
    zlib-compressed entries are inflated; GCompris stores its WebP photos uncompressed.
    """
    if blob[:4] != b"qres":
        raise SystemExit(f"{rcc_name}: not a compiled Qt resource file (no 'qres' header)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 22 if version >= 2 else 14

    def node_name(offset: int) -> str:
        length = struct.unpack(">H", blob[names + offset:names + offset + 2])[0]
        start = names + offset + 6  # after the length and a 4-byte hash
        return blob[start:start + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    pending = [(0, "")]
    while pending:
        index, prefix = pending.pop()
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[at:at + 6])
        path = f"{prefix}/{node_name(name_offset)}" if index else ""
        if flags & 2:  # a directory
            count, first = struct.unpack(">II", blob[at + 6:at + 14])
            pending.extend((child, path) for child in range(first, first + count))
            continue
        offset = data + struct.unpack(">I", blob[at + 10:at + 14])[0]
        payload = blob[offset + 4:offset + 4 + struct.unpack(">I", blob[offset:offset + 4])[0]]
        if flags & 1:
            payload = zlib.decompress(payload[4:])  # after the uncompressed length
        elif flags & 4:
            raise SystemExit(f"{rcc_name}:{path}: zstd-compressed resource; not supported here")
        files[path] = payload
    return files


@functools.cache
def resources_in(path: Path, name: str) -> dict[str, bytes]:
    """qt_resources of one resource file, read and parsed once however many of its photos a set takes."""
    return qt_resources(path.read_bytes(), name)


def read_source(root: Path, inner: str) -> tuple[bytes, str]:
    """The source photo's bytes and its path for the manifest. ``FILE.rcc!/RESOURCE`` names a file inside a Qt
    resource file; a folder (plasma) names its largest image."""
    if "!" in inner:
        container, resource = inner.split("!", 1)
        if not (root / container).is_file():
            raise SystemExit(f"{container}: not in the package (a newer version may have dropped it)")
        files = resources_in(root / container, container)
        if resource not in files:
            raise SystemExit(f"{resource}: not in {container} (a newer version may have renamed it)")
        return files[resource], inner
    path = source_file(root, inner)
    return path.read_bytes(), str(path.relative_to(root))


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


def write_photo(data: bytes, source: str, out: Path) -> None:
    with (crop_pzl(data, source) if source.endswith(".pzl") else Image.open(io.BytesIO(data))) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = LONG_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        tmp = out.with_suffix(".tmp.png")
        im.save(tmp, optimize=False)
        tmp.replace(out)


def split_of(file_name: str) -> str:
    """"val" or "test" for a photo: the first hex digit of the sha256 of its file name, 0-7 or 8-f. A fixed rule,
    set before any model was scored on the gcompris photos (57 val, 58 test), that needs no list."""
    return "val" if hashlib.sha256(file_name.encode()).hexdigest()[0] in "01234567" else "test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for NAME.png and MANIFEST.tsv")
    parser.add_argument("--set", choices=sorted(SETS), default="wallpapers", dest="photo_set",
                        help="which photos (default: wallpapers)")
    parser.add_argument("--split", action="store_true",
                        help="also link each photo into OUT/val/ or OUT/test/ (see split_of)")
    args = parser.parse_args(argv)
    photos = SETS[args.photo_set]
    args.out.mkdir(parents=True, exist_ok=True)
    header = "name\tpackage\tversion\tsource\tsource_sha256\tlicence"
    manifest = args.out / "MANIFEST.tsv"
    names = {f"{name}.png" for name, _, _ in photos}
    kept = manifest.read_text().splitlines()[1:] if manifest.is_file() else []
    rows = [header, *(row for row in kept if row.split("\t", 1)[0] not in names)]
    with tempfile.TemporaryDirectory() as tmp:
        roots = fetch_packages({p for _, p, _ in photos}, Path(tmp))
        for name, package, inner in photos:
            root, version = roots[package]
            data, source = read_source(root, inner)
            write_photo(data, source, args.out / f"{name}.png")
            rows.append(f"{name}.png\t{package}\t{version}\t{source}\t{hashlib.sha256(data).hexdigest()}\t"
                        f"{LICENCE_FILES.get(package, f'usr/share/doc/{package}/copyright')}")
    if args.split:
        for name, _, _ in photos:
            link = args.out / split_of(f"{name}.png") / f"{name}.png"
            link.parent.mkdir(exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(Path("..") / f"{name}.png")
    tmp_manifest = manifest.with_suffix(".tmp")
    tmp_manifest.write_text("\n".join(rows) + "\n")
    tmp_manifest.replace(manifest)
    print(f"{len(photos)} photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
