"""``cardiacai demo``: the main job on the bundled synthetic phantom, with a check of what was written.

Until trained models ship, the main job is the I/O contract every capability relies on: a synthetic short-axis
cine volume and its labels written as NIfTI and as a Slicer ``.seg.nrrd``, then read back with slicerio and
SimpleITK and compared voxel by voxel and in patient coordinates.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import CardiacAIError
from .io import read_volume, write_volume
from .io.report import write_report
from .io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from .labels import LABELS
from .progress import ProgressCallback, report
from .provenance import Provenance

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(out_dir: Path, *, seed: int = 0, overwrite: bool = False, progress: ProgressCallback | None = None) -> str:
    """Write the phantom and its segmentation to ``out_dir``, read both back, and return a summary.

    Raises
    ------
    CardiacAIError
        If what was read back differs from what was written (the round trip is broken).
    """
    from .phantom import make_cine_phantom
    from .pipeline import output_folder

    # one run like every command: report.json lists its outputs, and a failed rerun puts the earlier one back
    with output_folder(out_dir, overwrite=overwrite, command="demo") as out:
        provenance = Provenance(command="demo", parameters={"seed": seed})
        report(progress, 0.0, "Making phantom")
        with provenance.timed("phantom"):
            case = make_cine_phantom(seed=seed)
        assert case.labels is not None
        report(progress, 0.3, "Writing image and labels")
        with provenance.timed("write"):
            write_volume(case.image, out / "image.nii.gz")
            write_volume(case.labels, out / "labels.nii.gz")
            write_seg_nrrd(case.labels, out / "segmentation.seg.nrrd")
        report(progress, 0.6, "Reading back")
        with provenance.timed("verify"):
            checks = _verify_round_trip(case.labels, out)
        result = {
            "image": "image.nii.gz",
            "labels": "labels.nii.gz",
            "segmentation": "segmentation.seg.nrrd",
            "round_trip_checks": checks,
            "segments": [LABELS[int(code)].display_name for code in np.unique(case.labels.array) if code in LABELS],
        }
        write_report(out, provenance=provenance, results=result)
    report(progress, 1.0, "Done")
    lines = [f"Wrote {out}/image.nii.gz, labels.nii.gz, segmentation.seg.nrrd, report.json"]
    lines += [f"  {name}: ok" for name in checks]
    return "\n".join(lines)


def _verify_round_trip(labels, out: Path) -> list[str]:
    import slicerio

    checks: list[str] = []
    nifti = read_volume(out / "labels.nii.gz")
    if not (np.array_equal(nifti.array, labels.array) and nifti.geometry.is_close(labels.geometry)):
        raise CardiacAIError("labels.nii.gz does not read back as written (voxels or geometry differ).")
    checks.append("labels.nii.gz voxels and geometry")

    seg = read_seg_nrrd(out / "segmentation.seg.nrrd")
    if not (np.array_equal(seg.labels.array, labels.array) and seg.labels.geometry.is_close(labels.geometry)):
        raise CardiacAIError("segmentation.seg.nrrd does not read back as written (voxels or geometry differ).")
    checks.append("segmentation.seg.nrrd voxels and geometry")

    raw = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    names = sorted(segment["name"] for segment in raw["segments"])
    expected = sorted(LABELS[int(c)].display_name for c in np.unique(labels.array) if c in LABELS)
    if names != expected:
        raise CardiacAIError(f"Segment names read by slicerio {names} differ from those written {expected}.")
    checks.append("slicerio segment names")
    return checks
