"""Process a cohort with CardiacAI inside 3D Slicer, without a window: cine segmentation, T1/T2 map analysis, LGE
fibrosis or CAM explanation, one volume file per case.

Usage (the paths are examples; Slicer's own options go before ``--python-script``)::

    Slicer --no-splash --no-main-window --python-script /path/to/CardiacAI/Scripts/batch_headless.py \\
        --input-folder cases/ --output-folder results/ [--task segment-cine|map|fibrosis|cam] [--device auto] \\
        [--mode region-aware] [--kind T1|T2] [--fibrosis-model weak] [--slice-order base-first] \\
        [--explain CLASS] [--no-qc] [--qc-threshold 0.8] [--models-dir DIR] [--overwrite]

Every volume file directly in the input folder (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``; not
``.seg.nrrd``) is one case; its case id is the file name without the extension. For each case the script loads the
volume into the scene, runs the task's ``CardiacAILogic`` method (the same code as the Apply button:
``segmentCine``, ``analyseMap``, ``quantifyFibrosis`` or ``explainCam``) and writes ``<output>/<case id>/``:

- ``segmentation.seg.nrrd``: the segmentation node, saved by Slicer (names, colours, terminology, geometry);
- the task's tables as CSV (:data:`TASK_TABLES`: e.g. ``volumes.csv``, ``slices.csv`` and ``qc.csv`` for cine);
  ``cam.nrrd`` (the CAM) for cam, and with ``--structures`` ``structures.seg.nrrd`` (the label-free estimate);
- ``report.json``: the backend's report with provenance (models, device, warnings), written last.

A case that fails is recorded and the next one runs. A case whose folder already holds ``report.json`` is skipped
(``--overwrite`` redoes it), so an interrupted run can be started again. ``<output>/summary.csv`` (one row per case:
status, the task's key numbers, QC, warnings, error, seconds) is rewritten after every case, and keeps the rows of
cases an earlier run into the folder finished that this run does not list. As ``cardiacai batch``, the run is refused
before any case when one of its case folders holds another task's output or files no CardiacAI run wrote, its
``summary.csv`` is not a batch summary, or another run is writing into it; the summary keeps only the earlier
rows of this task. Slicer then exits with 0 (every
case done or skipped), 5 (some cases failed), 2 (bad arguments, no case found, or an output folder refused), 3
(CardiacAI or PyTorch not installed in this Slicer) or 1 (unexpected error).

Cardiac function (ED and ES of each case), QC of existing segmentations (an image and its labels per case), DICOM
folders and CSV case lists are not read here: use ``cardiacai batch`` (plain Python, no Slicer; ``--task function``
and ``--task qc`` take a CSV), which reads them. Both write the same summary columns: the backend's
``cardiac_ai.batch_summary.summary_values`` reads them from each case's report.

Everything above :func:`main` uses only the standard library, so it is tested without Slicer; ``slicer`` and the
CardiacAI module are imported inside :func:`main` only.
"""

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_SETUP = 3
EXIT_CASES_FAILED = 5  # the same status as `cardiacai batch` when some cases failed

TASKS = ("segment-cine", "map", "fibrosis", "cam")
CINE_MODES = ("region-aware", "baseline")
MAP_KINDS = ("T1", "T2")
FIBROSIS_MODELS = ("weak", "weak_stack", "pixel")
#: ``cardiacai fibrosis --slice-order``; as the module's FIBROSIS_SLICE_ORDERS ("unknown": no AHA numbers).
FIBROSIS_SLICE_ORDERS = ("unknown", "base-first", "apex-first")
#: Result table (key of the Logic's result) -> CSV file written into each case folder, per task.
TASK_TABLES = {
    "segment-cine": {"volumesTableNode": "volumes.csv", "slicesTableNode": "slices.csv", "qcTableNode": "qc.csv"},
    "map": {"summaryTableNode": "statistics.csv", "slicesTableNode": "slices.csv",
            "segmentsTableNode": "segments.csv", "qcTableNode": "qc.csv"},
    "fibrosis": {"summaryTableNode": "fibrosis.csv", "slicesTableNode": "slices.csv",
                 "segmentsTableNode": "transmurality.csv", "qcTableNode": "qc.csv"},
    "cam": {"summaryTableNode": "prediction.csv", "slicesTableNode": "slices.csv"},
}
#: The label-free RV / myocardium / LV estimate of ``--task cam --structures``.
STRUCTURES_NAME = "structures.seg.nrrd"
#: Volume file endings read as one case each, longest first so that ".nii.gz" wins over ".gz".
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Written last into a case folder; a case folder that holds it is finished.
DONE_MARKER = "report.json"
SUMMARY_NAME = "summary.csv"

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class UsageError(ValueError):
    """Bad command-line arguments or input folder; the message says what to change."""


