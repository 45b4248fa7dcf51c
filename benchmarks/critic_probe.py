"""Can the critic see a look? Critic-only training, scored on held-out photos, before any GAN run.

    python benchmarks/critic_probe.py DATA --sets unpaired --steps 400     # S vs L(R), the benchmark's sets
    python benchmarks/critic_probe.py DATA --sets same --steps 600         # S vs L(S), shuffled
    python benchmarks/critic_probe.py DATA --sets unpaired --crops         # random crops, 30-100 % of a side
    python benchmarks/critic_probe.py DATA --critic-stats only --lr 1e-3 --steps 2000   # colour-statistics critic

DATA is a style benchmark folder prepared by benchmarks/style.py (WORK/LOOK/data: source, reference,
pair_target, test, test_target). The release critic trains alone (Wasserstein loss + gradient penalty, Adam) on
batches of "real" = looked photos and "fake" = plain photos; every 50 steps it prints the estimate on its batch
and on the held-out pairs: mean D(L(t)) - mean D(t) over T. A critic that sees the look gives a positive held-out
estimate; one that only tells which photos it was shown gives a positive batch estimate and ~0 held out. The
generator of a two-way GAN cannot learn a look from a critic that cannot see it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpe_core.losses import critic_wasserstein_loss, gradient_penalty  # noqa: E402
from dpe_core.nn import build_critic  # noqa: E402
from dpe_core.training.data import DegradedPairData, PhotoSet, dihedral, pad_to_square  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--sets", choices=["unpaired", "same"], default="unpaired",
                        help="unpaired: S vs L(R) (disjoint photos); same: S vs L(S), shuffled")
    parser.add_argument("--crops", action="store_true", help="random crops (30-100 %% of a side) instead of wholes")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--penalty", type=float, default=10.0)
    parser.add_argument("--init-scale", type=float, default=1e-3, help="critic conv init (release: 1e-3)")
    parser.add_argument("--critic-stats", choices=["off", "add", "only"], default="off",
                        help="the critic's colour-statistics branch (CriticConfig.global_stats; release: off)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def photos(role: str, size: int) -> PhotoSet:
        return PhotoSet(sorted(str(p) for p in (args.data / role).glob("*.png")), size)

    load = 256 if args.crops else args.size
    fakes = DegradedPairData(photos("source", load), crop_scale=(0.3, 1.0) if args.crops else (1.0, 1.0),
                             whole_share=0.2 if args.crops else 1.0, train_size=args.size)
    reals = DegradedPairData(photos("pair_target" if args.sets == "same" else "reference", load),
                             crop_scale=fakes.crop_scale, whole_share=fakes.whole_share, train_size=args.size)
    held_plain = torch.stack([pad_to_square(x, args.size)[0] for x in photos("test", args.size).images])
    held_look = torch.stack([pad_to_square(x, args.size)[0] for x in photos("test_target", args.size).images])

    torch.manual_seed(0)
    critic = build_critic({"init_scale": args.init_scale, "global_stats": args.critic_stats})
    opt = torch.optim.Adam(critic.parameters(), lr=args.lr)
    noise = torch.Generator().manual_seed(1)
    started = time.perf_counter()

    def draw(data: DegradedPairData, rng: random.Random) -> torch.Tensor:
        return torch.stack([pad_to_square(dihedral(data._sample(rng), rng.randrange(8)), args.size)[0]
                            for _ in range(args.batch)])

    for step in range(1, args.steps + 1):
        rng = random.Random(step)
        fake, real = draw(fakes, rng), draw(reals, rng)
        opt.zero_grad()
        loss = critic_wasserstein_loss(critic(real), critic(fake)) + args.penalty * gradient_penalty(
            critic, real, fake, generator=noise)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                batch = float(critic(real).mean() - critic(fake).mean())
                held = float(critic(held_look).mean() - critic(held_plain).mean())
            print(f"step {step} {time.perf_counter() - started:.0f} s: batch estimate {batch:+.3f}, "
                  f"held-out estimate {held:+.3f}", flush=True)


if __name__ == "__main__":
    main()
