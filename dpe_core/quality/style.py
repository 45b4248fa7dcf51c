"""A measurable style benchmark from real photos: does a model learn a known look it was never shown in pairs?

A known look L (``dpe_core.quality.looks``) and three disjoint sets of real photos:
- S, source photos (what a user wants enhanced);
- R, photos that become the references: L(r), the look a user shows;
- T, held-out test photos, never read in training: a model G is scored by how close G(t) comes to L(t)
  (PSNR, CIEDE2000), beside the identity (t against L(t)).
An unpaired two-way model trains on S -> L(R) and never sees a pair; a supervised model trained on the pairs
(s, L(s)) with the same budget is the paired upper bound.

For a real style without ground truth (references that are just other photos), ``colour_statistics`` and
``lab_histogram_distance`` say how far outputs moved towards the references.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dpe_core.quality.looks import LOOKS
from dpe_core.quality.metrics import ciede2000
from dpe_core.quality.report import load_photos

Method = Callable[[np.ndarray], np.ndarray]  # HxWx3 float32 [0,1] -> same


@dataclass(frozen=True)
class StyleSplit:
    """Disjoint file-name lists: S (sources), R (become references), T (held-out test)."""

    source: list[str]
    reference: list[str]
    test: list[str]


def split_style_photos(names: Sequence[str], test: int, seed: int = 2010,
                       balance: Mapping[str, float] | None = None) -> StyleSplit:
    """Seeded split of sorted names: `test` names for T, the rest alternately to S and R (S gets the odd one).

    ``balance`` (name -> a statistic such as mean luminance): S and R are then dealt from the rest sorted by it,
    one of each neighbouring pair to each side (a seeded coin says which), so that S and L(R) differ by the look
    and not by their content. Without it, 18 + 18 photos differed by chance: R's mean brightness was 0.37 where
    S's was 0.50, and an unpaired model rightly learned "darker" instead of the look (measured)."""
    ordered = sorted(set(names))
    if test < 1 or len(ordered) < test + 2:
        raise ValueError(f"need at least {test + 2} photos for {test} test photos and non-empty S and R, "
                         f"got {len(ordered)}")
    rng = random.Random(seed)
    rng.shuffle(ordered)
    held, rest = ordered[:test], ordered[test:]
    if balance is None:
        return StyleSplit(source=sorted(rest[0::2]), reference=sorted(rest[1::2]), test=sorted(held))
    missing = [n for n in rest if n not in balance]
    if missing:
        raise ValueError(f"no balance statistic for {missing[:5]}")
    rest = sorted(rest, key=lambda n: (balance[n], n))
    source, reference = [], []
    for i in range(0, len(rest), 2):
        pair = rest[i : i + 2]
        if len(pair) == 2 and rng.random() < 0.5:
            pair.reverse()
        source.append(pair[0])
        reference.extend(pair[1:])
    return StyleSplit(source=sorted(source), reference=sorted(reference), test=sorted(held))


def deal_extra_photos(split: StyleSplit, extra: Sequence[str]) -> StyleSplit:
    """The split with more photos for S and R only: ``extra`` (names, none of them in the split) dealt alternately
    to S and R in the given order; T unchanged, so scores stay comparable with runs without them. ``match_colours``
    re-deals S and R afterwards."""
    clash = sorted(set(extra) & set(split.source + split.reference + split.test))
    if clash:
        raise ValueError(f"extra photos already in the split: {', '.join(clash[:5])}")
    return StyleSplit(source=sorted([*split.source, *extra[0::2]]), reference=sorted([*split.reference,
                      *extra[1::2]]), test=list(split.test))


def link_photo_pool(folders: Sequence[str | Path], pool: str | Path) -> list[str]:
    """Make ``pool`` one folder of symbolic links to the photos of ``folders`` (sorted within each folder) and
    return their names in that order. Names must be unique across the folders (ValueError naming both places).
    Links are updated in place, never the folder replaced: another run may be reading it."""
    from dpe_core.quality.report import PHOTO_SUFFIXES

    files: dict[str, Path] = {}
    for folder in map(Path, folders):
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not found:
            raise ValueError(f"{folder}: no photos ({', '.join(PHOTO_SUFFIXES)})")
        for path in found:
            if path.name in files:
                raise ValueError(f"{path.name} is in both {files[path.name].parent} and {folder}; photo names must "
                                 "be unique")
            files[path.name] = path.resolve()
    pool = Path(pool)
    pool.mkdir(parents=True, exist_ok=True)
    for entry in pool.iterdir():
        if entry.name not in files or not entry.is_symlink() or entry.resolve() != files[entry.name]:
            entry.unlink()
    for name, path in files.items():
        if not (pool / name).is_symlink():
            (pool / name).symlink_to(path)
    return list(files)


def mean_luminance(photo_dir: str | Path, names: Sequence[str], long_side: int = 64) -> dict[str, float]:
    """name -> mean Rec.709 luma in [0,1] of a small copy (the balance statistic of split_style_photos)."""
    return {name: float((pixels @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)).mean())
            for name, pixels in load_photos(Path(photo_dir), list(names), long_side)}