class HelpShown(Exception):
    """``--help`` was given and the help was printed; nothing else is to be done."""


class _Parser(argparse.ArgumentParser):
    # argparse would call sys.exit, which inside Slicer ends the application without a summary or exit status.
    def error(self, message):
        raise UsageError(f"{message}\n{self.format_usage()}")

    def exit(self, status=0, message=None):
        if status:
            raise UsageError(message or "invalid arguments")
        raise HelpShown()


def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser (its ``error`` raises :class:`UsageError` instead of exiting)."""
    parser = _Parser(
        prog="Slicer --no-main-window --python-script batch_headless.py",
        description="Run a CardiacAI task on every volume of a folder, inside 3D Slicer.",
    )
    parser.add_argument("--input-folder", required=True, help="folder of volume files, one case each")
    parser.add_argument("--output-folder", required=True, help="one subfolder per case and summary.csv")
    parser.add_argument("--task", choices=TASKS, default="segment-cine",
                        help="segment-cine (cine frames), map (T1/T2 maps, needs --kind), fibrosis (LGE stacks), cam")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--mode", choices=CINE_MODES, default="region-aware",
                        help="segment-cine: region-aware networks per slice, or one baseline network")
    parser.add_argument("--kind", choices=MAP_KINDS, help="map: what the maps hold (T1 or T2)")
    parser.add_argument("--fibrosis-model", choices=FIBROSIS_MODELS, default="weak", help="fibrosis: scar model")
    parser.add_argument("--slice-order", choices=FIBROSIS_SLICE_ORDERS, default="unknown",
                        help="fibrosis: where the base lies along the slices; base-first or apex-first gives "
                             "transmurality per AHA segment (transmurality.csv), unknown per sector")
    parser.add_argument("--explain", help="cam: class to explain on every slice (default: the volume's prediction; "
                        "'slice': each slice's own)")
    parser.add_argument("--structures", action="store_true",
                        help="cam: also the label-free RV / myocardium / LV estimate (structures.seg.nrrd)")
    parser.add_argument("--lv-wall-mm", type=float, metavar="MM",
                        help="cam: band around the LV blood pool added to the weak U-Net's heart (default 11; 0: "
                             "none)")
    parser.add_argument("--no-qc", action="store_true", help="segment-cine, map, fibrosis: no quality control")
    parser.add_argument("--qc-threshold", type=float, default=0.8,
                        help="segment-cine, map, fibrosis: flag slices whose predicted Dice is below this (default 0.8)")
    parser.add_argument("--models-dir", help="extra folder of trained models (default: the CardiacAI setting)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that were finished earlier")
    return parser


def parse_arguments(argv):
    """Parse and check the script's arguments (``sys.argv[1:]`` inside Slicer).

    :return: argparse.Namespace with ``input_folder`` and ``output_folder`` as absolute ``Path`` objects, ``task``,
        ``device``, ``mode``, ``models_dir`` (str or None) and ``overwrite``.
    :raises UsageError: an option is missing or invalid, the input folder does not exist, the output folder is the
        input folder or an existing file, or the models folder does not exist.
    :raises HelpShown: ``--help`` was given (the help is printed on stdout).
    """
    args = build_parser().parse_args(list(argv))
    args.input_folder = Path(args.input_folder).expanduser().resolve()
    args.output_folder = Path(args.output_folder).expanduser().resolve()
    if not args.input_folder.is_dir():
        raise UsageError(f"--input-folder {args.input_folder} is not a folder; give the folder of case volumes.")
    if args.output_folder == args.input_folder:
        raise UsageError(
            f"--output-folder is the input folder ({args.input_folder}); choose another folder so that the results "
            "never mix with the input volumes."
        )
    if args.output_folder.exists() and not args.output_folder.is_dir():
        raise UsageError(f"--output-folder {args.output_folder} is a file; give a folder (it is created if needed).")
    if not _DEVICE_RE.match(args.device):
        raise UsageError(f"--device {args.device!r} is not one of auto, cpu, cuda, cuda:N.")
    if args.models_dir is not None and not Path(args.models_dir).is_dir():
        raise UsageError(f"--models-dir {args.models_dir} is not a folder of trained models.")
    if args.task == "map" and args.kind is None:
        raise UsageError("--task map needs --kind T1 or --kind T2 (what the maps hold).")
    if args.structures and args.task != "cam":
        raise UsageError(f"--structures applies to --task cam, not {args.task}.")
    if args.slice_order != "unknown" and args.task != "fibrosis":
        raise UsageError(f"--slice-order applies to --task fibrosis, not {args.task}.")
    if args.lv_wall_mm is not None and args.task != "cam":
        raise UsageError(f"--lv-wall-mm applies to --task cam, not {args.task}.")
    if args.lv_wall_mm is not None and not 0.0 <= args.lv_wall_mm <= 30.0:  # weak.structures.MAX_LV_WALL_MM
        raise UsageError(f"--lv-wall-mm {args.lv_wall_mm} is not a width from 0 to 30 mm.")
    if not 0.0 <= args.qc_threshold <= 1.0:
        raise UsageError(f"--qc-threshold {args.qc_threshold} is not a Dice value between 0 and 1.")
    return args


def case_id_of(path) -> str:
    """The case id of a volume file: its name without the volume extension (``p01.nii.gz`` -> ``p01``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_cases(input_folder):
    """The cases of a folder: ``(case id, path)`` for each volume file in it, sorted by file name.

    Sub-folders, hidden files, ``.seg.nrrd`` segmentations and other files are ignored.

    :raises UsageError: no volume file in the folder, or two files give the same case id (``a.nii`` and ``a.nrrd``).
    """
    folder = Path(input_folder)
    cases = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        name = path.name.lower()
        if (not path.is_file() or name.startswith(".") or name.endswith(".seg.nrrd")
                or not name.endswith(VOLUME_SUFFIXES)):
            continue
        cases.append((case_id_of(path), path))
    if not cases:
        raise UsageError(
            f"No volume file ({', '.join(VOLUME_SUFFIXES)}) in {folder}. Convert DICOM series first, or use "
            "`cardiacai batch`, which reads DICOM folders and CSV lists."
        )
    seen = {}
    for case_id, path in cases:
        if case_id in seen:
            raise UsageError(
                f"{seen[case_id].name} and {path.name} in {folder} both give the case id {case_id!r}; rename one."
            )
        seen[case_id] = path
    return cases


def summary_row(case_id, input_path, *, status, values=None, error=None, seconds=None) -> dict:
    """One row of ``summary.csv``.

    :param status: "ok", "failed" or "skipped (done earlier)".
    :param values: for "ok": the case's summary columns, which the backend reads from the report the task's Logic
        method returns (``cardiac_ai.batch_summary.summary_values(result["report"])``, as ``cardiacai batch`` does).
    :param error: for "failed": the exception; the row holds "<type>: <message>".
    :return: dict with case_id, inputs, status, then ``values``, then error and seconds when given: the columns of
        ``cardiacai batch``'s summary.csv.
    """
    row = {"case_id": case_id, "inputs": str(input_path), "status": status}
    if values is not None:
        row.update(values)
    if error is not None:
        row["error"] = f"{type(error).__name__}: {error}"
    if seconds is not None:
        row["seconds"] = round(float(seconds), 3)
    return row


def exit_status(rows) -> int:
    """EXIT_CASES_FAILED if any row has status "failed", else EXIT_OK."""
    return EXIT_CASES_FAILED if any(row["status"] == "failed" for row in rows) else EXIT_OK


# -- inside Slicer ------------------------------------------------------------------------------------------------


def _importCardiacAI():
    """The CardiacAI module: loaded by Slicer, or from the folder above this script (build tree, source checkout)."""
    try:
        import CardiacAI
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import CardiacAI
    return CardiacAI


def runTask(logic, volumeNode, args) -> dict:
    """Run ``args.task`` on one loaded volume with the module's Logic; returns the Logic's result dict."""
    common = {"device": args.device, "modelsDir": args.models_dir}
    qc = {"qc": not args.no_qc, "qcThreshold": args.qc_threshold}
    if args.task == "map":
        return logic.analyseMap(volumeNode, kind=args.kind, **qc, **common)
    if args.task == "fibrosis":
        return logic.quantifyFibrosis(volumeNode, model=args.fibrosis_model, sliceOrder=args.slice_order, **qc,
                                      **common)
    if args.task == "cam":
        return logic.explainCam(volumeNode, explain=args.explain, structures=args.structures,
                                lvWallMm=args.lv_wall_mm, **common)
    return logic.segmentCine(volumeNode, mode=args.mode, **qc, **common)


def tableRows(tableNode) -> list:
    """The rows of a table node as dicts (column title -> text), for the backend's ``write_csv``."""
    table = tableNode.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{name: table.GetValue(r, c).ToString() for c, name in enumerate(names)}
            for r in range(table.GetNumberOfRows())]


