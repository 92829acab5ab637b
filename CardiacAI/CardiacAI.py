"""CardiacAI: cardiac MRI AI in 3D Slicer (Module, Widget, Logic and Test, as in Slicer's scripted module template).

This file only moves data between Slicer and the ``cardiac_ai`` backend: the Logic writes nodes to files, runs
``PythonSlicer -m cardiac_ai <command> ... --progress-lines`` in a child process (so a crash or a long computation
never takes Slicer down, and Cancel can stop it) and loads the results back as nodes. It computes nothing itself.

From Slicer's Python console::

    logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
    result = logic.segmentCine(getNode("cine"))  # a 3D short-axis frame
    result["volumes_ml"], result["lv_mass_g"], result["warnings"]
    function = logic.computeFunction(getNode("ED"), getNode("ES"))
    function["function"]["lv_ef_percent"]

Nothing from ``cardiac_ai`` or PyTorch is imported when Slicer starts: the backend's own dependencies may not be
installed yet, and importing them must not break the module list. They are checked and installed when the user
presses Apply (PyTorch through the PyTorch extension, the rest with ``slicer.util.pip_install``).
"""

import logging
import os
import shutil
import sys
from typing import Annotated, Callable, Optional

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403 - the template's way to get the four base classes
from slicer.util import VTKObservationMixin

#: What Apply does. The keys match ``cardiacai`` command names where one exists.
TASKS = ("import-labels", "segment-cine", "function", "map", "fibrosis", "cam", "qc")
TASK_TITLES = {
    "import-labels": "Label map import",
    "segment-cine": "Cine segmentation",
    "function": "Cardiac function (ED/ES)",
    "map": "T1/T2 mapping",
    "fibrosis": "LGE fibrosis",
    "cam": "CAM explanation",
    "qc": "Quality control",
}
#: Tasks this version can run; the others raise NotImplementedError naming the capability.
AVAILABLE_TASKS = ("import-labels", "segment-cine", "function")
#: Tasks whose backend runs a network, so PyTorch and MONAI must be installed first.
TORCH_TASKS = ("segment-cine", "function", "map", "fibrosis", "cam", "qc")
DEVICES = ("auto", "cpu", "cuda")
#: ``cardiacai segment-cine --mode``: region-specific networks per slice, or one network for every slice.
CINE_MODES = ("region-aware", "baseline")
MAP_KINDS = ("T1", "T2")

MINIMUM_TORCH_VERSION = "2.2"
#: (import name, pip requirement) of the backend's dependencies that Slicer does not bundle. numpy, SimpleITK,
#: pydicom, pillow and requests come with Slicer; torch comes from the PyTorch extension.
BASE_REQUIREMENTS = (
    ("scipy", "scipy>=1.10"),
    ("skimage", "scikit-image>=0.22"),
    ("pydicom", "pydicom>=2.4"),
    ("highdicom", "highdicom>=0.22"),
    ("slicerio", "slicerio>=1.1"),
    ("nrrd", "pynrrd>=1.0"),
    ("cv2", "opencv-python-headless>=4.8"),
    ("tqdm", "tqdm>=4.60"),
    ("PIL", "pillow>=9"),
)
#: Installed after PyTorch. MONAI goes in with --no-deps: its only hard dependencies are numpy and torch, which are
#: present, and letting pip resolve them could replace the PyTorch build that the PyTorch extension chose.
TORCH_REQUIREMENTS = (
    ("monai", "monai>=1.3 --no-deps"),
    ("safetensors", "safetensors>=0.4"),
)
#: Packages that Slicer or its extensions own; every pip install is constrained to their installed versions.
PROTECTED_PACKAGES = ("torch", "SimpleITK", "requests")


def moduleDirectory() -> str:
    """Folder of this file, which also holds the bundled ``cardiac_ai`` package (build tree or installed extension)."""
    return os.path.dirname(os.path.abspath(__file__))


def importBackend(name: str):
    """Import ``cardiac_ai.<name>`` from the package bundled next to this file, at first use (never at startup)."""
    import importlib

    directory = moduleDirectory()
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(f"cardiac_ai.{name}")


#
# CardiacAI
#


class CardiacAI(ScriptedLoadableModule):  # noqa: F405
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("Cardiac AI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacAI contributors"]
        self.parent.helpText = _("""
Cardiac MRI AI: cine segmentation, T1/T2 mapping, LGE fibrosis, class activation maps and segmentation quality
control, computed by the <code>cardiac_ai</code> Python package in a separate process.
This version segments short-axis cine volumes (RV blood pool, LV myocardium, LV blood pool) with volumes, LV mass
and per-slice regions, computes ventricular function (EDV, ESV, SV, EF, LV mass) from an ED and an ES volume, and
imports ACDC-style label maps (0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool, 4 scar,
5 microvascular obstruction) as named, coloured segments with standard terminology; the other capabilities report
that they are not available yet. Cine segmentation needs the trained cine models (bundled, or in a models folder).
The same computations run without Slicer with the <code>cardiacai</code> command.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's scripted module template (Jean-Christophe Fillion-Robin, Kitware Inc.; Andras Lasso, PerkLab;
Steve Pieper, Isomics, Inc.) and on the patterns of the SlicerTotalSegmentator and SlicerMONAIAuto3DSeg extensions.
""")
        # Load the CardiacAI terminology once Slicer has loaded every module (the Terminologies module included), as
        # SlicerTotalSegmentator does. Slicer emits startupCompleted() with and without the main window.
        slicer.app.connect("startupCompleted()", self.loadTerminology)

    def loadTerminology(self) -> None:
        """Load ``Resources/CardiacAI.term.json`` (context "CardiacAI") into Slicer's terminologies.

        It lists CardiacAI's segment categories and types with their SNOMED-CT codes, and the private code
        (designator "CardiacAI") of microvascular obstruction, so that the terminology selector resolves every
        CardiacAI segment. Reads a JSON file only; the backend is not imported.
        """
        terminologiesModule = getattr(slicer.modules, "terminologies", None)
        if terminologiesModule is None:  # e.g. Slicer started with --disable-modules
            logging.warning("CardiacAI: the Terminologies module is not loaded; CardiacAI terminology not loaded.")
            return
        path = os.path.join(os.path.dirname(self.parent.path), "Resources", "CardiacAI.term.json")
        self.terminologyName = terminologiesModule.logic().LoadTerminologyFromFile(path)
        if not self.terminologyName:
            logging.warning(f"CardiacAI: Slicer could not load the terminology file {path}.")