def colour_histograms(photo_dir: str | Path, names: Sequence[str], long_side: int = 64, bins: int = 64,
                      opponent: bool = False) -> dict[str, np.ndarray]:
    """name -> pixel counts [3, bins] along R, G, B over [0,1] of a small copy: what match_colours pools.

    ``opponent`` adds three axes, (R-G+1)/2, (G-B+1)/2 and (R-B+1)/2 ([6, bins]): matching R, G and B one at a time
    leaves how they combine in a pixel (how yellow or red it is) free."""
    out = {}
    for name, pixels in load_photos(Path(photo_dir), list(names), long_side):
        flat = np.clip(pixels.reshape(-1, 3), 0.0, 1.0)
        axes = [flat[:, 0], flat[:, 1], flat[:, 2]]
        if opponent:
            axes += [(flat[:, a] - flat[:, b] + 1.0) / 2.0 for a, b in ((0, 1), (1, 2), (0, 2))]
        out[name] = np.stack([np.histogram(axis, bins=bins, range=(0.0, 1.0))[0] for axis in axes])
    return out


def pooled_colour_distance(counts: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """Mean over the axes (R, G, B, and the opponent ones when given) of the 1-D Wasserstein distance (in [0,1]
    units) between the pooled pixels of two sets of photos, from their colour_histograms (pixels pooled, so a
    larger photo weighs more, as in training)."""
    return float(_distance_of_totals(np.sum(counts, axis=0, dtype=np.float64),
                                     np.sum(other, axis=0, dtype=np.float64)))


def _distance_of_totals(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pooled_colour_distance from pooled counts [..., axes, bins] (float64) of each set: [...]."""
    cdf_a = np.cumsum(a, axis=-1) / a.sum(axis=-1, keepdims=True)
    cdf_b = np.cumsum(b, axis=-1) / b.sum(axis=-1, keepdims=True)
    return np.abs(cdf_a - cdf_b).sum(axis=-1).mean(axis=-1) / a.shape[-1]


def match_colours(split: StyleSplit, histograms: Mapping[str, np.ndarray], starts: int = 8,
                  max_rounds: int = 50) -> StyleSplit:
    """The split with S and R re-dealt (T and both sizes unchanged) so that their pooled colours match.

    From ``split`` and from ``starts`` seeded re-deals of S + R: swap the one S/R pair that lowers
    pooled_colour_distance(S, R) most, until no swap lowers it; keep the lowest end point (deterministic; reads
    S and R only, never T). An unpaired model can only learn the look from what separates S from L(R). With 18
    photos a side, balancing brightness alone left a difference in content colours as large as a look (measured
    on warm-contrast: the no-training pooled transfer S -> L(R) scored 30.1 dB on T; on the matched split 35.4)."""
    pool = list(split.source) + list(split.reference)
    missing = [n for n in pool if n not in histograms]
    if missing:
        raise ValueError(f"no colour histogram for {missing[:5]}")

    def distance(s: Sequence[str], r: Sequence[str]) -> float:
        return pooled_colour_distance([histograms[n] for n in s], [histograms[n] for n in r])

    def swap_distances(source: list[str], reference: list[str]) -> np.ndarray:
        """[len(S), len(R)]: pooled_colour_distance after swapping S[i] with R[j], for every pair at once (the
        pooled counts are integers, so the totals after a swap are exact and equal the direct sums)."""
        hs = np.stack([histograms[n] for n in source]).astype(np.float64)  # [S, axes, bins]
        hr = np.stack([histograms[n] for n in reference]).astype(np.float64)
        moved = hr[None, :] - hs[:, None]  # what R[j] brings into S and S[i] takes out
        return _distance_of_totals(hs.sum(0) + moved, hr.sum(0) - moved)

    def descend(source: list[str], reference: list[str]) -> tuple[float, list[str], list[str]]:
        best = distance(source, reference)
        for _ in range(max_rounds):
            swapped = swap_distances(source, reference)
            i, j = np.unravel_index(int(np.argmin(swapped)), swapped.shape)  # first minimum: lowest i, then j
            if swapped[i, j] >= best - 1e-12:
                break
            source[i], reference[j], best = reference[j], source[i], float(swapped[i, j])
        return best, sorted(source), sorted(reference)

    ends = [descend(list(split.source), list(split.reference))]
    for seed in range(starts):
        dealt = sorted(pool)
        random.Random(seed).shuffle(dealt)
        ends.append(descend(dealt[: len(split.source)], dealt[len(split.source):]))
    _, source, reference = min(ends)
    return StyleSplit(source=source, reference=reference, test=list(split.test))


def prepare_style_sets(photo_dir: str | Path, work_dir: str | Path, look: str, split: StyleSplit,
                       long_side: int = 256) -> dict[str, Path]:
    """Write the benchmark's folders (PNG, long side <= long_side) and return them by role:
    source (S as is), reference (L(R)), pair_input / pair_target (S and L(S): the supervised bound's pairs),
    test / test_target (T and L(T))."""
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}; known: {', '.join(LOOKS)}")
    apply = LOOKS[look]
    photo_dir, work = Path(photo_dir), Path(work_dir)
    folders = {role: work / role for role in ("source", "reference", "pair_input", "pair_target", "test",
                                                "test_target")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    plan = [(split.source, ("source", "pair_input"), ("pair_target",)), (split.reference, (), ("reference",)),
            (split.test, ("test",), ("test_target",))]
    for names, plain_roles, look_roles in plan:
        for name, pixels in load_photos(photo_dir, names, long_side):
            image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8))
            stem = Path(name).stem + ".png"
            for role in plain_roles:
                image.save(folders[role] / stem)
            if look_roles:
                looked = apply(image)
                for role in look_roles:
                    looked.save(folders[role] / stem)
    return folders


def load_pairs(inputs: Path, targets: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, input HxWx3 float32, target HxWx3 float32) for the same-named PNGs of two folders, sorted."""
    out = []
    for path in sorted(inputs.glob("*.png")):
        a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        b = np.asarray(Image.open(targets / path.name).convert("RGB"), dtype=np.float32) / 255.0
        out.append((path.name, a, b))
    return out


def score_against_look(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], method: Method,
                       colour: bool = True) -> dict[str, float]:
    """Mean PSNR (dB) and CIEDE2000 of method(t) against L(t) over the test pairs (t, L(t)). colour=False skips
    CIEDE2000 (NaN; it needs scikit-image, which a lent GPU machine lacks, and choosing on PSNR does not read it)."""
    psnrs, des = [], []
    for _, t, target in pairs:
        out = np.clip(method(t), 0, 1).astype(np.float32)
        mse = float(np.mean((out - target) ** 2))
        psnrs.append(100.0 if mse <= 1e-10 else -10 * np.log10(mse))
        des.append(ciede2000(out, target) if colour else float("nan"))
    return {"psnr": float(np.mean(psnrs)), "ciede2000": float(np.mean(des))}


def pooled_histogram_transfer(sources: Sequence[np.ndarray], references: Sequence[np.ndarray],
                              levels: int = 257) -> Method:
    """An unpaired colour transfer with no training: per channel, the map that sends the quantiles of all source
    pixels pooled to those of all reference pixels pooled (piecewise linear between ``levels`` quantiles). Images
    HxWx3 float in [0,1]; returns a Method applying that one fixed map to any photo.

    A yardstick for the style benchmark: if S and L(R) only differed by the look, this would recover a look made
    of per-channel curves; what it misses on T is what the content of S and R differs by.
    """
    def pooled(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(im, dtype=np.float32).reshape(-1, 3) for im in images])

    q = np.linspace(0.0, 1.0, levels)
    source_q, reference_q = np.quantile(pooled(sources), q, axis=0), np.quantile(pooled(references), q, axis=0)

    def transfer(image: np.ndarray) -> np.ndarray:
        out = np.empty_like(image, dtype=np.float32)
        for c in range(3):
            out[..., c] = np.interp(image[..., c], source_q[:, c], reference_q[:, c])
        return out

    return transfer


def colour_statistics(images: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean over images of: L* mean and spread (std), a* and b* means and spreads, saturation (mean chroma
    C*ab) and contrast (L* 95th - 5th percentile). Images HxWx3 float in [0,1] (sRGB)."""
    from skimage.color import rgb2lab

    rows = []
    for image in images:
        lab = rgb2lab(np.clip(image, 0, 1))
        lum, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
        p5, p95 = np.percentile(lum, [5, 95])
        rows.append([lum.mean(), lum.std(), a.mean(), a.std(), b.mean(), b.std(), np.hypot(a, b).mean(), p95 - p5])
    keys = ("L_mean", "L_spread", "a_mean", "a_spread", "b_mean", "b_spread", "saturation", "contrast")
    return dict(zip(keys, np.mean(np.array(rows), axis=0).tolist(), strict=True))


def lab_histogram(images: Sequence[np.ndarray], bins: int = 16) -> np.ndarray:
    """Normalised joint L*a*b* histogram [bins,bins,bins] of all pixels of the images (L 0..100, a/b -100..100)."""
    from skimage.color import rgb2lab

    pixels = np.concatenate([rgb2lab(np.clip(im, 0, 1)).reshape(-1, 3) for im in images])
    hist, _ = np.histogramdd(pixels, bins=bins, range=((0, 100), (-100, 100), (-100, 100)))
    return hist / max(1.0, hist.sum())


def lab_histogram_distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray], bins: int = 16) -> float:
    """Hellinger distance in [0,1] between the joint Lab histograms of two image sets (0: identical colours)."""
    ha, hb = lab_histogram(a, bins), lab_histogram(b, bins)
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(ha * hb)))))