def _resultNodes(result) -> list:
    import slicer

    nodes = []
    for value in result.values():
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, slicer.vtkMRMLNode):
                nodes.append(item)
    return nodes


def processCase(logic, reportIO, caseId, inputPath, caseFolder, args) -> dict:
    """Run the task on one case in the scene and write its files (tables and report through the backend's
    ``cardiac_ai.io.report``, ``reportIO``: atomic writes); returns the Logic's result. Nodes are removed after."""
    # a redone case is unfinished until its report is back, holds nothing of the earlier run (an earlier structures
    # estimate included) when it finishes, and gets the earlier result back when it fails
    caseFolderAsOneRun = _importCardiacAI().importBackend("pipeline").case_folder_as_one_run
    with caseFolderAsOneRun(caseFolder):
        return _processCaseFiles(logic, reportIO, inputPath, caseFolder, args)


def _processCaseFiles(logic, reportIO, inputPath, caseFolder, args) -> dict:
    import slicer

    nodes = []
    try:
        volumeNode = slicer.util.loadVolume(str(inputPath))  # raises RuntimeError if Slicer cannot read it
        nodes.append(volumeNode)
        result = runTask(logic, volumeNode, args)
        nodes += _resultNodes(result)
        segmentationPath = caseFolder / "segmentation.seg.nrrd"
        if not slicer.util.saveNode(result["segmentationNode"], str(segmentationPath)):
            raise RuntimeError(f"Slicer could not write {segmentationPath}.")
        if result.get("camVolumeNode") is not None and not slicer.util.saveNode(result["camVolumeNode"],
                                                                              str(caseFolder / "cam.nrrd")):
            raise RuntimeError(f"Slicer could not write {caseFolder / 'cam.nrrd'}.")
        structuresPath = caseFolder / STRUCTURES_NAME
        if result.get("structuresSegmentationNode") is not None and not slicer.util.saveNode(
                result["structuresSegmentationNode"], str(structuresPath)):
            raise RuntimeError(f"Slicer could not write {structuresPath}.")
        for key, fileName in TASK_TABLES[args.task].items():
            if result.get(key) is not None:
                reportIO.write_csv(caseFolder / fileName, tableRows(result[key]))
        if result.get("bullseyePath"):  # the Logic keeps the PNG in a folder of its own: move it into the case
            kept = Path(result["bullseyePath"])
            partial = caseFolder / ".bullseye.png.partial"
            shutil.copyfile(kept, partial)
            os.replace(partial, caseFolder / "bullseye.png")
            shutil.rmtree(kept.parent, ignore_errors=True)
        reportIO.write_json(caseFolder / DONE_MARKER, result["report"])
        return result
    finally:
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)
        # the batch owns the scene: whatever a case made (also one that failed half-way) goes with it
        slicer.mrmlScene.Clear(0)