#
# CardiacAIParameterNode
#


@parameterNodeWrapper
class CardiacAIParameterNode:
    """
    The parameters of the module, saved with the scene.

    task - what Apply does, one of TASKS; the panel section of the same name holds its options.
    device - "auto" (CUDA when available), "cpu" or "cuda"; passed to ``cardiacai --device``.
    inputVolume - the image to process, or the label map for "import-labels".
    outputSegmentation - receives the result; its segments are replaced. A new node is made when empty.
    cineMode - cine segmentation and function: "region-aware" or "baseline" (``cardiacai --mode``).
    edVolume, esVolume - cardiac function: the end-diastolic and end-systolic short-axis volumes.
    cineVolumesTable, cineSlicesTable - cine segmentation results (made on first run, then refilled).
    edSegmentation, esSegmentation, functionTable - cardiac function results (made on first run, then refilled).
    mapKind - T1/T2 mapping: "T1" (MOLLI) or "T2".
    inversionTimesMs - T1/T2 mapping: inversion or echo times in ms, comma-separated; empty reads them from DICOM.
    fibrosisSdThreshold - LGE fibrosis: scar is brighter than remote myocardium by this many standard deviations.
    camTargetLabel - CAM explanation: label code whose evidence the map shows (2 = LV myocardium).
    qcSegmentation - Quality control: the segmentation whose quality is predicted.
    """

    task: Annotated[str, Choice(TASKS)] = "import-labels"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    mapKind: Annotated[str, Choice(MAP_KINDS)] = "T1"
    inversionTimesMs: str = ""
    fibrosisSdThreshold: Annotated[float, WithinRange(1.0, 10.0)] = 5.0
    camTargetLabel: Annotated[int, WithinRange(1, 5)] = 2
    qcSegmentation: vtkMRMLSegmentationNode
    cineMode: Annotated[str, Choice(CINE_MODES)] = "region-aware"
    edVolume: vtkMRMLScalarVolumeNode
    esVolume: vtkMRMLScalarVolumeNode
    cineVolumesTable: vtkMRMLTableNode
    cineSlicesTable: vtkMRMLTableNode
    edSegmentation: vtkMRMLSegmentationNode
    esSegmentation: vtkMRMLSegmentationNode
    functionTable: vtkMRMLTableNode


#
# CardiacAIWidget
#


class CardiacAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shownTask = None
        self._running = False
        self._cancelRequested = False

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. The .ui file connects the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal to each node selector's "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Logic implements all computations that should be possible to run in batch mode, without a GUI.
        self.logic = CardiacAILogic()
        self.logic.logCallback = self._onLog

        self._sections = {
            "import-labels": self.ui.labelImportCollapsibleButton,
            "segment-cine": self.ui.cineCollapsibleButton,
            "function": self.ui.cineCollapsibleButton,
            "map": self.ui.mappingCollapsibleButton,
            "fibrosis": self.ui.lgeCollapsibleButton,
            "cam": self.ui.camCollapsibleButton,
            "qc": self.ui.qcCollapsibleButton,
        }

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = 0

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._cancelRequested = True
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self._cancelRequested = True
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[CardiacAIParameterNode]) -> None:
        """Set and observe the parameter node; the .ui widgets bind to it by their SlicerParameterName property."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._shownTask = None
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Open the section of the chosen task (only when the task changes) and update the Apply button."""
        if not self._parameterNode:
            self.ui.applyButton.enabled = False
            return
        task = self._parameterNode.task
        if task != self._shownTask:
            shown = self._sections[task]
            for section in self._sections.values():  # one section may serve two tasks (cine and function)
                section.collapsed = section is not shown
            self._shownTask = task
        inputVolume = self._parameterNode.inputVolume
        if inputVolume:
            self.ui.outputSegmentationSelector.baseName = inputVolume.GetName() + " segmentation"
        if self._running:
            return
        if task == "function" and not (self._parameterNode.edVolume and self._parameterNode.esVolume):
            self.ui.applyButton.toolTip = _("Select the ED and ES volumes in the Cine segmentation section")
            self.ui.applyButton.enabled = False
        elif task != "function" and not inputVolume:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Run {task}").format(task=TASK_TITLES[task])
            self.ui.applyButton.enabled = True

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.enabled = not running
        self.ui.inputsCollapsibleButton.enabled = not running
        if running:
            self.ui.progressBar.value = 0
        else:
            self._onParameterNodeModified()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def _onLog(self, text: str) -> None:
        logging.info(text)

    def _shouldCancel(self) -> bool:
        # Called by the Logic every ~0.1 s while the backend runs: keeps the GUI responsive, lets Cancel be clicked.
        slicer.app.processEvents()
        return self._cancelRequested

    def onCancelButton(self) -> None:
        """Stop the running backend process (and every process it started)."""
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling...")

    def onApplyButton(self) -> None:
        """Run the chosen task when the user clicks "Apply"."""
        if self._running:
            return
        self._cancelRequested = False
        self.ui.statusLabel.text = ""
        self._setRunning(True)
        result = None
        try:
            with slicer.util.tryWithErrorDisplay(_("CardiacAI could not complete the task."), waitCursor=True):
                Cancelled = importBackend("errors").Cancelled
                try:
                    result = self.logic.process(
                        self._parameterNode,
                        progressCallback=self._onProgress,
                        shouldCancel=self._shouldCancel,
                    )
                except Cancelled:
                    self.ui.statusLabel.text = _("Cancelled.")
            if result is not None:  # shown after the wait cursor is gone
                self._showResult(result)
        finally:
            self._setRunning(False)

    def _showResult(self, result: dict) -> None:
        """Show the result's table in the panel, and its warnings in a dialog (the Logic only returns them)."""
        tableNode = result.get("functionTableNode") or result.get("volumesTableNode")
        if tableNode:
            self.ui.cineResultsTableView.setMRMLTableNode(tableNode)
        warnings = result.get("warnings") or []
        if not warnings:
            self.ui.statusLabel.text = _("Done.")
        else:
            self.ui.statusLabel.text = _("Done, with {count} warning(s).").format(count=len(warnings))
            slicer.util.warningDisplay(
                _("CardiacAI finished, but check the result:") + "\n\n" + "\n\n".join(warnings),
                windowTitle=_("CardiacAI warning"),
            )


