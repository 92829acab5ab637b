"""Stage what ``scripts/gpu_speed.sh`` needs on a lent GPU machine into ignored folders (see that script's header).

    python scripts/stage_gpu_speed.py [--acdc ../shared/data/acdc/training] [--mapping work_data/mapping/dataset]

Writes ``work_data/gpu/speed/acdc`` (the first three test patients of the split, ED and ES frames, labels and
Info.cfg), ``work_data/gpu/speed/mapping/validation`` (three mapping validation cases), ``work_data/gpu/models_mq``
(map_myocardium and the QC models of Resources/Models) and ``work_data/gpu/models_cine`` (cine and QC models), and
``.whl_io/`` (SimpleITK's installed package as a tar.xz, 28 MB instead of a 53 MB wheel, and the nibabel, slicerio
and pynrrd wheels for CPython 3.12). Prints the size of each, against the 64 MiB a device call carries.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                  *[arg for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                    for arg in ("--platform", p)]]


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _copy_models(source: Path, target: Path, prefixes: tuple[str, ...]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stale in [*target.glob("*.json"), *target.glob("*.safetensors")]:  # an earlier staging's versions
        stale.unlink()
    for path in sorted(source.glob("*")):
        if path.suffix in (".json", ".safetensors") and path.name.startswith(prefixes):
            shutil.copy2(path, target / path.name)


def write_map_batch(source: Path, target: Path, *, n_files: int = 34) -> None:
    """``n_files`` T1 map NIfTI files of 3 slices (the maps of the mapping cases in ``source``, repeated) for
    ``cardiacai batch --task map`` (gpu_speed.sh writes them on the device: they need not travel)."""
    from cardiac_ai.io import write_volume
    from cardiac_ai.mapping import load_mapping_case

    target.mkdir(parents=True, exist_ok=True)
    maps = [load_mapping_case(path).t1_map_ms for path in sorted(source.glob("*.npz"))]
    for n in range(n_files):
        write_volume(maps[n % len(maps)], target / f"map{n:02d}.nii.gz")


def _io_wheels(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *WHEEL_PLATFORM, "-d", folder,
                        "SimpleITK==2.5.7", "nibabel", "slicerio", "pynrrd"], check=True)
        for wheel in Path(folder).glob("*.whl"):
            if wheel.name.lower().startswith("simpleitk"):
                unpacked = Path(folder) / "simpleitk"
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(unpacked)
                with tarfile.open(target / "simpleitk.tar.xz", "w:xz", preset=6) as tar:
                    for member in sorted(unpacked.iterdir()):
                        tar.add(member, arcname=member.name)
            else:
                shutil.copy2(wheel, target / wheel.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", default=str(ROOT.parent / "shared" / "data" / "acdc" / "training"))
    parser.add_argument("--mapping", default=str(ROOT / "work_data" / "mapping" / "dataset"))
    parser.add_argument("--models", default=str(ROOT / "Resources" / "Models"))
    parser.add_argument("--patients", nargs="+", default=["patient003", "patient005", "patient007"])
    parser.add_argument("--map-cases", nargs="+", default=["patient046", "patient084", "patient094"])
    parser.add_argument("--skip-wheels", action="store_true")
    args = parser.parse_args()
    gpu = ROOT / "work_data" / "gpu"
    for patient in args.patients:
        shutil.copytree(Path(args.acdc) / patient, gpu / "speed" / "acdc" / patient, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*_4d.nii.gz"))
    for case in args.map_cases:
        (gpu / "speed" / "mapping" / "validation").mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(args.mapping) / "validation" / f"{case}.npz", gpu / "speed" / "mapping" / "validation")
    _copy_models(Path(args.models), gpu / "models_mq", ("map_myocardium", "qc_"))
    _copy_models(Path(args.models), gpu / "models_cine", ("cine_", "qc_"))
    if not args.skip_wheels:
        _io_wheels(ROOT / ".whl_io")
    for path in (gpu / "speed" / "acdc", gpu / "speed" / "mapping", gpu / "models_mq", gpu / "models_cine",
                 ROOT / ".whl_io", ROOT / ".whl"):
        print(f"{_size_mb(path):7.1f} MB  {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
