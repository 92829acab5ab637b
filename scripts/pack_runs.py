"""Pack training run folders into one .tar.gz small enough to bring back from a lent GPU machine.

Usage: python scripts/pack_runs.py WORK OUT.tar.gz [--include predicted timings.json ...]

Keeps what ``export_best_model`` and the benchmarks read: each run's ``config.json``, ``log.csv``, ``best.pt`` with
its weights in float16 (the precision ``export_best_model`` writes anyway; it halves what travels back), and
``last.pt`` without its weights, optimiser, scheduler and RNG state (it records the epochs done; it cannot resume).
"""
from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

import torch

RESUME_ONLY = ("model", "optimizer", "scheduler", "rng")


def pack(work: Path, target: Path, include: list[str]) -> Path:
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(target, "w:gz") as archive:
        for run in sorted(p for p in (work / "runs").glob("*") if p.is_dir()):
            for name in ("config.json", "log.csv"):
                if (run / name).is_file():
                    archive.add(run / name, arcname=f"runs/{run.name}/{name}")
            if (run / "best.pt").is_file():
                best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
                best["model"] = {k: v.half() if v.is_floating_point() else v for k, v in best["model"].items()}
                slim = Path(scratch) / f"{run.name}_best.pt"
                torch.save(best, slim)
                archive.add(slim, arcname=f"runs/{run.name}/best.pt")
            if (run / "last.pt").is_file():
                last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
                slim = Path(scratch) / f"{run.name}_last.pt"
                torch.save({k: v for k, v in last.items() if k not in RESUME_ONLY}, slim)
                archive.add(slim, arcname=f"runs/{run.name}/last.pt")
        for extra in include:
            if (work / extra).exists():
                archive.add(work / extra, arcname=extra)
    print(f"packed {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work")
    parser.add_argument("target")
    parser.add_argument("--include", nargs="*", default=[], help="more paths under WORK to add")
    args = parser.parse_args(argv)
    pack(Path(args.work), Path(args.target), args.include)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