#
# CardiacAILogic
#


class CardiacAILogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """This class should implement all the actual
    computation done by your module.  The interface
    should be such that other python code can import
    this class and make use of the functionality without
    requiring an instance of the Widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Everything here works headless (``Slicer --no-main-window --python-script ...``): methods raise, they never
    show dialogs, except the PyTorch installer's own confirmation.
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405
        #: Called with each line the backend writes (besides progress) and each step of the Logic.
        self.logCallback: Optional[Callable[[str], None]] = None
        #: Keep the temporary input/output files of each run (for debugging), instead of deleting them.
        self.keepTemporaryFiles = False

    def getParameterNode(self) -> CardiacAIParameterNode:
        return CardiacAIParameterNode(super().getParameterNode())

    def log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    # -- dependencies -------------------------------------------------------------------------------------------

    def setupPythonRequirements(self, requireTorch: bool = True) -> None:
        """Install what the backend needs that is missing: PyTorch (through the PyTorch extension) and pip packages.

        Call it before running the backend, never at module import. Packages that are already importable are left
        alone; torch, SimpleITK and requests are never replaced (each pip install is constrained to their
        installed versions).

        :param requireTorch: also ensure PyTorch and MONAI (for tasks that run a network).
        :raises RuntimeError: if the PyTorch extension is missing or the user declined the PyTorch installation.
        :raises ValueError: if the installed PyTorch is older than MINIMUM_TORCH_VERSION.
        """
        if requireTorch:
            self.ensurePyTorch()
        requirements = BASE_REQUIREMENTS + (TORCH_REQUIREMENTS if requireTorch else ())
        missing = [requirement for importName, requirement in requirements if not self._importable(importName)]
        if not missing:
            return
        constraints = self._writeProtectedPackageConstraints()
        try:
            for requirement in missing:
                self.log(f"Installing Python package {requirement} ...")
                slicer.util.pip_install(["-c", constraints] + requirement.split())
        finally:
            os.remove(constraints)
        importBackend("errors")  # fails here, not in the middle of a run, if the backend still cannot be imported

    def ensurePyTorch(self) -> None:
        """Make sure PyTorch >= MINIMUM_TORCH_VERSION is installed, installing it with the PyTorch extension."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError as e:
            raise RuntimeError(
                "CardiacAI needs the PyTorch extension to install PyTorch. Install 'PyTorch' from the Extensions "
                "Manager, restart Slicer and try again."
            ) from e
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            self.log("PyTorch is required. Installing it (this may take several minutes)...")
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
            if torch is None:
                raise RuntimeError(
                    "PyTorch was not installed, and CardiacAI's networks need it. Install it in the 'PyTorch Utils' "
                    "module, then press Apply again."
                )
            return
        from packaging import version

        installed = torchLogic.torch.__version__
        if version.parse(installed) < version.parse(MINIMUM_TORCH_VERSION):
            raise ValueError(
                f"PyTorch {installed} is too old for CardiacAI, which needs >= {MINIMUM_TORCH_VERSION}. In the "
                f"'PyTorch Utils' module, reinstall PyTorch with the version requirement '>={MINIMUM_TORCH_VERSION}'."
            )

    @staticmethod
    def _importable(importName: str) -> bool:
        import importlib.util

        return importlib.util.find_spec(importName) is not None

    @staticmethod
    def _writeProtectedPackageConstraints() -> str:
        """A pip constraints file pinning the installed versions of PROTECTED_PACKAGES; returns its path."""
        import importlib.metadata
        import tempfile

        pins = []
        for name in PROTECTED_PACKAGES:
            try:
                pins.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                pass
        handle, path = tempfile.mkstemp(prefix="CardiacAI-constraints-", suffix=".txt")
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(pins) + "\n")
        return path

    # -- running the backend --------------------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Path of PythonSlicer, the launcher that runs Python in Slicer's environment."""
        pythonSlicer = shutil.which("PythonSlicer")
        if not pythonSlicer:
            raise RuntimeError("PythonSlicer was not found on the PATH; CardiacAI runs its backend with it.")
        return pythonSlicer

    def runCommand(
        self,
        subcommand: str,
        positional=(),
        options: Optional[dict] = None,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
    ):
        """Run ``cardiacai <subcommand> <positional...> <options...> --progress-lines`` and wait for it.

        The child is ``PythonSlicer -m cardiac_ai`` started in this module's folder, so it imports the bundled
        ``cardiac_ai`` package, in Slicer's startup environment (as slicer.util.launchConsoleProcess does).
        Output lines go to :meth:`log`; progress lines to ``progressCallback(fraction, message)``.

        :param subcommand: a ``cardiacai`` command, e.g. "demo" or "convert".
        :param positional: positional arguments (paths are converted to str).
        :param options: ``{"out": path, "overwrite": True}`` becomes ``--out path --overwrite``. Without a
            ``models_dir``, the models folder of the setting "CardiacAI/ModelsFolder" is passed when it exists.
        :param shouldCancel: polled about every 0.1 s; returning True stops the child and its children.
        :return: cardiac_ai.subprocess_runner.CompletedRun (returncode, output_lines, error_line).
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed; the message is its one-line error.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True.
        """
        runner = importBackend("subprocess_runner")
        options = dict(options or {})
        if options.get("models_dir") is None:
            # Models registered by the CardiacAITraining module (qt.QSettings "CardiacAI/ModelsFolder").
            import qt

            userModelsFolder = str(qt.QSettings().value("CardiacAI/ModelsFolder", "") or "")
            if userModelsFolder and os.path.isdir(userModelsFolder):
                options["models_dir"] = userModelsFolder
        command = runner.build_command(subcommand, positional, options, python_executable=self.pythonExecutable())
        self.log("Running: " + " ".join(command))
        return runner.run_with_progress(
            command,
            on_progress=progressCallback,
            on_output=self.log,
            should_cancel=shouldCancel,
            cwd=moduleDirectory(),
            env=slicer.util.startupEnvironment(),
        )

    # -- nodes <-> files ------------------------------------------------------------------------------------------

    def volumeToFile(self, volumeNode, path: str) -> str:
        """Write a scalar or label map volume node to ``path`` (its extension picks the format; use .nrrd).

        The file holds the voxels and the IJK-to-RAS geometry of the node; parent transforms are not applied.

        :raises ValueError: if the node has no image data.
        :raises RuntimeError: if Slicer cannot write the file.
        """
        if not volumeNode or not volumeNode.GetImageData():
            raise ValueError(f"Volume node {volumeNode.GetName() if volumeNode else None!r} has no image data to save.")
        if not slicer.util.saveNode(volumeNode, path, {"useCompression": 1}):
            raise RuntimeError(f"Slicer could not write {volumeNode.GetName()!r} to {path}.")
        return path

    def loadSegmentation(self, segNrrdPath: str, referenceVolumeNode=None, outputSegmentationNode=None):
        """Load a ``.seg.nrrd`` written by the backend.

        :param segNrrdPath: the file; segment names, colours and terminology come from it.
        :param referenceVolumeNode: volume whose geometry the segmentation is shown on, and whose place in the
            subject hierarchy and parent transform the segmentation takes.
        :param outputSegmentationNode: if given, its segments are replaced by the loaded ones and it is returned;
            otherwise a new segmentation node is returned.
        :raises RuntimeError: if the file cannot be loaded as a segmentation.
        """
        if not os.path.isfile(segNrrdPath):
            raise RuntimeError(f"The backend did not write {segNrrdPath}; see the log for its output.")
        loadedNode = slicer.util.loadSegmentation(segNrrdPath)
        if not loadedNode:
            raise RuntimeError(f"Slicer could not load {segNrrdPath} as a segmentation.")
        segmentationNode = loadedNode
        if outputSegmentationNode is not None and outputSegmentationNode is not loadedNode:
            target = outputSegmentationNode.GetSegmentation()
            target.RemoveAllSegments()
            source = loadedNode.GetSegmentation()
            for segmentId in source.GetSegmentIDs():
                target.CopySegmentFromSegmentation(source, segmentId)
            slicer.mrmlScene.RemoveNode(loadedNode)
            segmentationNode = outputSegmentationNode
        segmentationNode.CreateDefaultDisplayNodes()
        if referenceVolumeNode is not None:
            segmentationNode.SetNodeReferenceID(
                segmentationNode.GetReferenceImageGeometryReferenceRole(), referenceVolumeNode.GetID()
            )
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
            self._placeNextTo(segmentationNode, referenceVolumeNode)
        return segmentationNode

    def fillTable(self, tableNode, rows, name: str = "CardiacAI results", referenceNode=None):
        """Replace the content of a table node with ``rows`` (dicts with the column titles as keys, in order).

        Integer columns become vtkIntArray, numeric ones vtkDoubleArray (a missing value is NaN), the others
        vtkStringArray (see ``cardiac_ai.slicer_results.table_columns``). The table is locked against editing.

        :param tableNode: the table to refill; a new vtkMRMLTableNode named ``name`` is created if None.
        :param referenceNode: if given, the table is placed next to it in the subject hierarchy.
        :return: the table node.
        """
        columns = importBackend("slicer_results").table_columns(rows)
        if tableNode is None:
            tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
        arrayClasses = {"int": vtk.vtkIntArray, "float": vtk.vtkDoubleArray, "str": vtk.vtkStringArray}
        wasModifying = tableNode.StartModify()
        try:
            tableNode.RemoveAllColumns()
            for columnName, kind, values in columns:
                array = arrayClasses[kind]()
                array.SetName(columnName)
                for value in values:
                    array.InsertNextValue(value)
                tableNode.AddColumn(array)
            tableNode.SetLocked(True)
        finally:
            tableNode.EndModify(wasModifying)
        if referenceNode is not None:
            self._placeNextTo(tableNode, referenceNode)
        return tableNode

    @staticmethod
    def _placeNextTo(node, referenceNode) -> None:
        """Put ``node`` in the subject hierarchy folder (study) that holds ``referenceNode``."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        parentItem = shNode.GetItemParent(shNode.GetItemByDataNode(referenceNode))
        shNode.SetItemParent(shNode.GetItemByDataNode(node), parentItem)

    # -- tasks ----------------------------------------------------------------------------------------------------

    def process(
        self,
        parameterNode: CardiacAIParameterNode,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
    ) -> dict:
        """Run ``parameterNode.task`` with the parameter node's inputs and store its output nodes there.

        "import-labels" and "segment-cine" read ``inputVolume`` and fill ``outputSegmentation`` (created if empty);
        "function" reads ``edVolume`` and ``esVolume``. Result tables and function segmentations are created on the
        first run and refilled on the next ones.

        :return: the dict of the task's Logic method (:meth:`importLabelmap` gives ``{"segmentationNode",
            "warnings": []}``); the caller shows ``result["warnings"]``.
        :raises ValueError: if an input is missing or the task is unknown.
        :raises NotImplementedError: if the task is not available in this version.
        """
        task = parameterNode.task
        if task not in TASKS:
            raise ValueError(f"Unknown CardiacAI task {task!r}; choose one of {', '.join(TASKS)}.")
        if task == "function":
            if not parameterNode.edVolume or not parameterNode.esVolume:
                raise ValueError(
                    "Cardiac function needs an end-diastolic (ED) and an end-systolic (ES) volume; select both in the "
                    "Cine segmentation section."
                )
        elif not parameterNode.inputVolume:
            raise ValueError(f"{TASK_TITLES[task]} needs an input volume; select one in the Inputs section.")
        if task not in AVAILABLE_TASKS:
            self.raiseNotYetAvailable(task)
        self.setupPythonRequirements(requireTorch=task in TORCH_TASKS)
        if task == "function":
            result = self.computeFunction(
                parameterNode.edVolume,
                parameterNode.esVolume,
                edSegmentationNode=parameterNode.edSegmentation,
                esSegmentationNode=parameterNode.esSegmentation,
                mode=parameterNode.cineMode,
                device=parameterNode.device,
                functionTableNode=parameterNode.functionTable,
                progressCallback=progressCallback,
                shouldCancel=shouldCancel,
            )
            parameterNode.edSegmentation = result["edSegmentationNode"]
            parameterNode.esSegmentation = result["esSegmentationNode"]
            parameterNode.functionTable = result["functionTableNode"]
            return result
        if not parameterNode.outputSegmentation:
            parameterNode.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", parameterNode.inputVolume.GetName() + " segmentation"
            )
        if task == "segment-cine":
            result = self.segmentCine(
                parameterNode.inputVolume,
                parameterNode.outputSegmentation,
                mode=parameterNode.cineMode,
                device=parameterNode.device,
                volumesTableNode=parameterNode.cineVolumesTable,
                slicesTableNode=parameterNode.cineSlicesTable,
                progressCallback=progressCallback,
                shouldCancel=shouldCancel,
            )
            parameterNode.cineVolumesTable = result["volumesTableNode"]
            parameterNode.cineSlicesTable = result["slicesTableNode"]
            return result
        segmentationNode = self.importLabelmap(
            parameterNode.inputVolume,
            parameterNode.outputSegmentation,
            progressCallback=progressCallback,
            shouldCancel=shouldCancel,
        )
        return {"segmentationNode": segmentationNode, "warnings": []}

    def importLabelmap(self, labelmapVolumeNode, outputSegmentationNode=None, progressCallback=None, shouldCancel=None):
        """Turn a label map with the CardiacAI codes into named, coloured segments (``cardiacai convert``).

        The label map is written to a temporary .nrrd, converted by the backend to ``.seg.nrrd`` (segment names,
        colours, SNOMED-CT terminology from its label table) and loaded back into ``outputSegmentationNode``.

        :param labelmapVolumeNode: label map or scalar volume holding only the codes 0..5.
        :param outputSegmentationNode: receives the segments (replaced); a new node is created if None.
        :return: the segmentation node.
        :raises cardiac_ai.subprocess_runner.CommandError: e.g. the volume holds values that are not label codes.
        """
        tempDir = slicer.util.tempDirectory()
        try:
            inputPath = self.volumeToFile(labelmapVolumeNode, os.path.join(tempDir, "labels.nrrd"))
            outputPath = os.path.join(tempDir, "segmentation.seg.nrrd")
            self.runCommand(
                "convert", [inputPath], {"out": outputPath},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            return self.loadSegmentation(outputPath, labelmapVolumeNode, outputSegmentationNode)
        finally:
            self._removeTemporaryDirectory(tempDir)

    def writePhantom(self, outputFolder: str, seed: int = 0, progressCallback=None, shouldCancel=None) -> dict:
        """Write the backend's synthetic phantom with ``cardiacai demo --out outputFolder``.

        :param outputFolder: must not exist yet or be empty.
        :return: paths by kind: "image" (image.nii.gz), "labels" (labels.nii.gz), "segmentation"
            (segmentation.seg.nrrd).
        """
        self.runCommand(
            "demo", [], {"out": outputFolder, "seed": seed},
            progressCallback=progressCallback, shouldCancel=shouldCancel,
        )
        return {
            "image": os.path.join(outputFolder, "image.nii.gz"),
            "labels": os.path.join(outputFolder, "labels.nii.gz"),
            "segmentation": os.path.join(outputFolder, "segmentation.seg.nrrd"),
        }

    def segmentCine(
        self,
        inputVolumeNode,
        outputSegmentationNode=None,
        mode: str = "region-aware",
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        volumesTableNode=None,
        slicesTableNode=None,
        modelsDir: Optional[str] = None,
    ) -> dict:
        """Segment RV blood pool, LV myocardium and LV blood pool in one short-axis cine frame (``cardiacai
        segment-cine``), and tabulate the volumes, LV mass and the cardiac region of each slice.

        The volume is written to a temporary .nrrd, segmented by the backend in a child process, and the result
        loaded back; the temporary folder is removed afterwards (unless ``keepTemporaryFiles``). Works headless: it
        never shows a dialog; show ``result["warnings"]`` yourself.

        Example, in Slicer's Python console::

            logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
            result = logic.segmentCine(getNode("cine"))
            result["volumes_ml"]  # {"rv_blood_pool": 151.2, "lv_myocardium": 98.0, "lv_blood_pool": 120.4}

        :param inputVolumeNode: a 3D short-axis stack (one frame of the cine; pick the frame of a sequence first).
        :param outputSegmentationNode: receives the segments (replaced); a new node "<input> segmentation" if None.
        :param mode: "region-aware" (networks per base/middle/apex slice) or "baseline" (one network).
        :param device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        :param volumesTableNode, slicesTableNode: tables to refill; new ones are created (next to the input) if None.
        :param modelsDir: extra folder of trained models, searched before the bundled ones.
        :return: dict with "segmentationNode", "volumesTableNode" (Structure, Measurement, Value, Unit: volume in ml
            of each structure, then LV mass in g), "slicesTableNode" (Slice, Region, Region probability, pixels per
            structure), "mode", "heart_found", "volumes_ml" (structure name -> ml), "lv_mass_g", "warnings" (list of
            str: the backend's warnings, and "No heart was found ..." when the segmentation is empty) and "report"
            (the whole report.json).
        :raises ValueError: if the mode is unknown or the node has no image data.
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed, e.g. the cine models are not
            installed or the volume is not a short-axis stack; the message says which.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True.
        """
        if mode not in CINE_MODES:
            raise ValueError(f"Unknown cine segmentation mode {mode!r}; choose one of {', '.join(CINE_MODES)}.")
        results = importBackend("slicer_results")
        tempDir = slicer.util.tempDirectory()
        try:
            inputPath = self.volumeToFile(inputVolumeNode, os.path.join(tempDir, "cine.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            self.runCommand(
                "segment-cine", [inputPath],
                {"out": outputDir, "mode": mode, "device": device, "models_dir": modelsDir},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            report = results.read_report(outputDir)
            tables = results.cine_tables_from_report(report)  # a malformed report fails here, before any node is made
            warnings = results.report_warnings(report)
            if outputSegmentationNode is None:
                outputSegmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", inputVolumeNode.GetName() + " segmentation"
                )
            segmentationNode = self.loadSegmentation(
                os.path.join(outputDir, "segmentation.seg.nrrd"), inputVolumeNode, outputSegmentationNode
            )
        finally:
            self._removeTemporaryDirectory(tempDir)
        name = inputVolumeNode.GetName()
        volumesTableNode = self.fillTable(volumesTableNode, tables["volumes"], f"{name} cine volumes", inputVolumeNode)
        slicesTableNode = self.fillTable(slicesTableNode, tables["slices"], f"{name} cine slices", inputVolumeNode)
        for warning in warnings:
            logging.warning(warning)
        return {
            "segmentationNode": segmentationNode,
            "volumesTableNode": volumesTableNode,
            "slicesTableNode": slicesTableNode,
            "mode": report.get("mode", mode),
            "heart_found": report.get("heart_found"),
            "volumes_ml": report["volumes_ml"],
            "lv_mass_g": report["lv_mass_g"],
            "warnings": warnings,
            "report": report,
        }

    def computeFunction(
        self,
        edVolumeNode,
        esVolumeNode,
        edSegmentationNode=None,
        esSegmentationNode=None,
        mode: str = "region-aware",
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        functionTableNode=None,
        modelsDir: Optional[str] = None,
    ) -> dict:
        """Ventricular function from an end-diastolic and an end-systolic frame (``cardiacai function``): both are
        segmented, then LV/RV EDV, ESV, SV (ml), EF (%) and LV mass at ED (g) are tabulated.

        Example, in Slicer's Python console::

            logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
            result = logic.computeFunction(getNode("ED"), getNode("ES"))
            result["function"]["lv_ef_percent"], result["warnings"]

        :param edVolumeNode, esVolumeNode: 3D short-axis stacks of the same patient at ED and ES (two nodes; for a
            cine sequence, make a volume of each frame first).
        :param edSegmentationNode, esSegmentationNode: receive the segments (replaced); new nodes if None.
        :param mode, device, modelsDir: as for :meth:`segmentCine`.
        :param functionTableNode: table to refill; a new one is created (next to the ED volume) if None.
        :return: dict with "edSegmentationNode", "esSegmentationNode", "functionTableNode" (Structure, Measurement,
            Value, Unit; an undefined ejection fraction is NaN), "function" (report.json's "function": lv_edv_ml,
            lv_esv_ml, lv_sv_ml, lv_ef_percent, rv_..., lv_mass_g, warnings; null where undefined), "warnings" and
            "report".
        :raises ValueError: if ED and ES are the same node, or the mode is unknown.
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed; the message says why.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True.
        """
        if mode not in CINE_MODES:
            raise ValueError(f"Unknown cine segmentation mode {mode!r}; choose one of {', '.join(CINE_MODES)}.")
        if edVolumeNode is esVolumeNode:
            raise ValueError(
                f"The ED and ES volumes are the same node ({edVolumeNode.GetName()!r}); select the end-diastolic and "
                "the end-systolic frames."
            )
        results = importBackend("slicer_results")
        tempDir = slicer.util.tempDirectory()
        try:
            edPath = self.volumeToFile(edVolumeNode, os.path.join(tempDir, "ed.nrrd"))
            esPath = self.volumeToFile(esVolumeNode, os.path.join(tempDir, "es.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            self.runCommand(
                "function", [edPath, esPath],
                {"out": outputDir, "mode": mode, "device": device, "models_dir": modelsDir},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            report = results.read_report(outputDir)
            rows = results.function_rows_from_report(report)
            warnings = results.report_warnings(report)
            segmentationNodes = {}
            for phase, volumeNode, segmentationNode in (
                ("ed", edVolumeNode, edSegmentationNode),
                ("es", esVolumeNode, esSegmentationNode),
            ):
                if segmentationNode is None:
                    segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                        "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} segmentation ({phase.upper()})"
                    )
                segmentationNodes[phase] = self.loadSegmentation(
                    os.path.join(outputDir, f"segmentation_{phase}.seg.nrrd"), volumeNode, segmentationNode
                )
        finally:
            self._removeTemporaryDirectory(tempDir)
        functionTableNode = self.fillTable(
            functionTableNode, rows, f"{edVolumeNode.GetName()} cardiac function", edVolumeNode
        )
        for warning in warnings:
            logging.warning(warning)
        return {
            "edSegmentationNode": segmentationNodes["ed"],
            "esSegmentationNode": segmentationNodes["es"],
            "functionTableNode": functionTableNode,
            "function": report["function"],
            "warnings": warnings,
            "report": report,
        }

    def registeredModels(self, modelsDir: Optional[str] = None) -> list:
        """The trained models the backend finds ("name version" strings), from ``cardiacai info --json``.

        Empty when PyTorch is not installed yet (the backend cannot load models without it).
        """
        run = self.runCommand("info", [], {"json": True, "models_dir": modelsDir})
        return importBackend("slicer_results").models_from_info_output(run.output_lines)

    def fitMapping(self, seriesVolumeNode, mapKind: str = "T1", inversionTimesMs=None):
        """T1 (MOLLI) / T2 map fitting and myocardial statistics; not available in this version."""
        self.raiseNotYetAvailable("map")

    def quantifyFibrosis(self, lgeVolumeNode, myocardiumSegmentationNode=None, sdThreshold: float = 5.0):
        """LGE scar and microvascular obstruction segmentation; not available in this version."""
        self.raiseNotYetAvailable("fibrosis")

    def explainCam(self, volumeNode, targetLabel: int = 2):
        """Class activation map for one label; not available in this version."""
        self.raiseNotYetAvailable("cam")

    def checkQuality(self, volumeNode, segmentationNode):
        """Predicted Dice of a segmentation without ground truth; not available in this version."""
        self.raiseNotYetAvailable("qc")

    @staticmethod
    def raiseNotYetAvailable(task: str) -> None:
        """Raise NotImplementedError naming the capability, so nothing pretends to have worked."""
        available = ", ".join(TASK_TITLES[t] for t in AVAILABLE_TASKS)
        raise NotImplementedError(
            f"{TASK_TITLES[task]} is not yet available in this version of CardiacAI. "
            f"Available now: {available}, and the phantom self-test."
        )

    def _removeTemporaryDirectory(self, path: str) -> None:
        if self.keepTemporaryFiles:
            self.log(f"Keeping temporary files in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


#
# CardiacAITest
#


class CardiacAITest(ScriptedLoadableModuleTest):  # noqa: F405
    """
    Self-test on the backend's synthetic phantom: runs the real backend in a child process, loads what it wrote.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_PhantomSegmentationLoadsWithCardiacSegmentNames()
        self.setUp()
        self.test_LabelmapImportMatchesBackendSegmentation()
        self.setUp()
        self.test_UnavailableCapabilitiesSayNotYetAvailable()
        self.setUp()
        self.test_CineSegmentationAndFunctionOnPhantomWhenModelsAreRegistered()

    def _phantom(self, logic):
        logic.setupPythonRequirements(requireTorch=False)
        outputFolder = os.path.join(slicer.util.tempDirectory(), "phantom")
        paths = logic.writePhantom(outputFolder)
        for path in paths.values():
            self.assertTrue(os.path.isfile(path), f"cardiacai demo did not write {path}")
        return paths

    @staticmethod
    def _segmentNames(segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        return {segmentation.GetSegment(segmentId).GetName() for segmentId in segmentation.GetSegmentIDs()}

    def test_PhantomSegmentationLoadsWithCardiacSegmentNames(self):
        self.delayDisplay("Writing the phantom with the backend")
        logic = CardiacAILogic()
        paths = self._phantom(logic)
        imageNode = slicer.util.loadVolume(paths["image"])
        segmentationNode = logic.loadSegmentation(paths["segmentation"], imageNode)

        LABELS = importBackend("labels").LABELS
        expected = {LABELS[code].display_name for code in (1, 2, 3)}
        names = self._segmentNames(segmentationNode)
        self.assertTrue(expected <= names, f"segments {sorted(names)} lack {sorted(expected - names)}")
        for segmentId in segmentationNode.GetSegmentation().GetSegmentIDs():
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, imageNode)
            self.assertGreater(int(voxels.sum()), 0, f"segment {segmentId} is empty")
        self.delayDisplay("Test passed")

    def test_LabelmapImportMatchesBackendSegmentation(self):
        self.delayDisplay("Importing the phantom label map through cardiacai convert")
        logic = CardiacAILogic()
        paths = self._phantom(logic)
        imageNode = slicer.util.loadVolume(paths["image"])
        labelmapNode = slicer.util.loadLabelVolume(paths["labels"])
        direct = logic.loadSegmentation(paths["segmentation"], imageNode)

        parameterNode = logic.getParameterNode()
        parameterNode.task = "import-labels"
        parameterNode.inputVolume = labelmapNode
        parameterNode.outputSegmentation = None
        progress = []
        logic.process(parameterNode, progressCallback=lambda fraction, message: progress.append(fraction))
        imported = parameterNode.outputSegmentation

        self.assertIsNotNone(imported)
        self.assertEqual(self._segmentNames(imported), self._segmentNames(direct))
        self.assertTrue(progress and progress[-1] == 1.0, f"progress went {progress}")

        def voxelCounts(segmentationNode):
            segmentation = segmentationNode.GetSegmentation()
            return {
                segmentation.GetSegment(segmentId).GetName(): int(
                    slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, imageNode).sum()
                )
                for segmentId in segmentation.GetSegmentIDs()
            }

        self.assertEqual(voxelCounts(imported), voxelCounts(direct))
        self.delayDisplay("Test passed")

    def test_UnavailableCapabilitiesSayNotYetAvailable(self):
        logic = CardiacAILogic()
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volumeNode
        for task in TASKS:
            if task in AVAILABLE_TASKS:
                continue
            parameterNode.task = task
            with self.assertRaises(NotImplementedError) as caught:
                logic.process(parameterNode)
            self.assertIn(TASK_TITLES[task], str(caught.exception))
            self.assertIn("not yet available", str(caught.exception))
        self.delayDisplay("Test passed")

    def test_CineSegmentationAndFunctionOnPhantomWhenModelsAreRegistered(self):
        """Runs only where the trained cine models are installed (bundled or in CARDIACAI_MODELS)."""
        logic = CardiacAILogic()
        logic.setupPythonRequirements(requireTorch=False)
        registered = {model.split()[0] for model in logic.registeredModels()}
        required = set(importBackend("regions.pipeline").CINE_MODEL_NAMES.values())
        if not required <= registered:
            self.delayDisplay(
                f"Skipped cine segmentation test: models {sorted(required - registered)} are not registered "
                "(install PyTorch and the trained cine models, or set CARDIACAI_MODELS)."
            )
            return
        logic.setupPythonRequirements(requireTorch=True)
        paths = self._phantom(logic)
        imageNode = slicer.util.loadVolume(paths["image"])

        self.delayDisplay("Segmenting the phantom with cardiacai segment-cine")
        progress = []
        result = logic.segmentCine(imageNode, progressCallback=lambda fraction, message: progress.append(fraction))
        LABELS = importBackend("labels").LABELS
        names = self._segmentNames(result["segmentationNode"])
        self.assertTrue({LABELS[code].display_name for code in (1, 2, 3)} <= names, f"segments: {sorted(names)}")
        self.assertTrue(result["heart_found"], f"no heart found in the phantom; warnings: {result['warnings']}")
        self.assertEqual(set(result["volumes_ml"]), {LABELS[code].name for code in (1, 2, 3)})
        self.assertTrue(all(volume > 0 for volume in result["volumes_ml"].values()), result["volumes_ml"])
        self.assertAlmostEqual(result["lv_mass_g"], 1.05 * result["volumes_ml"]["lv_myocardium"], places=3)
        volumesTable = result["volumesTableNode"]
        self.assertEqual(volumesTable.GetNumberOfRows(), 4)  # three volumes and the LV mass
        self.assertAlmostEqual(
            volumesTable.GetTable().GetValueByName(0, "Value").ToDouble(), result["volumes_ml"]["rv_blood_pool"], 3
        )
        slicesTable = result["slicesTableNode"]
        self.assertEqual(slicesTable.GetNumberOfRows(), imageNode.GetImageData().GetDimensions()[2])
        self.assertTrue(progress and progress[-1] == 1.0, f"progress went {progress}")

        self.delayDisplay("Same frame as ED and ES: cardiac function with stroke volume 0")
        with self.assertRaises(ValueError):
            logic.computeFunction(imageNode, imageNode)
        esNode = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, imageNode, "phantom ES")
        function = logic.computeFunction(imageNode, esNode)
        self.assertAlmostEqual(function["function"]["lv_sv_ml"], 0.0, places=3)
        self.assertAlmostEqual(function["function"]["lv_edv_ml"], result["volumes_ml"]["lv_blood_pool"], places=3)
        self.assertEqual(function["functionTableNode"].GetNumberOfRows(), 9)
        self.assertIsNot(function["edSegmentationNode"], function["esSegmentationNode"])
        self.delayDisplay("Test passed")