def main(argv) -> int:
    """Run the batch and return the exit status (see the module docstring)."""
    try:
        args = parse_arguments(argv)
        cases = list_cases(args.input_folder)
    except HelpShown:
        return EXIT_OK
    except UsageError as error:
        print(f"CardiacAI batch: {error}", file=sys.stderr)
        return EXIT_USAGE

    import importlib.util

    try:
        CardiacAI = _importCardiacAI()
    except ImportError as error:
        print(f"CardiacAI batch: the CardiacAI module cannot be imported ({error}). Install the CardiacAI extension "
              "in this Slicer, or add its CardiacAI folder to the additional module paths.", file=sys.stderr)
        return EXIT_SETUP
    if importlib.util.find_spec("torch") is None:
        # Installing PyTorch asks for confirmation in a dialog, which nobody answers in a headless run.
        print("CardiacAI batch: PyTorch is not installed in this Slicer. Start Slicer with its window and install it "
              "in the 'PyTorch Utils' module (or press Apply once in CardiacAI), then run the batch again.",
              file=sys.stderr)
        return EXIT_SETUP
    logic = CardiacAI.CardiacAILogic()
    try:
        logic.setupPythonRequirements(requireTorch=True)  # PyTorch is present: only pip installs, no question
        summaryValues = CardiacAI.importBackend("batch_summary").summary_values
        earlierSummaryValues = CardiacAI.importBackend("batch_summary").earlier_summary_values
        summaryColumns = CardiacAI.importBackend("batch_summary").summary_columns
        reportIO = CardiacAI.importBackend("io.report")
        pipeline = CardiacAI.importBackend("pipeline")
    except Exception as error:
        print(f"CardiacAI batch: the backend's Python packages are not ready: {error}", file=sys.stderr)
        return EXIT_SETUP
    try:  # the case-id rules of `cardiacai batch`: folders any system can make, unique ignoring case
        for caseId, inputPath in cases:
            pipeline.check_case_id(caseId, f"{args.input_folder}: {Path(inputPath).name}")
        pipeline.check_unique_case_ids([caseId for caseId, _ in cases])
    except Exception as error:
        print(f"CardiacAI batch: {error}", file=sys.stderr)
        return EXIT_USAGE

    batchCases = [pipeline.BatchCase(caseId, (Path(inputPath),)) for caseId, inputPath in cases]
    try:  # the refusals of `cardiacai batch`: another task's output, a user's files or summary.csv
        pipeline.check_batch_folders(batchCases, args.output_folder, task=args.task)
    except Exception as error:
        print(f"CardiacAI batch: {error}", file=sys.stderr)
        return EXIT_USAGE
    args.output_folder.mkdir(parents=True, exist_ok=True)
    summaryPath = args.output_folder / SUMMARY_NAME
    kept = pipeline.finished_cases_of_earlier_runs(args.output_folder, batchCases,  # a run over part of a cohort
                                                   task=args.task)
    held = contextlib.ExitStack()
    try:  # one run per folder at a time, as `cardiacai batch` (pipeline.run_batch)
        held.enter_context(CardiacAI.importBackend("io.atomic").folder_lock(args.output_folder))
    except Exception as error:
        print(f"CardiacAI batch: {error}", file=sys.stderr)
        return EXIT_USAGE
    with held:
        rows = []
        for number, (caseId, inputPath) in enumerate(cases, start=1):
            caseFolder = args.output_folder / caseId
            prefix = f"[{number}/{len(cases)}] {caseId}:"
            earlier = None if args.overwrite else earlierSummaryValues(caseFolder)
            if earlier is not None:  # a finished case keeps its numbers in the new summary
                rows.append(summary_row(caseId, inputPath, status="skipped (done earlier)", values=earlier))
                print(f"{prefix} skipped, finished earlier (use --overwrite to redo)", flush=True)
                if args.structures and not (caseFolder / STRUCTURES_NAME).is_file():
                    print(f"{prefix} WARNING: that earlier run had no --structures; remove {caseFolder} to add them",
                          flush=True)
                reportIO.write_csv(summaryPath, [*rows, *kept], columns=summaryColumns([*rows, *kept]))
                continue
            start = time.perf_counter()
            try:
                result = processCase(logic, reportIO, caseId, inputPath, caseFolder, args)
            except Exception as error:  # one case never stops the others; the error goes into the summary
                seconds = time.perf_counter() - start
                rows.append(summary_row(caseId, inputPath, status="failed", error=error, seconds=seconds))
                print(f"{prefix} FAILED after {seconds:.1f} s: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc()
            else:
                seconds = time.perf_counter() - start
                rows.append(summary_row(caseId, inputPath, status="ok", values=summaryValues(result["report"]),
                                        seconds=seconds))
                print(f"{prefix} ok in {seconds:.1f} s ({len(result['warnings'])} warning(s))", flush=True)
            # after every case, so that an interrupted run still has its summary
            reportIO.write_csv(summaryPath, [*rows, *kept], columns=summaryColumns([*rows, *kept]))

    failed = [row["case_id"] for row in rows if row["status"] == "failed"]
    done = sum(row["status"] == "ok" for row in rows)
    print(f"CardiacAI batch: {done} done, {len(rows) - done - len(failed)} skipped, {len(failed)} failed; "
          f"summary in {summaryPath}", flush=True)
    return exit_status(rows)


if __name__ == "__main__":  # Slicer runs --python-script files in its __main__ namespace
    import slicer

    try:
        status = main(sys.argv[1:])
    except Exception:
        traceback.print_exc()
        status = EXIT_UNEXPECTED
    slicer.util.exit(status)
