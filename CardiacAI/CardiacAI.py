"""CardiacAI: cardiac MRI AI in 3D Slicer (Module, Widget, Logic and Test, as in Slicer's scripted module template).

This file only moves data between Slicer and the ``cardiac_ai`` backend: the Logic writes nodes to files, runs
``PythonSlicer -m cardiac_ai <command> ... --progress-lines`` in a child process (so a crash or a long computation
never takes Slicer down, and Cancel can stop it) and loads the results back as nodes. It computes nothing itself.

From Slicer's Python console::

    logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
    result = logic.segmentCine(getNode("cine"))  # a 3D short-axis frame
    result["volumes_ml"], result["lv_mass_g"], result["warnings"], result["qcTableNode"]
    function = logic.computeFunction(getNode("ED"), getNode("ES"))
    function["function"]["lv_ef_percent"]
    cine = logic.analyseCineSequence(getNode("cine sequence"))  # ED/ES from the LV volume curve of every frame
    cine["edFrame"], cine["esFrame"], cine["curveTableNode"], cine["function"]["lv_ef_percent"]
    logic.analyseMap(getNode("T1 map"), kind="T1")["bullseyeVolumeNode"]
    logic.fitMapping(getNode("MOLLI"), kind="T1", timesMs=[100, 180, 260, 1100, 1180, 2100, 3100, 4100])
    logic.computeEcv(getNode("T1 native"), getNode("T1 post"), haematocrit=0.42)["ecv"]
    logic.quantifyFibrosis(getNode("LGE"))["summaryTableNode"]
    logic.explainCam(getNode("cine"), explain="DCM")["camVolumeNode"]
    logic.checkQuality(getNode("cine"), getNode("cine segmentation"))["flaggedSlices"]

Nothing from ``cardiac_ai`` or PyTorch is imported when Slicer starts: the backend's own dependencies may not be
installed yet, and importing them must not break the module list. They are checked and installed when the user
presses Apply (PyTorch through the PyTorch extension, the rest with ``slicer.util.pip_install``).
"""

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Annotated, Callable, Optional, Sequence, Union

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403 - the template's way to get the four base classes
from slicer.util import VTKObservationMixin

#: What Apply does. The keys match ``cardiacai`` command names where one exists.
TASKS = ("import-labels", "segment-cine", "function", "map", "fit-map", "ecv", "fibrosis", "cam", "qc")
TASK_TITLES = {
    "import-labels": "Label map import",
    "segment-cine": "Cine segmentation",
    "function": "Cardiac function (ED/ES)",
    "map": "T1/T2 map analysis",
    "fit-map": "T1/T2 map fitting",
    "ecv": "Extracellular volume (ECV)",
    "fibrosis": "LGE fibrosis",
    "cam": "CAM explanation",
    "qc": "Quality control",
}
#: Tasks whose backend runs a network (or may use CUDA), so PyTorch and MONAI must be installed first.
TORCH_TASKS = ("segment-cine", "function", "map", "fit-map", "ecv", "fibrosis", "cam", "qc")
DEVICES = ("auto", "cpu", "cuda")
#: ``cardiacai segment-cine --mode``: region-specific networks per slice, or one network for every slice.
CINE_MODES = ("region-aware", "baseline")
#: T1 (MOLLI; ``map --kind t1``, ``fit-map --kind molli``) or T2 (``t2``, ``t2prep``); cardiac_ai.slicer_results.MAP_KINDS.
MAP_KINDS = ("T1", "T2")
#: Where QC's predicted Dice comes from; cardiac_ai.slicer_results.QC_PREDICTORS.
QC_PREDICTORS = ("auto", "search", "regressor", "combined")
#: ``cardiacai fibrosis --model`` (cardiac_ai.slicer_results.FIBROSIS_MODELS).
FIBROSIS_MODELS = ("weak", "weak_stack", "pixel")
#: ``cardiacai fibrosis --slice-order`` ("unknown": no option, transmurality per sector without AHA numbers).
FIBROSIS_SLICE_ORDERS = ("unknown", "base-first", "apex-first")
#: ``cardiacai cam --explain``: "predicted" explains the class predicted for the whole volume on every slice,
#: "slice" each slice's own prediction; the others are the ACDC diagnoses the bundled weak classifier was trained on
#: (the console accepts any class name of the installed classifier).
CAM_CLASSES = ("predicted", "slice", "NOR", "MINF", "DCM", "HCM", "RV")
#: ``cardiacai cam --method``; "default" uses the method named in the model card (cardiac_ai.slicer_results.CAM_METHODS).
CAM_METHODS = ("default", "model", "gradcam", "gradcampp")
#: ``cardiacai cam --cam-augment``: the views the panel's "average over flips and shifts" box averages the CAM over
#: (cardiac_ai.slicer_results.CAM_AUGMENTATIONS).
CAM_AUGMENTATIONS = ("hflip", "vflip", "shift")
#: ``cardiacai cam --lv-wall-mm``: the default band around the LV blood pool added to the weak U-Net's heart
#: (cardiac_ai.slicer_results.CAM_LV_WALL_MM).
CAM_LV_WALL_MM = 11.0
#: Colour of the CAM overlay (blue low, red high) and of the map contours (endocardium, epicardium).
CAM_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
CONTOUR_COLORS = {"endocardium": (0.95, 0.85, 0.2), "epicardium": (0.2, 0.8, 0.95)}

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
PROTECTED_PACKAGES = ("torch", "SimpleITK", "requests", "numpy")


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


def writeVolumeCopy(volumeNode, path: str) -> str:
    """Write ``volumeNode`` to ``path`` through a storage node of its own (as TotalSegmentator does): the node keeps
    its own file and its "modified" state, so saving the scene still saves it (``slicer.util.saveNode`` would point
    it at ``path``, a temporary file deleted after the run).

    :raises RuntimeError: if Slicer cannot write the file.
    """
    storageNode = slicer.mrmlScene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storageNode.SetFileName(path)
        storageNode.UseCompressionOff()  # a temporary file the backend reads at once: writing fast matters, size not
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(f"Slicer could not write {volumeNode.GetName()!r} to {path}.")
    finally:
        storageNode.UnRegister(None)
    return path


def forgetTemporaryFile(node) -> None:
    """Detach a node loaded from a run's temporary folder from that file (deleted after the run): without a storage
    node it counts as modified, so saving the scene writes it instead of pointing at a file that is gone."""
    storageNode = node.GetStorageNode()
    if storageNode is not None:
        slicer.mrmlScene.RemoveNode(storageNode)


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
<ul>
<li>Cine segmentation (RV blood pool, LV myocardium, LV blood pool) with volumes, LV mass, per-slice regions and
quality control; ventricular function (EDV, ESV, SV, EF, LV mass) from an ED and an ES volume.</li>
<li>T1/T2 mapping: myocardial statistics, AHA segments and contours of a map; map fitting from a raw MOLLI or
T2-prepared series; ECV from a native and a post-contrast T1 map.</li>
<li>LGE fibrosis: myocardium, scar and microvascular obstruction with scar volume, percentage and transmurality.</li>
<li>CAM explanation: where a diagnosis classifier looks, as a coloured overlay, with whole-heart labels.</li>
<li>Quality control: predicted Dice per slice of any segmentation, without ground truth, flagging slices to
review.</li>
<li>Label map import (0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool, 4 scar, 5 MVO, 6 heart).</li>
</ul>
Each capability needs its trained models (bundled, or in the models folder). Research software, not for clinical
use. The same computations run without Slicer with the <code>cardiacai</code> command.
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
    inputVolume - the image to process (cine frame, T1/T2 map, native T1 map for ECV, LGE stack), or the label map
        for "import-labels".
    outputSegmentation - receives the result; its segments are replaced. A new node is made when empty.
    cineMode - cine segmentation and function: "region-aware" or "baseline" (``cardiacai --mode``).
    cineQualityControl - cine segmentation and function: quality-check the segmentation (needs the QC models,
        bundled: qc_vae and qc_dice_regressor; uses qcThreshold).
    edVolume, esVolume - cardiac function: the end-diastolic and end-systolic short-axis volumes (set to the chosen
        frames after a run on a cine sequence).
    cineSequence - cardiac function: a cine sequence (one 3D short-axis frame per phase); when set, every frame is
        segmented and ED and ES are chosen from the LV volume curve instead of using edVolume and esVolume.
    cineEdFrame, cineEsFrame - cardiac function on a cine sequence: the 0-based ED and ES frames; -1 chooses them
        (ED: largest, ES: smallest LV blood-pool volume).
    cineCurveTable - cardiac function on a cine sequence: the volume curve (made on first run, then refilled).
    cineVolumesTable, cineSlicesTable - cine segmentation results (made on first run, then refilled).
    edSegmentation, esSegmentation, functionTable - cardiac function results (made on first run, then refilled).
    mapKind - T1/T2 mapping: "T1" (MOLLI) or "T2".
    mapContours - T1/T2 map analysis: show the fitted endo- and epicardial contours as closed curves.
    mappingSeries - T1/T2 map fitting: the raw series, a sequence (one volume per time) or a multi-frame volume.
    inversionTimesMs - T1/T2 map fitting: inversion or T2-preparation times in ms, comma-separated, in frame order;
        empty uses the sequence's index when it holds them.
    mapSigned - T1 map fitting: the frames are phase-sensitive (PSIR MOLLI), negative before the null point
        (``cardiacai fit-map --signed``).
    postContrastVolume - ECV: the post-contrast T1 map (the native one is inputVolume).
    haematocrit - ECV: measured haematocrit as a fraction; 0 uses the synthetic haematocrit.
    fibrosisModel - LGE fibrosis: scar model, one of FIBROSIS_MODELS.
    fibrosisSliceOrder - LGE fibrosis: where the base lies along the slices, one of FIBROSIS_SLICE_ORDERS.
    camExplain, camMethod, camPseudoLabel - CAM explanation: class to explain ("predicted": the volume's predicted
        class, "slice": each slice's own), CAM method, labels from the CAM pseudo-label even when the weak U-Net is
        installed.
    camAugment - CAM explanation: average each slice's CAM over flips and shifts (every view of CAM_AUGMENTATIONS).
    camStructures - CAM explanation: also split the heart into RV blood pool, LV myocardium and LV blood pool by image
        intensity (``cardiacai cam --structures``; a rough, label-free estimate).
    camLvWallMm - CAM explanation: the band around the LV blood pool added to the weak U-Net's heart, in mm
        (``--lv-wall-mm``; 0: none).
    camEndDiastoleVolume - CAM explanation: the end-diastolic frame of the input's cine series, when the input is
        another frame (end-systole): its weak heart, carried onto the input by image registration, is the heart
        (``--ed``); none: the input's own.
    camCrfIterationsOverride, camCrfIterations, camCrfSmoothnessOverride, camCrfSmoothnessWeight,
    camCrfSmoothnessWidth, camCrfAppearanceOverride, camCrfAppearanceWeight, camCrfAppearanceWidth,
    camCrfAppearanceGrey, camOtsuClassesOverride, camOtsuClasses, camScaleRangeOverride, camScaleRangeLow,
    camScaleRangeHigh, camMinFractionOverride, camMinFraction - CAM explanation with camPseudoLabel: each
        ...Override replaces the classifier's model card's pseudo-label setting by the values after it (pixels of
        the classifier's crop; cardiac_ai.slicer_results.cam_call); unticked (the default), the model card's is used.
    qcSegmentation - Quality control: the segmentation whose quality is predicted (on inputVolume).
    qcThreshold - Quality control (and the cine QC): flag slices whose predicted Dice is below this.
    qcPredictor - Quality control (every QC run): "auto" (the CNN Dice regressor when installed, weighed with the
        VAE's latent search where that runs anyway, else with the VAE encoder's Dice), "search" (the VAE's latent
        search), "regressor" or "combined".
    qcWriteSurrogate - Quality control: also load the surrogate segmentation QC compared against.
    """

    task: Annotated[str, Choice(TASKS)] = "import-labels"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    mapKind: Annotated[str, Choice(MAP_KINDS)] = "T1"
    mapContours: bool = True
    mappingSeries: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode]
    inversionTimesMs: str = ""
    mapSigned: bool = False
    postContrastVolume: vtkMRMLScalarVolumeNode
    haematocrit: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    fibrosisModel: Annotated[str, Choice(FIBROSIS_MODELS)] = "weak"
    fibrosisSliceOrder: Annotated[str, Choice(FIBROSIS_SLICE_ORDERS)] = "unknown"
    camExplain: Annotated[str, Choice(CAM_CLASSES)] = "predicted"
    camMethod: Annotated[str, Choice(CAM_METHODS)] = "default"
    camPseudoLabel: bool = False
    camAugment: bool = False
    camStructures: bool = False
    camLvWallMm: Annotated[float, WithinRange(0.0, 30.0)] = 11.0  # CAM_LV_WALL_MM
    camEndDiastoleVolume: vtkMRMLScalarVolumeNode
    camCrfIterationsOverride: bool = False
    camCrfIterations: Annotated[int, WithinRange(1, 100)] = 5
    camCrfSmoothnessOverride: bool = False
    camCrfSmoothnessWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    camCrfSmoothnessWidth: Annotated[float, WithinRange(0.1, 100.0)] = 3.0
    camCrfAppearanceOverride: bool = False
    camCrfAppearanceWeight: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    camCrfAppearanceWidth: Annotated[float, WithinRange(0.1, 1000.0)] = 80.0
    camCrfAppearanceGrey: Annotated[float, WithinRange(0.1, 255.0)] = 13.0
    camOtsuClassesOverride: bool = False
    camOtsuClasses: Annotated[int, WithinRange(0, 4)] = 3  # weak.pseudo_labels.MAX_OTSU_CLASSES
    camScaleRangeOverride: bool = False
    camScaleRangeLow: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    camScaleRangeHigh: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    camMinFractionOverride: bool = False
    camMinFraction: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    qcSegmentation: vtkMRMLSegmentationNode
    qcThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.8
    qcPredictor: Annotated[str, Choice(QC_PREDICTORS)] = "auto"
    qcWriteSurrogate: bool = False
    cineQualityControl: bool = True
    cineMode: Annotated[str, Choice(CINE_MODES)] = "region-aware"
    edVolume: vtkMRMLScalarVolumeNode
    esVolume: vtkMRMLScalarVolumeNode
    cineSequence: vtkMRMLSequenceNode
    cineEdFrame: Annotated[int, WithinRange(-1, 9999)] = -1
    cineEsFrame: Annotated[int, WithinRange(-1, 9999)] = -1
    cineCurveTable: vtkMRMLTableNode
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
            "fit-map": self.ui.mappingCollapsibleButton,
            "ecv": self.ui.mappingCollapsibleButton,
            "fibrosis": self.ui.lgeCollapsibleButton,
            "cam": self.ui.camCollapsibleButton,
            "qc": self.ui.qcCollapsibleButton,
        }
        # Where each task's main result table is shown (the other tables are in the Tables module).
        self._resultViews = {
            "segment-cine": self.ui.cineResultsTableView,
            "function": self.ui.cineResultsTableView,
            "map": self.ui.mappingResultsTableView,
            "fit-map": self.ui.mappingResultsTableView,
            "ecv": self.ui.mappingResultsTableView,
            "fibrosis": self.ui.lgeResultsTableView,
            "cam": self.ui.camResultsTableView,
            "qc": self.ui.qcResultsTableView,
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
        self.ui.mappingBullseyeLabel.visible = False  # until a map analysis draws one

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
        # nothing of the closed scene's patient may stay on screen
        self._showBullseye(None)
        self.ui.statusLabel.text = ""

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
        # Cardiac function reads either the cine sequence (with its optional ED/ES frames) or the two volumes.
        fromSequence = bool(self._parameterNode.cineSequence)
        self.ui.edVolumeSelector.enabled = not fromSequence
        self.ui.esVolumeSelector.enabled = not fromSequence
        self.ui.cineEdFrameSpinBox.enabled = fromSequence
        self.ui.cineEsFrameSpinBox.enabled = fromSequence
        # phase-sensitive frames exist for MOLLI only; T2 fitting refuses them
        self.ui.mapSignedCheckBox.enabled = self._parameterNode.mapKind == "T1"
        # CAM pseudo-label settings: only with labels from the pseudo-label; each value only when it replaces the
        # model card's.
        self.ui.camPseudoLabelSettingsGroupBox.enabled = self._parameterNode.camPseudoLabel
        # the end-diastolic frame and the LV wall act on the weak U-Net's heart, not on the CAM pseudo-label
        self.ui.camEndDiastoleVolumeSelector.enabled = not self._parameterNode.camPseudoLabel
        self.ui.camLvWallMmSpinBox.enabled = not self._parameterNode.camPseudoLabel
        self.ui.camLvWallMmLabel.enabled = not self._parameterNode.camPseudoLabel
        for override, spinBoxes in (
            ("camCrfIterationsOverride", (self.ui.camCrfIterationsSpinBox,)),
            ("camCrfSmoothnessOverride", (self.ui.camCrfSmoothnessWeightSpinBox, self.ui.camCrfSmoothnessWidthSpinBox)),
            ("camCrfAppearanceOverride", (self.ui.camCrfAppearanceWeightSpinBox, self.ui.camCrfAppearanceWidthSpinBox,
                                          self.ui.camCrfAppearanceGreySpinBox)),
            ("camOtsuClassesOverride", (self.ui.camOtsuClassesSpinBox,)),
            ("camScaleRangeOverride", (self.ui.camScaleRangeLowSpinBox, self.ui.camScaleRangeHighSpinBox)),
            ("camMinFractionOverride", (self.ui.camMinFractionSpinBox,)),
        ):
            for spinBox in spinBoxes:
                spinBox.enabled = getattr(self._parameterNode, override)
        if self._running:
            return
        missing = self.logic.missingInputs(self._parameterNode)
        if missing:
            self.ui.applyButton.toolTip = missing
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
        self.ui.statusLabel.text = text.splitlines()[0] if text else ""  # the Logic has logged it already

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

    def _showBullseye(self, path: Optional[str]) -> None:
        """Show the AHA bullseye PNG of a map analysis under the mapping results; hide the label without one."""
        import qt

        label = self.ui.mappingBullseyeLabel
        pixmap = qt.QPixmap(path) if path else None
        if pixmap is None or pixmap.isNull():
            label.clear()
            label.visible = False
            return
        label.setPixmap(pixmap.scaledToWidth(min(pixmap.width(), 320), qt.Qt.SmoothTransformation))
        label.visible = True

    def _showResult(self, result: dict) -> None:
        """Show the result's table in its section, images in the slice views, and warnings in a dialog (the Logic
        only returns them; flagged QC slices are among the warnings)."""
        view = self._resultViews.get(self._parameterNode.task) if self._parameterNode else None
        tableNode = result.get("mainTableNode")
        if view is not None and tableNode is not None:
            view.setMRMLTableNode(tableNode)
        if result.get("camVolumeNode") is not None:  # the CAM as a coloured overlay on the image
            slicer.util.setSliceViewerLayers(background=result["inputVolumeNode"],
                                             foreground=result["camVolumeNode"], foregroundOpacity=0.4)
        elif result.get("mapVolumeNode") is not None:
            slicer.util.setSliceViewerLayers(background=result["mapVolumeNode"], foreground=None)
        elif result.get("ecvVolumeNode") is not None:
            slicer.util.setSliceViewerLayers(background=result["inputVolumeNode"],
                                             foreground=result["ecvVolumeNode"], foregroundOpacity=0.5)
        if result.get("contoursNote"):
            logging.info(result["contoursNote"])
        if "bullseyePath" in result:  # a map analysis: show its bullseye (or hide the previous one)
            self._showBullseye(result["bullseyePath"])
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
        from importlib import metadata

        from packaging import version

        try:
            installed = metadata.version("torch")  # torchLogic.torch would import torch into Slicer just for this
        except metadata.PackageNotFoundError:  # a torch without package metadata (a build of one's own)
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
        writeVolumeCopy(volumeNode, path)
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
            # one deep copy keeps the segments' shared label layer (a copy per segment would duplicate it)
            outputSegmentationNode.GetSegmentation().DeepCopy(loadedNode.GetSegmentation())
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
        referenceItem = shNode.GetItemByDataNode(referenceNode)
        if not referenceItem:  # not in the subject hierarchy (e.g. some sequence nodes): leave node where it is
            return
        shNode.SetItemParent(shNode.GetItemByDataNode(node), shNode.GetItemParent(referenceItem))

    # -- tasks ----------------------------------------------------------------------------------------------------

    def missingInputs(self, parameterNode: CardiacAIParameterNode) -> str:
        """What the chosen task still needs before Apply can run ("" when nothing is missing)."""
        task = parameterNode.task
        if task == "function":
            if parameterNode.cineSequence:
                return ""
            if not (parameterNode.edVolume and parameterNode.esVolume):
                return _("Select the ED and ES volumes, or a cine sequence, in the Cine segmentation section")
            return ""
        if task == "fit-map":
            return "" if parameterNode.mappingSeries else _("Select the raw series in the T1/T2 mapping section")
        if not parameterNode.inputVolume:
            return _("Select an input volume")
        if task == "ecv" and not parameterNode.postContrastVolume:
            return _("Select the post-contrast T1 map in the T1/T2 mapping section")
        if task == "qc" and not parameterNode.qcSegmentation:
            return _("Select the segmentation to check in the Quality control section")
        if (task == "cam" and not parameterNode.camPseudoLabel and parameterNode.camEndDiastoleVolume
                and parameterNode.camEndDiastoleVolume == parameterNode.inputVolume):
            return _("The end-diastolic frame is the input volume itself: select the end-diastolic frame of the "
                     "same series, or none")
        return ""

    def process(
        self,
        parameterNode: CardiacAIParameterNode,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
    ) -> dict:
        """Run ``parameterNode.task`` with the parameter node's inputs and store its output nodes there.

        "import-labels", "segment-cine", "map", "ecv", "fibrosis" and "cam" read ``inputVolume`` and fill
        ``outputSegmentation`` (created if empty); "function" reads ``cineSequence`` when set (ED and ES chosen from
        its volume curve, or ``cineEdFrame`` / ``cineEsFrame``), else ``edVolume`` and ``esVolume``; "fit-map" reads
        ``mappingSeries``; "qc" checks ``qcSegmentation`` on ``inputVolume``. Cine result tables and function
        segmentations are created on the first run and refilled on the next ones; the other tasks make new tables.

        :return: the dict of the task's Logic method, with "mainTableNode" (the table the panel shows; None for
            "import-labels") and "warnings" (the caller shows them).
        :raises ValueError: if an input is missing or the task is unknown.
        """
        task = parameterNode.task
        if task not in TASKS:
            raise ValueError(f"Unknown CardiacAI task {task!r}; choose one of {', '.join(TASKS)}.")
        missing = self.missingInputs(parameterNode)
        if missing:
            raise ValueError(f"{TASK_TITLES[task]}: {missing}.")
        self.setupPythonRequirements(requireTorch=task in TORCH_TASKS)
        common = {"device": parameterNode.device, "progressCallback": progressCallback, "shouldCancel": shouldCancel}
        qcSettings = {"qcThreshold": parameterNode.qcThreshold, "qcPredictor": parameterNode.qcPredictor}
        qc = {"qc": parameterNode.cineQualityControl, **qcSettings}
        if task == "function":
            phaseOutputs = {"edSegmentationNode": parameterNode.edSegmentation,
                            "esSegmentationNode": parameterNode.esSegmentation,
                            "functionTableNode": parameterNode.functionTable}
            if parameterNode.cineSequence:
                result = self.analyseCineSequence(
                    parameterNode.cineSequence,
                    edFrame=parameterNode.cineEdFrame if parameterNode.cineEdFrame >= 0 else None,
                    esFrame=parameterNode.cineEsFrame if parameterNode.cineEsFrame >= 0 else None,
                    mode=parameterNode.cineMode, curveTableNode=parameterNode.cineCurveTable, **phaseOutputs, **qc,
                    **common,
                )
                parameterNode.cineCurveTable = result["curveTableNode"]
                parameterNode.edVolume = result["edVolumeNode"]  # the panel shows which frames were used
                parameterNode.esVolume = result["esVolumeNode"]
            else:
                result = self.computeFunction(parameterNode.edVolume, parameterNode.esVolume,
                                              mode=parameterNode.cineMode, **phaseOutputs, **qc, **common)
            parameterNode.edSegmentation = result["edSegmentationNode"]
            parameterNode.esSegmentation = result["esSegmentationNode"]
            parameterNode.functionTable = result["functionTableNode"]
            return {**result, "mainTableNode": result["functionTableNode"]}
        if task == "fit-map":
            result = self.fitMapping(
                parameterNode.mappingSeries, kind=parameterNode.mapKind,
                timesMs=importBackend("slicer_results").parse_times_ms(parameterNode.inversionTimesMs),
                signed=parameterNode.mapSigned and parameterNode.mapKind == "T1", **common,
            )
            return {**result, "mainTableNode": result["tableNode"]}
        if task == "qc":
            result = self.checkQuality(
                parameterNode.inputVolume, parameterNode.qcSegmentation, threshold=parameterNode.qcThreshold,
                writeSurrogate=parameterNode.qcWriteSurrogate, predictor=parameterNode.qcPredictor, **common,
            )
            return {**result, "mainTableNode": result["qcTableNode"]}
        if not parameterNode.outputSegmentation:
            parameterNode.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", parameterNode.inputVolume.GetName() + " segmentation"
            )
        volume, segmentation = parameterNode.inputVolume, parameterNode.outputSegmentation
        if task == "segment-cine":
            result = self.segmentCine(
                volume, segmentation, mode=parameterNode.cineMode, volumesTableNode=parameterNode.cineVolumesTable,
                slicesTableNode=parameterNode.cineSlicesTable, **qc, **common,
            )
            parameterNode.cineVolumesTable = result["volumesTableNode"]
            parameterNode.cineSlicesTable = result["slicesTableNode"]
            return {**result, "mainTableNode": result["volumesTableNode"]}
        if task == "map":
            result = self.analyseMap(volume, kind=parameterNode.mapKind, outputSegmentationNode=segmentation,
                                     contours=parameterNode.mapContours, **qcSettings, **common)
            return {**result, "mainTableNode": result["summaryTableNode"]}
        if task == "ecv":
            result = self.computeEcv(volume, parameterNode.postContrastVolume,
                                     haematocrit=parameterNode.haematocrit or None,
                                     outputSegmentationNode=segmentation, **common)
            return {**result, "mainTableNode": result["summaryTableNode"]}
        if task == "fibrosis":
            result = self.quantifyFibrosis(volume, model=parameterNode.fibrosisModel,
                                           sliceOrder=parameterNode.fibrosisSliceOrder,
                                           outputSegmentationNode=segmentation, **qcSettings, **common)
            return {**result, "mainTableNode": result["summaryTableNode"]}
        if task == "cam":
            result = self.explainCam(volume, explain=parameterNode.camExplain, method=parameterNode.camMethod,
                                     pseudoLabel=parameterNode.camPseudoLabel, outputSegmentationNode=segmentation,
                                     augment=CAM_AUGMENTATIONS if parameterNode.camAugment else None,
                                     structures=parameterNode.camStructures,
                                     lvWallMm=None if parameterNode.camPseudoLabel else parameterNode.camLvWallMm,
                                     endDiastoleVolumeNode=None if parameterNode.camPseudoLabel
                                     else parameterNode.camEndDiastoleVolume,
                                     **self.camPseudoLabelSettings(parameterNode), **common)
            return {**result, "mainTableNode": result["slicesTableNode"]}
        segmentationNode = self.importLabelmap(
            volume, segmentation, progressCallback=progressCallback, shouldCancel=shouldCancel,
        )
        return {"segmentationNode": segmentationNode, "warnings": [], "mainTableNode": None}

    @staticmethod
    def camPseudoLabelSettings(parameterNode: CardiacAIParameterNode) -> dict:
        """The pseudo-label settings of the CAM panel as ``explainCam`` keywords: the values whose override box is
        ticked, None for the others (the model card's); all None without ``camPseudoLabel`` (the settings are unused
        when the weak U-Net makes the labels)."""
        p = parameterNode
        on = p.camPseudoLabel
        return {
            "crfIterations": p.camCrfIterations if on and p.camCrfIterationsOverride else None,
            "crfSmoothness": ((p.camCrfSmoothnessWeight, p.camCrfSmoothnessWidth)
                              if on and p.camCrfSmoothnessOverride else None),
            "crfAppearance": ((p.camCrfAppearanceWeight, p.camCrfAppearanceWidth, p.camCrfAppearanceGrey)
                              if on and p.camCrfAppearanceOverride else None),
            "otsuClasses": p.camOtsuClasses if on and p.camOtsuClassesOverride else None,
            "scaleRange": (p.camScaleRangeLow, p.camScaleRangeHigh) if on and p.camScaleRangeOverride else None,
            "minFraction": p.camMinFraction if on and p.camMinFractionOverride else None,
        }

    def importLabelmap(self, labelmapVolumeNode, outputSegmentationNode=None, progressCallback=None, shouldCancel=None):
        """Turn a label map with the CardiacAI codes into named, coloured segments (``cardiacai convert``).

        The label map is written to a temporary .nrrd, converted by the backend to ``.seg.nrrd`` (segment names,
        colours, SNOMED-CT terminology from its label table) and loaded back into ``outputSegmentationNode``.

        :param labelmapVolumeNode: label map or scalar volume holding only the codes 0..5.
        :param outputSegmentationNode: receives the segments (replaced); a new node is created if None.
        :return: the segmentation node.
        :raises cardiac_ai.subprocess_runner.CommandError: e.g. the volume holds values that are not label codes.
        """
        with self._temporaryDirectory() as tempDir:
            inputPath = self.volumeToFile(labelmapVolumeNode, os.path.join(tempDir, "labels.nrrd"))
            outputPath = os.path.join(tempDir, "segmentation.seg.nrrd")
            self.runCommand(
                "convert", [inputPath], {"out": outputPath},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            return self.loadSegmentation(outputPath, labelmapVolumeNode, outputSegmentationNode)

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
        qc: bool = True,
        qcThreshold: float = 0.8,
        qcPredictor: str = "auto",
    ) -> dict:
        """Segment RV blood pool, LV myocardium and LV blood pool in one short-axis cine frame (``cardiacai
        segment-cine``), and tabulate the volumes, LV mass and the cardiac region of each slice.

        With ``qc`` (and the ``qc_vae`` model installed) the backend also predicts the Dice of every slice; the QC
        table is made and flagged slices are among the warnings. Without the model QC is skipped with a warning.

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
        :param qc, qcThreshold: quality-check the segmentation; flag slices whose predicted Dice is below qcThreshold.
        :param qcPredictor: where the predicted Dice comes from: "auto" (the CNN regressor when installed),
            "search" (the VAE's latent search: flags more of the poor slices, and more good ones) or "regressor".
        :return: dict with "segmentationNode", "volumesTableNode" (Structure, Measurement, Value, Unit: volume in ml
            of each structure, then LV mass in g), "slicesTableNode" (Slice, Region, Region probability, pixels per
            structure), "qcTableNode" (predicted Dice per slice, or None when QC did not run), "mode",
            "heart_found", "volumes_ml" (structure name -> ml), "lv_mass_g", "warnings" (list of str: the backend's
            warnings, "No heart was found ..." when the segmentation is empty, and the slices QC flagged) and
            "report" (the whole report.json).
        :raises ValueError: if the mode is unknown or the node has no image data.
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed, e.g. the cine models are not
            installed or the volume is not a short-axis stack; the message says which.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True.
        """
        if mode not in CINE_MODES:
            raise ValueError(f"Unknown cine segmentation mode {mode!r}; choose one of {', '.join(CINE_MODES)}.")
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            inputPath = self.volumeToFile(inputVolumeNode, os.path.join(tempDir, "cine.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            self.runCommand(
                "segment-cine", [inputPath],
                {"out": outputDir, "mode": mode, "device": device, "models_dir": modelsDir, "no_qc": not qc,
                 "qc_threshold": qcThreshold, "qc_predictor": qcPredictor},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            report = results.read_report(outputDir)
            tables = results.cine_tables_from_report(report)  # a malformed report fails here, before any node is made
            qcRows = {phase: results.qc_slice_rows(entry) for phase, entry in results.qc_entries(report).items()}
            warnings = results.report_warnings(report) + results.qc_warnings(report)
            if outputSegmentationNode is None:
                outputSegmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", inputVolumeNode.GetName() + " segmentation"
                )
            segmentationNode = self.loadSegmentation(
                os.path.join(outputDir, "segmentation.seg.nrrd"), inputVolumeNode, outputSegmentationNode
            )
        name = inputVolumeNode.GetName()
        volumesTableNode = self.fillTable(volumesTableNode, tables["volumes"], f"{name} cine volumes", inputVolumeNode)
        slicesTableNode = self.fillTable(slicesTableNode, tables["slices"], f"{name} cine slices", inputVolumeNode)
        qcTableNode = None
        if qcRows:
            qcTableNode = self.fillTable(None, qcRows[""], f"{name} cine QC", inputVolumeNode)
        for warning in warnings:
            logging.warning(warning)
        return {
            "segmentationNode": segmentationNode,
            "volumesTableNode": volumesTableNode,
            "slicesTableNode": slicesTableNode,
            "qcTableNode": qcTableNode,
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
        qc: bool = True,
        qcThreshold: float = 0.8,
        qcPredictor: str = "auto",
    ) -> dict:
        """Ventricular function from an end-diastolic and an end-systolic frame (``cardiacai function``): both are
        segmented, then LV/RV EDV, ESV, SV (ml), EF (%) and LV mass at ED (g) are tabulated. With ``qc`` both
        segmentations are quality-checked (one QC table per phase).

        Example, in Slicer's Python console::

            logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
            result = logic.computeFunction(getNode("ED"), getNode("ES"))
            result["function"]["lv_ef_percent"], result["warnings"]

        :param edVolumeNode, esVolumeNode: 3D short-axis stacks of the same patient at ED and ES (two nodes; for a
            cine sequence, make a volume of each frame first).
        :param edSegmentationNode, esSegmentationNode: receive the segments (replaced); new nodes if None.
        :param mode, device, modelsDir, qc, qcThreshold, qcPredictor: as for :meth:`segmentCine`.
        :param functionTableNode: table to refill; a new one is created (next to the ED volume) if None.
        :return: dict with "edSegmentationNode", "esSegmentationNode", "functionTableNode" (Structure, Measurement,
            Value, Unit; an undefined ejection fraction is NaN), "function" (report.json's "function": lv_edv_ml,
            lv_esv_ml, lv_sv_ml, lv_ef_percent, rv_..., lv_mass_g, warnings; null where undefined), "qcTableNodes"
            ({"ED": table, "ES": table} for the phases QC ran on), "warnings" and "report".
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
        with self._temporaryDirectory() as tempDir:
            edPath = self.volumeToFile(edVolumeNode, os.path.join(tempDir, "ed.nrrd"))
            esPath = self.volumeToFile(esVolumeNode, os.path.join(tempDir, "es.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            self.runCommand(
                "function", [edPath, esPath],
                {"out": outputDir, "mode": mode, "device": device, "models_dir": modelsDir, "no_qc": not qc,
                 "qc_threshold": qcThreshold, "qc_predictor": qcPredictor},
                progressCallback=progressCallback, shouldCancel=shouldCancel,
            )
            report = results.read_report(outputDir)
            rows = results.function_rows_from_report(report)
            qcRows = {phase: results.qc_slice_rows(entry) for phase, entry in results.qc_entries(report).items()}
            warnings = results.report_warnings(report) + results.qc_warnings(report)
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
        functionTableNode = self.fillTable(
            functionTableNode, rows, f"{edVolumeNode.GetName()} cardiac function", edVolumeNode
        )
        volumes = {"ED": edVolumeNode, "ES": esVolumeNode}
        qcTableNodes = {phase: self.fillTable(None, phaseRows, f"{volumes[phase].GetName()} QC ({phase})",
                                              volumes[phase])
                        for phase, phaseRows in qcRows.items()}
        for warning in warnings:
            logging.warning(warning)
        return {
            "edSegmentationNode": segmentationNodes["ed"],
            "esSegmentationNode": segmentationNodes["es"],
            "functionTableNode": functionTableNode,
            "qcTableNodes": qcTableNodes,
            "function": report["function"],
            "warnings": warnings,
            "report": report,
        }

    # -- cine sequences ------------------------------------------------------------------------------------------

    def cineSequenceFrames(self, sequenceNode) -> list:
        """The frames of a cine sequence, in sequence order: its data nodes, each a 3D scalar volume with voxels.

        The nodes live in the sequence's own scene (not in ``slicer.mrmlScene``); read them, do not select them.

        :raises ValueError: not a sequence node, fewer than 2 frames, or a frame that is not a one-component scalar
            volume (a label map, a colour or vector volume, a transform, a segmentation...).
        """
        if sequenceNode is None or not sequenceNode.IsA("vtkMRMLSequenceNode"):
            raise ValueError(
                f"{sequenceNode.GetName() if sequenceNode else None!r} is not a sequence node; choose a cine sequence "
                "(one 3D short-axis volume per frame)."
            )
        name = sequenceNode.GetName()
        frames = [sequenceNode.GetNthDataNode(k) for k in range(sequenceNode.GetNumberOfDataNodes())]
        if len(frames) < 2:
            raise ValueError(f"Sequence {name!r} has {len(frames)} frame(s); ED and ES need at least 2.")
        for frame, frameNode in enumerate(frames):
            kind = frameNode.GetClassName() if frameNode is not None else "missing node"
            isScalar = (frameNode is not None and frameNode.IsA("vtkMRMLScalarVolumeNode")
                        and not frameNode.IsA("vtkMRMLLabelMapVolumeNode"))
            imageData = frameNode.GetImageData() if isScalar else None
            if not isScalar or imageData is None or imageData.GetNumberOfScalarComponents() != 1:
                raise ValueError(
                    f"Frame {frame} of sequence {name!r} is a {kind}"
                    f"{'' if not isScalar else ' without one-component image data'}; a cine sequence holds scalar "
                    "volumes (one 3D short-axis stack per frame)."
                )
        return frames

    def volumeNodeFromFrame(self, frameNode, name: str, referenceNode=None):
        """A new scalar volume node in the scene holding a copy of a sequence frame's voxels and geometry (the
        sequence keeps its own), placed next to ``referenceNode`` in the subject hierarchy, not shown."""
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        volumeNode.CopyOrientation(frameNode)  # origin, spacing and directions: the IJK-to-RAS matrix
        imageData = vtk.vtkImageData()
        imageData.DeepCopy(frameNode.GetImageData())
        volumeNode.SetAndObserveImageData(imageData)
        volumeNode.CreateDefaultDisplayNodes()
        if referenceNode is not None:
            self._placeNextTo(volumeNode, referenceNode)
        return volumeNode

    def writeFrameFiles(self, frameNodes, folder: str) -> list:
        """Write each frame to ``folder/frame_0000.nrrd``, ... (``cardiac_ai.cine_sequence.frame_case_id``) with
        :meth:`volumeToFile`, through one scratch node in the scene that shares the frame's voxels (a frame node
        belongs to the sequence's scene, which Slicer's writers do not see). Returns the paths in frame order."""
        cine = importBackend("cine_sequence")
        os.makedirs(folder, exist_ok=True)
        scratchNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CardiacAI cine frame")
        paths = []
        try:
            for frame, frameNode in enumerate(frameNodes):
                scratchNode.CopyOrientation(frameNode)
                scratchNode.SetAndObserveImageData(frameNode.GetImageData())  # shared, not copied: only written
                path = os.path.join(folder, cine.frame_case_id(frame) + cine.FRAME_SUFFIX)
                paths.append(self.volumeToFile(scratchNode, path))
        finally:
            storageNode = scratchNode.GetStorageNode()
            if storageNode is not None:
                slicer.mrmlScene.RemoveNode(storageNode)
            slicer.mrmlScene.RemoveNode(scratchNode)
        return paths

    @staticmethod
    def _progressRange(progressCallback, start: float, stop: float):
        """``progressCallback`` for one step of a longer run: the step's 0..1 becomes start..stop."""
        if progressCallback is None:
            return None
        return lambda fraction, message: progressCallback(start + (stop - start) * fraction, message)

    def analyseCineSequence(
        self,
        sequenceNode,
        edFrame: Optional[int] = None,
        esFrame: Optional[int] = None,
        mode: str = "region-aware",
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
        qc: bool = True,
        qcThreshold: float = 0.8,
        qcPredictor: str = "auto",
        curveTableNode=None,
        edSegmentationNode=None,
        esSegmentationNode=None,
        functionTableNode=None,
    ) -> dict:
        """Ventricular function of a cine sequence: every frame is segmented, ED and ES are chosen from the LV
        volume curve, then :meth:`computeFunction` runs on those two frames.

        All frames are written to a temporary folder and segmented by one ``cardiacai batch --task segment-cine``
        process (the models load once; no QC on this pass). Its ``summary.csv`` gives the curve table; ED is the
        frame with the largest LV blood-pool volume and ES the one with the smallest, the first frame on a tie,
        skipping frames that failed or where no heart was found
        (``cardiac_ai.cine_sequence.choose_ed_es_frames``). ``edFrame`` / ``esFrame`` override the choice. The two
        frames become scalar volume nodes "<sequence> ED (frame k)" and "<sequence> ES (frame k)", which
        :meth:`computeFunction` segments again (with QC) into the usual function table, segmentations and QC
        tables. Works headless: it never shows a dialog; show ``result["warnings"]`` yourself.

        Example, in Slicer's Python console::

            logic = slicer.modules.cardiacai.widgetRepresentation().self().logic  # or CardiacAI.CardiacAILogic()
            result = logic.analyseCineSequence(getNode("cine sequence"))
            result["edFrame"], result["esFrame"], result["function"]["lv_ef_percent"], result["warnings"]
            result = logic.analyseCineSequence(getNode("cine sequence"), edFrame=0, esFrame=9)  # frames you chose

        :param sequenceNode: vtkMRMLSequenceNode of 3D short-axis scalar volumes, one per frame of the cycle.
        :param edFrame, esFrame: 0-based frame numbers (``GetNthDataNode``) to use as ED / ES; None chooses.
        :param mode, device, modelsDir, qc, qcThreshold, qcPredictor: as for :meth:`segmentCine` (QC runs on ED
            and ES only).
        :param curveTableNode: table to refill with the curve; a new one "<sequence> volume curve" if None.
        :param edSegmentationNode, esSegmentationNode, functionTableNode: as for :meth:`computeFunction`.
        :return: dict with what :meth:`computeFunction` returns ("edSegmentationNode", "esSegmentationNode",
            "functionTableNode", "qcTableNodes", "function", "report") and "curveTableNode" (Frame, the sequence's
            index value, LV blood pool, RV blood pool and LV myocardium in ml, Phase "ED"/"ES", Note for failed or
            heartless frames), "edFrame", "esFrame" (0-based), "edVolumeNode", "esVolumeNode" (the new frame
            volumes), "framesChosen" ({"ED": bool, "ES": bool}: chosen from the curve rather than given),
            "lvBloodPoolMl" (list per frame, None where not segmented), "warnings" (failed frames, frames without
            heart, then the function's warnings).
        :raises ValueError: not a sequence of scalar volumes, fewer than 2 frames, an unknown mode, ED/ES frames
            out of range or equal (before anything runs), or fewer than 2 frames with an LV volume to choose from
            (after the batch; the curve table is made first so that you can look at it).
        :raises cardiac_ai.subprocess_runner.CommandError: the batch could not run at all (e.g. no cine models);
            frames that fail one by one are only warnings.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True.
        """
        if mode not in CINE_MODES:
            raise ValueError(f"Unknown cine segmentation mode {mode!r}; choose one of {', '.join(CINE_MODES)}.")
        frameNodes = self.cineSequenceFrames(sequenceNode)
        cine = importBackend("cine_sequence")
        cine.check_frame_numbers(len(frameNodes), edFrame, esFrame)  # an InputError is a ValueError
        CommandError = importBackend("subprocess_runner").CommandError
        name = sequenceNode.GetName()
        batchShare = len(frameNodes) / (len(frameNodes) + 2.0)  # the function step segments two more frames
        with self._temporaryDirectory() as tempDir:
            framesDir = os.path.join(tempDir, "frames")
            self.writeFrameFiles(frameNodes, framesDir)
            outputDir = os.path.join(tempDir, "output")
            try:
                self.runCommand(
                    "batch", [framesDir],
                    {"task": cine.BATCH_TASK, "out": outputDir, "mode": mode, "device": device,
                     "models_dir": modelsDir, "no_qc": True},
                    progressCallback=self._progressRange(progressCallback, 0.0, batchShare), shouldCancel=shouldCancel,
                )
            except CommandError as error:
                if error.returncode != cine.BATCH_FAILURES_EXIT_CODE:
                    raise
                # Some frames failed: summary.csv holds the others and each failure's error (warned below).
            frames = cine.read_cine_batch(outputDir, len(frameNodes))
        warnings = cine.frame_warnings(frames)
        indexValues = [sequenceNode.GetNthIndexValue(k) for k in range(len(frameNodes))]
        indexTitle = cine.sequence_index_title(sequenceNode.GetIndexName(), sequenceNode.GetIndexUnit())
        lvBloodPoolMl = [frame.lv_blood_pool_ml for frame in frames]
        try:
            choice = cine.choose_ed_es_frames(lvBloodPoolMl, heart_found=[frame.heart_found for frame in frames],
                                              ed_frame=edFrame, es_frame=esFrame)
        except ValueError as error:
            self.fillTable(curveTableNode, cine.volume_curve_rows(frames, indexValues, index_title=indexTitle),
                           f"{name} volume curve", sequenceNode)
            raise ValueError(f"{error} The volume curve is in the table '{name} volume curve'.") from error
        curveTableNode = self.fillTable(
            curveTableNode, cine.volume_curve_rows(frames, indexValues, index_title=indexTitle, choice=choice),
            f"{name} volume curve", sequenceNode)
        warnings += list(choice.warnings)
        self._logWarnings(warnings)
        edVolumeNode = self.volumeNodeFromFrame(frameNodes[choice.ed_frame], f"{name} ED (frame {choice.ed_frame})",
                                                sequenceNode)
        esVolumeNode = self.volumeNodeFromFrame(frameNodes[choice.es_frame], f"{name} ES (frame {choice.es_frame})",
                                                sequenceNode)
        self.log(f"{name}: ED is frame {choice.ed_frame}, ES is frame {choice.es_frame} "
                 f"({'chosen from the LV volume curve' if choice.ed_chosen or choice.es_chosen else 'as given'}).")
        function = self.computeFunction(
            edVolumeNode, esVolumeNode, edSegmentationNode=edSegmentationNode, esSegmentationNode=esSegmentationNode,
            mode=mode, device=device, progressCallback=self._progressRange(progressCallback, batchShare, 1.0),
            shouldCancel=shouldCancel, functionTableNode=functionTableNode, modelsDir=modelsDir, qc=qc,
            qcThreshold=qcThreshold, qcPredictor=qcPredictor,
        )
        return {
            **function,
            "curveTableNode": curveTableNode,
            "edFrame": choice.ed_frame,
            "esFrame": choice.es_frame,
            "edVolumeNode": edVolumeNode,
            "esVolumeNode": esVolumeNode,
            "framesChosen": {"ED": choice.ed_chosen, "ES": choice.es_chosen},
            "lvBloodPoolMl": lvBloodPoolMl,
            "warnings": warnings + function["warnings"],
        }

    def registeredModels(self, modelsDir: Optional[str] = None) -> list:
        """The trained models the backend finds ("name version" strings), from ``cardiacai info --json``.

        Empty when PyTorch is not installed yet (the backend cannot load models without it).
        """
        run = self.runCommand("info", [], {"json": True, "models_dir": modelsDir})
        return importBackend("slicer_results").models_from_info_output(run.output_lines)

    # -- shared steps of the capabilities -------------------------------------------------------------------------

    def runBackendCall(self, call, progressCallback=None, shouldCancel=None):
        """Run a ``cardiac_ai.slicer_results.BackendCall`` (built and checked by the backend's pure functions)."""
        return self.runCommand(call.command, list(call.positional), call.options,
                               progressCallback=progressCallback, shouldCancel=shouldCancel)

    def _newTableNodes(self, tables: dict, titles: dict, referenceNode, optional: tuple = ()) -> dict:
        """``{"<key>TableNode": node}``: a new table named ``title`` holding ``tables[key]`` for each ``key: title`` of
        ``titles``, placed next to ``referenceNode``; a key in ``optional`` whose table has no rows gives None."""
        return {f"{key}TableNode": None if key in optional and not tables[key]
                else self.fillTable(None, tables[key], title, referenceNode)
                for key, title in titles.items()}

    @staticmethod
    def _showAsColourScale(volumeNode, maximum: float) -> None:
        """Display a result volume (CAM, ECV) with the CAM colour table from 0 to ``maximum``."""
        displayNode = volumeNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(CAM_COLOR_NODE_ID)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(0.0, maximum)

    def labelsFileToSegmentation(self, labelsPath: str, referenceVolumeNode, outputSegmentationNode=None,
                                 shouldCancel=None):
        """Load a label map file with CardiacAI codes as named, coloured segments (``cardiacai convert`` to
        ``.seg.nrrd``, then :meth:`loadSegmentation`); used for outputs the backend writes only as labels.nii.gz."""
        if not os.path.isfile(labelsPath):
            raise RuntimeError(f"The backend did not write {labelsPath}; see the log for its output.")
        segPath = os.path.splitext(os.path.splitext(labelsPath)[0])[0] + ".seg.nrrd"
        self.runCommand("convert", [labelsPath], {"out": segPath}, shouldCancel=shouldCancel)
        return self.loadSegmentation(segPath, referenceVolumeNode, outputSegmentationNode)

    def loadResultVolume(self, path: str, name: str, referenceVolumeNode):
        """Load a scalar volume the backend wrote (a map, a CAM) next to ``referenceVolumeNode``, not shown yet."""
        if not os.path.isfile(path):
            raise RuntimeError(f"The backend did not write {path}; see the log for its output.")
        volumeNode = slicer.util.loadVolume(path, {"name": name, "show": False})
        forgetTemporaryFile(volumeNode)
        if hasattr(referenceVolumeNode, "GetTransformNodeID"):  # a sequence node is not transformable
            volumeNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        self._placeNextTo(volumeNode, referenceVolumeNode)
        return volumeNode

    def _newSegmentation(self, segmentationNode, volumeNode, suffix: str = "segmentation"):
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} {suffix}")
        return segmentationNode

    @staticmethod
    def _logWarnings(warnings: list) -> list:
        for warning in warnings:
            logging.warning(warning)
        return warnings

    # -- T1/T2 mapping -------------------------------------------------------------------------------------------

    def analyseMap(
        self,
        mapVolumeNode,
        kind: str = "T1",
        outputSegmentationNode=None,
        contours: bool = True,
        qc: bool = True,
        qcThreshold: float = 0.8,
        qcPredictor: str = "auto",
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
    ) -> dict:
        """Myocardial T1 or T2 of a map (``cardiacai map``): segmentation, contours, statistics per slice and per
        AHA segment, and (indicative) QC.

        Example, in Slicer's Python console::

            logic = CardiacAI.CardiacAILogic()
            result = logic.analyseMap(getNode("T1 map"), kind="T1")
            result["summaryTableNode"], result["segmentsTableNode"], result["curveNodes"]
            result["bullseyeVolumeNode"]  # the AHA bullseye of segment medians, a colour image

        :param mapVolumeNode: T1 or T2 map in ms (0 = not fitted), short-axis slices from base to apex.
        :param kind: "T1" or "T2" (checked by the backend against the values).
        :param qc, qcThreshold, qcPredictor: the (indicative) quality check, as for :meth:`segmentCine`.
        :param outputSegmentationNode: receives LV myocardium and LV blood pool (replaced); new if None.
        :param contours: also make a closed curve (markups) per fitted endo- and epicardial contour.
        :return: dict with "segmentationNode", "summaryTableNode" (myocardium, LV blood pool and septal ROIs:
            median, mean, SD, quartiles in ms, pixels), "slicesTableNode", "segmentsTableNode" (AHA segments),
            "qcTableNode" (or None), "curveNodes" (list), "contoursNote" (why there are no curves, or ""),
            "bullseyeVolumeNode" (the backend's bullseye.png of the median per AHA segment, loaded as a colour
            volume "<map> bullseye", not shown; None with a warning when the backend drew none), "bullseyePath"
            (the PNG, copied out of the run's temporary folder into one that is kept; or None), "warnings" and
            "report".
        :raises ValueError: unknown kind (before anything runs).
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed (no mapping model, values that are
            not a T1/T2 map, ...); the message says why.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            inputPath = self.volumeToFile(mapVolumeNode, os.path.join(tempDir, "map.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            call = results.map_call(inputPath, outputDir, kind=kind, device=device, models_dir=modelsDir, qc=qc,
                                    qc_threshold=qcThreshold, qc_predictor=qcPredictor)
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            with open(os.path.join(outputDir, "stats.json"), encoding="utf-8") as f:
                tables = results.map_tables_from_stats(json.load(f))
            with open(os.path.join(outputDir, "contours.json"), encoding="utf-8") as f:
                curves = results.contour_curves(json.load(f)) if contours else []
            qcRows = {phase: results.qc_slice_rows(entry) for phase, entry in results.qc_entries(report).items()}
            warnings = results.report_warnings(report) + results.qc_warnings(report)
            segmentationNode = self.labelsFileToSegmentation(
                os.path.join(outputDir, "labels.nii.gz"), mapVolumeNode,
                self._newSegmentation(outputSegmentationNode, mapVolumeNode), shouldCancel=shouldCancel)
            bullseyeVolumeNode, bullseyePath = self.loadBullseye(
                os.path.join(outputDir, "bullseye.png"), f"{mapVolumeNode.GetName()} bullseye", mapVolumeNode)
            if bullseyeVolumeNode is None:
                warnings.append("The backend drew no AHA bullseye (bullseye.png); the AHA segments table has the "
                                "same values.")
        name = f"{mapVolumeNode.GetName()} {kind.upper()}"
        result = {
            "segmentationNode": segmentationNode,
            "bullseyeVolumeNode": bullseyeVolumeNode,
            "bullseyePath": bullseyePath,
            **self._newTableNodes(tables, {"summary": f"{name} statistics", "slices": f"{name} slices",
                                           "segments": f"{name} AHA segments"}, mapVolumeNode),
            "qcTableNode": self.fillTable(None, qcRows[""], f"{name} QC (indicative)", mapVolumeNode)
            if qcRows else None,
            "curveNodes": self.addContourCurves(curves, mapVolumeNode),
            "contoursNote": "" if curves or not contours else "The backend fitted no contour (see the warnings).",
            "report": report,
        }
        result["warnings"] = self._logWarnings(warnings)
        return result

    def loadBullseye(self, pngPath: str, name: str, referenceVolumeNode):
        """Keep a bullseye PNG the backend drew and load it as a colour volume node named ``name``, not shown.

        The run's temporary folder is deleted when the run ends, so the PNG is first copied into a new folder of
        Slicer's temporary path that the Logic does not delete (the node's file stays readable, the panel can show
        the picture, and saving the scene finds it). ``singleFile`` stops Slicer from reading other numbered PNGs
        of the folder as slices of one volume.

        :return: (volume node, path of the kept PNG), or (None, None) when ``pngPath`` does not exist.
        """
        if not os.path.isfile(pngPath):
            return None, None
        keptPath = os.path.join(slicer.util.tempDirectory(key="CardiacAI-bullseye-"), os.path.basename(pngPath))
        shutil.copyfile(pngPath, keptPath)
        volumeNode = slicer.util.loadVolume(keptPath, {"name": name, "singleFile": True, "show": False})
        self._placeNextTo(volumeNode, referenceVolumeNode)
        return volumeNode, keptPath

    def addContourCurves(self, curves, referenceVolumeNode) -> list:
        """One locked, linear closed curve (markups) per contour of ``cardiac_ai.slicer_results.contour_curves``."""
        import numpy as np

        nodes = []
        for curve in curves:
            node = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLMarkupsClosedCurveNode", f"{referenceVolumeNode.GetName()} {curve['name']}")
            node.SetCurveTypeToLinear()  # the points are already a smooth contour: draw them as they are
            slicer.util.updateMarkupsControlPointsFromArray(node, np.asarray(curve["points_ras"], dtype=float))
            node.SetLocked(True)
            node.CreateDefaultDisplayNodes()
            displayNode = node.GetDisplayNode()
            displayNode.SetPointLabelsVisibility(False)
            displayNode.SetPropertiesLabelVisibility(False)
            displayNode.SetSelectedColor(*CONTOUR_COLORS[curve["wall"]])
            node.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
            self._placeNextTo(node, referenceVolumeNode)
            nodes.append(node)
        return nodes

    def writeSeriesFile(self, seriesNode, path: str, kind: str = "T1") -> Optional[list]:
        """Write a raw mapping series as one 4D file (x, y, z, t), for ``cardiacai fit-map``.

        :param seriesNode: a vtkMRMLSequenceNode of scalar volumes (one per inversion or preparation time, all on
            one grid), or a scalar volume with one voxel component per frame (a multi-frame volume).
        :return: the times held by the sequence's index (:func:`cardiac_ai.slicer_results.times_from_sequence_index`)
            or None.
        :raises ValueError: fewer than 2 frames, frames on different grids, or a node that is neither.
        """
        import numpy as np

        indexTimes = None
        if seriesNode.IsA("vtkMRMLSequenceNode"):
            frames = [seriesNode.GetNthDataNode(i) for i in range(seriesNode.GetNumberOfDataNodes())]
            if not all(frame is not None and frame.IsA("vtkMRMLScalarVolumeNode") for frame in frames):
                raise ValueError(f"Sequence {seriesNode.GetName()!r} does not hold scalar volumes.")
            arrays = [np.array(slicer.util.arrayFromVolume(frame), dtype=np.float32) for frame in frames]
            reference = frames[0] if frames else None
            indexTimes = importBackend("slicer_results").times_from_sequence_index(
                seriesNode.GetIndexName(), seriesNode.GetIndexUnit(),
                [seriesNode.GetNthIndexValue(i) for i in range(seriesNode.GetNumberOfDataNodes())], kind=kind)
        else:
            array = slicer.util.arrayFromVolume(seriesNode)
            if array.ndim != 4:
                raise ValueError(
                    f"Volume {seriesNode.GetName()!r} has one frame; choose the raw series (a sequence, or a volume "
                    "with one frame per inversion/preparation time)."
                )
            arrays = [np.array(array[..., t], dtype=np.float32) for t in range(array.shape[3])]
            reference = seriesNode
        if len(arrays) < 2:
            raise ValueError(f"{seriesNode.GetName()!r} has {len(arrays)} frame(s); map fitting needs several.")
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"The frames of {seriesNode.GetName()!r} have different sizes; resample them first.")
        matrix = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(matrix)
        if seriesNode.IsA("vtkMRMLSequenceNode"):
            for number, frame in enumerate(frames[1:], start=1):
                frameMatrix = vtk.vtkMatrix4x4()
                frame.GetIJKToRASMatrix(frameMatrix)
                if max(abs(frameMatrix.GetElement(r, c) - matrix.GetElement(r, c))
                       for r in range(3) for c in range(4)) > 1e-3:
                    raise ValueError(f"Frame {number} of {seriesNode.GetName()!r} lies on another grid (position or "
                                     "orientation) than frame 0; a mapping series needs every frame on one grid.")
        geometry = importBackend("geometry").Geometry.from_ijk_to_ras_matrix(
            [[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])
        # the backend writes the (t, k, j, i) series as a 4D image (x, y, z, t); SimpleITK's own default took a 4D
        # array for a 3D image of vectors, and fitting from the panel failed on every series
        Volume = importBackend("geometry").Volume
        importBackend("io.volumes").write_volume(Volume(np.stack(arrays), geometry, "tkji"), path)
        return indexTimes

    def fitMapping(
        self,
        seriesNode,
        kind: str = "T1",
        timesMs=None,
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        signed: bool = False,
    ) -> dict:
        """Fit a T1 (MOLLI, Look-Locker corrected) or T2 (T2-prepared) map pixel by pixel (``cardiacai fit-map``).

        Example, in Slicer's Python console::

            result = CardiacAI.CardiacAILogic().fitMapping(getNode("MOLLI"), kind="T1",
                                                           timesMs=[100, 180, 260, 1100, 1180, 2100, 3100, 4100])
            result["mapVolumeNode"], result["r2VolumeNode"]

        :param seriesNode: the raw series: a sequence node (one volume per time) or a multi-frame volume.
        :param kind: "T1" (MOLLI) or "T2" (T2-prepared).
        :param timesMs: inversion (T1) or preparation (T2) time of every frame in ms, in frame order; None uses the
            sequence's index when it holds them (index name "InversionTime", ...).
        :param signed: phase-sensitive (PSIR) MOLLI frames, negative before the null point (T1 only).
        :return: dict with "mapVolumeNode" (ms; 0 = not fitted), "r2VolumeNode" (goodness of fit), "tableNode"
            (median, pixels fitted/failed, times), "warnings" and "report".
        :raises ValueError: no times, or a series that cannot be written as one 4D file.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            seriesPath = os.path.join(tempDir, "series.nii.gz")
            indexTimes = self.writeSeriesFile(seriesNode, seriesPath, kind=kind)
            times = timesMs if timesMs is not None else indexTimes
            outputDir = os.path.join(tempDir, "output")
            call = results.fit_map_call(seriesPath, outputDir, kind=kind, times_ms=times, device=device,
                                        signed=signed)
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            mapFile, r2File = results.fit_map_outputs(report)
            rows = results.fit_map_rows(report)
            warnings = results.report_warnings(report)
            name = f"{seriesNode.GetName()} {kind.upper()}"
            mapVolumeNode = self.loadResultVolume(os.path.join(outputDir, mapFile), f"{name} map", seriesNode)
            r2VolumeNode = self.loadResultVolume(os.path.join(outputDir, r2File), f"{name} R2", seriesNode)
        return {"mapVolumeNode": mapVolumeNode, "r2VolumeNode": r2VolumeNode,
                "tableNode": self.fillTable(None, rows, f"{name} fit", seriesNode),
                "warnings": self._logWarnings(warnings), "report": report}

    def computeEcv(
        self,
        nativeT1VolumeNode,
        postContrastT1VolumeNode,
        haematocrit: Optional[float] = None,
        outputSegmentationNode=None,
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
    ) -> dict:
        """Extracellular volume from a native and a post-contrast T1 map (``cardiacai ecv``).

        Example, in Slicer's Python console::

            result = CardiacAI.CardiacAILogic().computeEcv(getNode("T1 native"), getNode("T1 post"), haematocrit=0.42)
            result["ecv"]["myocardium"]["ecv_fraction"]

        :param haematocrit: measured haematocrit as a fraction (0.42); None uses the synthetic haematocrit.
        :return: dict with "segmentationNode" (native map: myocardium, LV blood pool), "ecvVolumeNode" (pixelwise
            ECV fraction on the native grid; None only from an older backend), "summaryTableNode" (myocardial ECV in %,
            haematocrit, median T1 values), "regionsTableNode" (septal ROIs, AHA segments), "ecv" (the report's
            values), "inputVolumeNode", "warnings" and "report".
        :raises ValueError: a haematocrit that is not a fraction.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            nativePath = self.volumeToFile(nativeT1VolumeNode, os.path.join(tempDir, "native.nrrd"))
            postPath = self.volumeToFile(postContrastT1VolumeNode, os.path.join(tempDir, "post.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            call = results.ecv_call(nativePath, postPath, outputDir, haematocrit=haematocrit, device=device,
                                    models_dir=modelsDir)
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            tables = results.ecv_tables_from_report(report)
            warnings = results.report_warnings(report)
            name = nativeT1VolumeNode.GetName()
            ecvPath = os.path.join(outputDir, "ecv_map.nii.gz")
            ecvVolumeNode = None
            if os.path.isfile(ecvPath):
                ecvVolumeNode = self.loadResultVolume(ecvPath, f"{name} ECV", nativeT1VolumeNode)
                self._showAsColourScale(ecvVolumeNode, 0.6)  # ECV fraction: normal myocardium about 0.25
            segmentationNode = self.labelsFileToSegmentation(
                os.path.join(outputDir, "labels.nii.gz"), nativeT1VolumeNode,
                self._newSegmentation(outputSegmentationNode, nativeT1VolumeNode), shouldCancel=shouldCancel)
        return {
            "segmentationNode": segmentationNode, "ecvVolumeNode": ecvVolumeNode,
            "inputVolumeNode": nativeT1VolumeNode,
            **self._newTableNodes(tables, {"summary": f"{name} ECV", "regions": f"{name} ECV regions"},
                                  nativeT1VolumeNode, optional=("regions",)),
            "ecv": report["ecv"], "warnings": self._logWarnings(warnings), "report": report,
        }

    # -- LGE fibrosis --------------------------------------------------------------------------------------------

    def quantifyFibrosis(
        self,
        lgeVolumeNode,
        model: str = "weak",
        outputSegmentationNode=None,
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
        qc: bool = True,
        qcThreshold: float = 0.8,
        qcPredictor: str = "auto",
        pixelSizeUnknown: Optional[bool] = None,
        sliceOrder: str = "unknown",
    ) -> dict:
        """LV myocardium, blood pool, scar and microvascular obstruction of an LGE stack (``cardiacai fibrosis``).

        Example, in Slicer's Python console::

            result = CardiacAI.CardiacAILogic().quantifyFibrosis(getNode("LGE"))
            result["clinical"]["scar_percent_of_myocardium"], result["summaryTableNode"]

        :param model: "weak" (trained on slice labels), "weak_stack" (patient labels) or "pixel" (pixel labels).
        :param qc, qcThreshold, qcPredictor: quality-check the myocardium and blood pool (indicative on LGE: the QC
            models were trained on cine), as for :meth:`segmentCine`.
        :param pixelSizeUnknown: ignore the volume's spacing (numbers in pixels, EMIDEC's pixel assumed for the
            models). None (default): True when the volume was loaded from PNG files, which Slicer gives 1 mm pixels
            that are not the image's.
        :param sliceOrder: "base-first" or "apex-first" (the slices with myocardium split into basal, mid and
            apical thirds: transmurality per AHA segment), or "unknown" (per sector of each slice).
        :return: dict with "segmentationNode" (2 myocardium, 3 LV blood pool, 4 scar, 5 MVO), "summaryTableNode"
            (scar, MVO and myocardial volume, scar %, MVO %), "slicesTableNode" (per slice: fibrosis probability,
            areas, scar %), "segmentsTableNode" (transmurality per AHA segment, or None), "qcTableNode" (or None),
            "clinical" (the report's values), "warnings" and "report".
        :raises ValueError: unknown model.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            inputPath = self.volumeToFile(lgeVolumeNode, os.path.join(tempDir, "lge.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            if pixelSizeUnknown is None:
                pixelSizeUnknown = self.loadedFromPng(lgeVolumeNode)
            call = results.fibrosis_call(inputPath, outputDir, model=model, device=device, models_dir=modelsDir,
                                         qc=qc, qc_threshold=qcThreshold, qc_predictor=qcPredictor,
                                         pixel_size_unknown=pixelSizeUnknown,
                                         slice_order=None if sliceOrder == "unknown" else sliceOrder)
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            tables = results.fibrosis_tables_from_report(report)
            qcRows = {phase: results.qc_slice_rows(entry) for phase, entry in results.qc_entries(report).items()}
            warnings = results.report_warnings(report) + results.qc_warnings(report)
            segmentationNode = self.loadSegmentation(
                os.path.join(outputDir, "segmentation.seg.nrrd"), lgeVolumeNode,
                self._newSegmentation(outputSegmentationNode, lgeVolumeNode))
        name = lgeVolumeNode.GetName()
        return {
            "segmentationNode": segmentationNode,
            **self._newTableNodes(tables, {"summary": f"{name} fibrosis", "slices": f"{name} fibrosis slices",
                                           "segments": f"{name} transmurality"}, lgeVolumeNode,
                                  optional=("segments",)),
            "qcTableNode": self.fillTable(None, qcRows[""], f"{name} QC (indicative)", lgeVolumeNode)
            if qcRows else None,
            "clinical": report["clinical"], "warnings": self._logWarnings(warnings), "report": report,
        }

    @staticmethod
    def loadedFromPng(volumeNode) -> bool:
        """Whether the volume was read from PNG files: their pixel size is unknown (Slicer assumes 1 mm)."""
        storageNode = volumeNode.GetStorageNode() if volumeNode is not None else None
        fileName = storageNode.GetFileName() if storageNode is not None else None
        return bool(fileName) and str(fileName).lower().endswith(".png")

    # -- class activation maps -----------------------------------------------------------------------------------

    def explainCam(
        self,
        volumeNode,
        explain: Optional[str] = None,
        method: Optional[str] = None,
        pseudoLabel: bool = False,
        outputSegmentationNode=None,
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
        augment: Optional[Sequence[str]] = None,
        crfIterations: Optional[int] = None,
        crfSmoothness: Optional[Sequence[float]] = None,
        crfAppearance: Optional[Sequence[float]] = None,
        otsuClasses: Optional[int] = None,
        scaleRange: Optional[Sequence[float]] = None,
        minFraction: Optional[float] = None,
        structures: bool = False,
        lvWallMm: Optional[float] = None,
        endDiastoleVolumeNode=None,
    ) -> dict:
        """Class activation map of the weak diagnosis classifier and whole-heart labels (``cardiacai cam``).

        Example, in Slicer's Python console::

            result = CardiacAI.CardiacAILogic().explainCam(getNode("cine"), explain="DCM")
            slicer.util.setSliceViewerLayers(background=getNode("cine"), foreground=result["camVolumeNode"],
                                             foregroundOpacity=0.4)
            # each slice's own class, the CAM averaged over flips and shifts, the heart from a 10-iteration CRF
            result = CardiacAI.CardiacAILogic().explainCam(
                getNode("cine"), explain="slice", augment=["hflip", "vflip", "shift"], pseudoLabel=True,
                crfIterations=10)

        crfIterations, crfSmoothness, crfAppearance, otsuClasses, scaleRange and minFraction replace the classifier's
        model card's pseudo-label settings and need ``pseudoLabel=True``; None (the default) keeps the model card's.
        Pixels are those of the classifier's crop.

        :param explain: class whose evidence is mapped on every slice (e.g. "DCM"); None or "predicted" maps the
            class predicted for the whole volume, "slice" each slice's own predicted class.
        :param method: "model", "gradcam" or "gradcampp"; None or "default" uses the model card's method.
        :param pseudoLabel: labels from the CAM pseudo-label even when the weak U-Net is installed.
        :param augment: views ("hflip", "vflip", "shift"; CAM_AUGMENTATIONS) whose CAMs, mapped back to the slice,
            are averaged with the slice's own (``--cam-augment``); None: the plain slice only.
        :param crfIterations: DenseCRF mean-field iterations, >= 1 (``--crf-iterations``).
        :param crfSmoothness: (weight >= 0, width in pixels > 0) of the CRF's smoothness (Gaussian) kernel; weight 0
            drops it (``--crf-smoothness``).
        :param crfAppearance: (weight >= 0, width in pixels > 0, width in grey levels of the slice scaled to 0-255
            > 0) of the CRF's appearance (bilateral) kernel, used only when the weight is > 0 (``--crf-appearance``).
        :param otsuClasses: classes of the multi-Otsu step whose lowest class of candidate pixels is dropped; 0 skips
            the step, else 2 to 4 (``--otsu-classes``).
        :param scaleRange: (low, high) with 0 <= low < high <= 1: the probability range the positive CAM values are
            scaled into before the CRF (``--scale-range``).
        :param minFraction: candidate pixels must reach this fraction of the slice's CAM maximum, 0 <= f < 1
            (``--min-fraction``).
        :param structures: also split the heart into RV blood pool, LV myocardium and LV blood pool by image
            intensity (``--structures``): a rough, label-free estimate whose volumes join the summary table.
        :param lvWallMm: the band within this many mm of the LV blood pool added to the weak U-Net's heart, where the
            U-Net misses the myocardium (``--lv-wall-mm``); None: the default, CAM_LV_WALL_MM (11 mm, chosen on ACDC
            validation patients); 0: the U-Net's output as it is.
        :param endDiastoleVolumeNode: the end-diastolic frame of the same cine series, when ``volumeNode`` is another
            frame (end-systole): the weak U-Net's heart on it, carried onto ``volumeNode`` by image registration,
            is the heart (``--ed``; held-out ACDC end-systolic Dice 0.72 -> 0.75). None: ``volumeNode``'s own heart.
        :return: dict with "camVolumeNode" (float 0..1, ColdToHotRainbow colours, window 0..1: show it as the
            foreground over the image), "segmentationNode" (the heart, label 6), "summaryTableNode" (predicted
            class and probabilities), "slicesTableNode" (per slice), "inputVolumeNode", "warnings" and "report";
            with ``structures`` also "structuresSegmentationNode".
        :raises ValueError: unknown method or view, a pseudo-label setting out of range or without ``pseudoLabel``,
            an ``lvWallMm`` outside 0-30 mm; the backend refuses an ``endDiastoleVolumeNode`` on another grid.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            inputPath = self.volumeToFile(volumeNode, os.path.join(tempDir, "image.nrrd"))
            endDiastolePath = None
            if endDiastoleVolumeNode is volumeNode:
                endDiastolePath = inputPath  # one file for both: the backend refuses the input as its own ED frame
            elif endDiastoleVolumeNode is not None:
                endDiastolePath = self.volumeToFile(endDiastoleVolumeNode, os.path.join(tempDir, "end_diastole.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            call = results.cam_call(inputPath, outputDir, explain=explain, method=method, pseudo_label=pseudoLabel,
                                    device=device, models_dir=modelsDir, augment=augment,
                                    crf_iterations=crfIterations, crf_smoothness=crfSmoothness,
                                    crf_appearance=crfAppearance, otsu_classes=otsuClasses, scale_range=scaleRange,
                                    min_fraction=minFraction, structures=structures, lv_wall_mm=lvWallMm,
                                    end_diastole_path=endDiastolePath)
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            tables = results.cam_tables_from_report(report)
            warnings = results.report_warnings(report) + [str(w) for w in report["cam"].get("warnings", [])]
            name = volumeNode.GetName()
            camVolumeNode = self.loadResultVolume(os.path.join(outputDir, "cam.nii.gz"), f"{name} CAM", volumeNode)
            self._showAsColourScale(camVolumeNode, 1.0)
            segmentationNode = self.loadSegmentation(
                os.path.join(outputDir, "segmentation.seg.nrrd"), volumeNode,
                self._newSegmentation(outputSegmentationNode, volumeNode, "heart"))
            structuresNode = None
            if structures:
                structuresNode = self.loadSegmentation(
                    os.path.join(outputDir, "structures.seg.nrrd"), volumeNode,
                    self._newSegmentation(None, volumeNode, "structures (label-free estimate)"))
        return {
            "camVolumeNode": camVolumeNode, "segmentationNode": segmentationNode, "inputVolumeNode": volumeNode,
            **({"structuresSegmentationNode": structuresNode} if structuresNode is not None else {}),
            **self._newTableNodes(tables, {"summary": f"{name} CAM prediction", "slices": f"{name} CAM slices"},
                                  volumeNode),
            "warnings": self._logWarnings(list(dict.fromkeys(warnings))), "report": report,
        }

    # -- quality control -----------------------------------------------------------------------------------------

    def segmentCodes(self, segmentationNode) -> dict:
        """Segment ID -> CardiacAI label code, from the segment names
        (``cardiac_ai.slicer_results.segment_label_codes``).

        :raises ValueError: a segment whose name is not a CardiacAI structure, or no segment at all.
        """
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = list(segmentation.GetSegmentIDs())
        if not segmentIds:
            raise ValueError(f"Segmentation {segmentationNode.GetName()!r} has no segment to check.")
        names = {segmentId: segmentation.GetSegment(segmentId).GetName() for segmentId in segmentIds}
        codes = importBackend("slicer_results").segment_label_codes(list(names.values()))
        return {segmentId: codes[name] for segmentId, name in names.items()}

    def writeSegmentationAsLabelmap(self, segmentationNode, referenceVolumeNode, path: str) -> str:
        """Write ``segmentationNode`` as a label map with CardiacAI codes, voxel for voxel on the reference volume's
        grid (each segment through ``slicer.util.arrayFromSegmentBinaryLabelmap`` with that volume as reference).

        Segment names give the codes (``cardiac_ai.slicer_results.segment_label_codes``); where segments overlap,
        ``segment_paint_order`` decides (a whole heart under the structures it holds, scar over myocardium).

        :raises ValueError: a segment whose name is not a CardiacAI structure, or no segment at all.
        """
        import numpy as np

        codes = self.segmentCodes(segmentationNode)
        labels = np.zeros(slicer.util.arrayFromVolume(referenceVolumeNode).shape[:3], np.uint8)
        for segmentId in importBackend("slicer_results").segment_paint_order(codes):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
            labels[mask > 0] = codes[segmentId]
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "CardiacAI QC labels")
        try:
            labelmapNode.CopyOrientation(referenceVolumeNode)
            slicer.util.updateVolumeFromArray(labelmapNode, labels)
            writeVolumeCopy(labelmapNode, path)
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)
        return path

    def checkQuality(
        self,
        volumeNode,
        segmentationNode,
        threshold: float = 0.8,
        writeSurrogate: bool = False,
        device: str = "auto",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
        modelsDir: Optional[str] = None,
        predictor: str = "auto",
    ) -> dict:
        """Predict the Dice of every slice of a segmentation without ground truth (``cardiacai qc``) and flag the
        slices below ``threshold``.

        Example, in Slicer's Python console::

            result = CardiacAI.CardiacAILogic().checkQuality(getNode("cine"), getNode("cine segmentation"))
            result["flaggedSlices"], result["warnings"]  # e.g. [2, 5], ["Quality control flagged slices 2, 5 ..."]

        :param volumeNode: the short-axis image the segmentation belongs to.
        :param segmentationNode: segments named as CardiacAI structures (RV blood pool, LV myocardium, LV blood
            pool; see :meth:`writeSegmentationAsLabelmap`). Only the structures it has are judged; the blood pools
            a myocardium-only node leaves out are drawn by the cine baseline as context.
        :param writeSurrogate: also load the surrogate segmentation (the closest plausible one QC compared with).
        :param predictor: as ``qcPredictor`` of :meth:`segmentCine`.
        :return: dict with "qcTableNode" (per slice: assessed, flagged, predicted Dice per structure, rule checks),
            "flaggedSlices" (list of k), "needsReview", "surrogateSegmentationNode" (or None), "qc" (the report's
            values), "warnings" (a clear message naming the flagged slices) and "report".
        :raises ValueError: a threshold outside 0..1, or segments that are not CardiacAI structures.
        :raises cardiac_ai.subprocess_runner.CommandError: e.g. no qc_vae model installed.
        """
        results = importBackend("slicer_results")
        with self._temporaryDirectory() as tempDir:
            imagePath = self.volumeToFile(volumeNode, os.path.join(tempDir, "image.nrrd"))
            labelsPath = self.writeSegmentationAsLabelmap(segmentationNode, volumeNode,
                                                          os.path.join(tempDir, "labels.nrrd"))
            outputDir = os.path.join(tempDir, "output")
            # the structures the node has are the ones judged: a myocardium-only node is not missing blood pools
            call = results.qc_call(imagePath, labelsPath, outputDir, threshold=threshold,
                                   write_surrogate=writeSurrogate, device=device, models_dir=modelsDir,
                                   predictor=predictor,
                                   structures=results.partial_structures(self.segmentCodes(segmentationNode).values()))
            self.runBackendCall(call, progressCallback, shouldCancel)
            report = results.read_report(outputDir)
            rows = results.qc_slice_rows(report["qc"])
            warnings = results.report_warnings(report) + results.qc_warnings(report)
            surrogateNode = None
            if writeSurrogate:
                surrogateNode = self.loadSegmentation(
                    os.path.join(outputDir, "surrogate.seg.nrrd"), volumeNode,
                    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       f"{segmentationNode.GetName()} QC surrogate"))
        qc = report["qc"]
        return {
            "qcTableNode": self.fillTable(None, rows, f"{segmentationNode.GetName()} QC", volumeNode),
            "flaggedSlices": list(qc.get("flagged_slices") or []), "needsReview": bool(qc.get("needs_review")),
            "surrogateSegmentationNode": surrogateNode, "qc": qc,
            "warnings": self._logWarnings(warnings), "report": report,
        }

    @contextlib.contextmanager
    def _temporaryDirectory(self):
        """A new temporary folder for one backend run, removed afterwards (kept with ``keepTemporaryFiles``)."""
        tempDir = tempfile.mkdtemp(prefix="CardiacAI-", dir=slicer.app.temporaryPath)  # unique, unlike a timestamp
        try:
            yield tempDir
        finally:
            self._removeTemporaryDirectory(tempDir)

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
        self.test_MissingInputsAreRejectedBeforeRunning()
        self.setUp()
        self.test_SegmentationWrittenAsLabelmapMatchesThePhantomLabels()
        self.setUp()
        self.test_CineSegmentationAndFunctionOnPhantomWhenModelsAreRegistered()
        self.setUp()
        self.test_CineSequenceChoosesEdAndEsFromTheVolumeCurveWhenModelsAreRegistered()
        self.setUp()
        self.test_MappingFitAndAnalysisOnThePhantom()
        self.setUp()
        self.test_FibrosisCamAndQualityControlWhenModelsAreRegistered()

    def _torchOrSkip(self, logic, test: str) -> bool:
        """Set up the Python requirements when PyTorch is there; otherwise skip (a test must not install PyTorch or
        wait for an answer to the installation question)."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            self.delayDisplay(f"Skipped {test}: PyTorch is not installed (install the PyTorch extension and torch).")
            return False
        logic.setupPythonRequirements(requireTorch=True)
        return True

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

    def test_MissingInputsAreRejectedBeforeRunning(self):
        logic = CardiacAILogic()
        parameterNode = logic.getParameterNode()
        for attribute in ("inputVolume", "edVolume", "esVolume", "cineSequence", "mappingSeries",
                          "postContrastVolume", "qcSegmentation"):
            setattr(parameterNode, attribute, None)
        for task in TASKS:
            parameterNode.task = task
            self.assertTrue(logic.missingInputs(parameterNode), task)
            with self.assertRaises(ValueError):
                logic.process(parameterNode)
        self.delayDisplay("Test passed")

    def test_SegmentationWrittenAsLabelmapMatchesThePhantomLabels(self):
        """The QC input: a segmentation node written voxel for voxel on the image's grid, codes from segment names."""
        logic = CardiacAILogic()
        paths = self._phantom(logic)
        imageNode = slicer.util.loadVolume(paths["image"])
        segmentationNode = logic.loadSegmentation(paths["segmentation"], imageNode)
        path = logic.writeSegmentationAsLabelmap(segmentationNode, imageNode,
                                                 os.path.join(slicer.util.tempDirectory(), "labels.nrrd"))
        written = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(path))
        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(paths["labels"]))
        self.assertEqual(written.shape, truth.shape)
        self.assertTrue((written == truth).all(), "label map differs from the phantom labels")
        self.delayDisplay("Test passed")

    def _registered(self, logic):
        return {model.split()[0] for model in logic.registeredModels()}

    def _volumeNode(self, name, array, geometry):
        """A scalar volume node holding ``array`` (k, j, i) with a backend Geometry."""
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, array)
        matrix = vtk.vtkMatrix4x4()
        for row, values in enumerate(geometry.ijk_to_ras_matrix()):
            for column, value in enumerate(values):
                matrix.SetElement(row, column, float(value))
        node.SetIJKToRASMatrix(matrix)
        node.CreateDefaultDisplayNodes()
        return node

    def test_MappingFitAndAnalysisOnThePhantom(self):
        """Map fitting needs no model; map analysis and QC run where their models are installed."""
        import numpy as np

        logic = CardiacAILogic()
        if not self._torchOrSkip(logic, "test_MappingFitAndAnalysisOnThePhantom"):
            return
        case = importBackend("mapping").make_mapping_case(
            importBackend("phantom").make_cine_phantom(seed=3), seed=3, disease="none", noise=0.0,
            misregistration_px=0.0)
        sequenceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "phantom MOLLI")
        sequenceNode.SetIndexName("InversionTime")
        sequenceNode.SetIndexUnit("ms")
        for frame, time in zip(case.molli.array, case.inversion_times_ms):
            frameNode = self._volumeNode("frame", np.ascontiguousarray(frame), case.molli.geometry)
            sequenceNode.SetDataNodeAtValue(frameNode, f"{time:g}")
            slicer.mrmlScene.RemoveNode(frameNode)
        self.delayDisplay("Fitting the phantom MOLLI series (times from the sequence index)")
        fit = logic.fitMapping(sequenceNode, kind="T1")
        fitted = slicer.util.arrayFromVolume(fit["mapVolumeNode"])
        labels = case.labels.array
        truth = float(np.median(case.t1_map_ms.array[labels == 2]))
        self.assertAlmostEqual(float(np.median(fitted[labels == 2])) / truth, 1.0, delta=0.05)
        self.assertEqual(fitted.shape, labels.shape)

        if "map_myocardium" not in self._registered(logic):
            self.delayDisplay("Skipped map analysis: the map_myocardium model is not registered.")
            return
        self.delayDisplay("Analysing the phantom T1 map")
        mapNode = self._volumeNode("phantom T1", case.t1_map_ms.array, case.t1_map_ms.geometry)
        result = logic.analyseMap(mapNode, kind="T1")
        LABELS = importBackend("labels").LABELS
        self.assertTrue({LABELS[2].display_name, LABELS[3].display_name} <= self._segmentNames(
            result["segmentationNode"]))
        table = result["summaryTableNode"].GetTable()
        self.assertEqual(table.GetValueByName(0, "Region").ToString(), "Myocardium")
        self.assertAlmostEqual(table.GetValueByName(0, "Median (ms)").ToDouble() / truth, 1.0, delta=0.1)
        self.assertTrue(result["curveNodes"], result["contoursNote"])
        # the bullseye outlives the run's temporary folder, as a file and as a colour volume
        self.assertTrue(os.path.isfile(result["bullseyePath"]), result["bullseyePath"])
        self.assertEqual(result["bullseyeVolumeNode"].GetName(), "phantom T1 bullseye")
        self.assertGreater(result["bullseyeVolumeNode"].GetImageData().GetNumberOfScalarComponents(), 1)
        self.delayDisplay("Test passed")

    def test_FibrosisCamAndQualityControlWhenModelsAreRegistered(self):
        logic = CardiacAILogic()
        if not self._torchOrSkip(logic, "test_FibrosisCamAndQualityControlWhenModelsAreRegistered"):
            return
        registered = self._registered(logic)
        paths = self._phantom(logic)
        imageNode = slicer.util.loadVolume(paths["image"])
        dimensions = imageNode.GetImageData().GetDimensions()
        if "qc_vae" in registered:
            self.delayDisplay("Quality control of the phantom labels, threshold 1: every assessed slice flagged")
            segmentationNode = logic.loadSegmentation(paths["segmentation"], imageNode)
            result = logic.checkQuality(imageNode, segmentationNode, threshold=1.0, writeSurrogate=True)
            self.assertEqual(result["qcTableNode"].GetNumberOfRows(), dimensions[2])
            self.assertTrue(result["flaggedSlices"] and result["warnings"], result["warnings"])
            self.assertIsNotNone(result["surrogateSegmentationNode"])
        if "weak_cam_classifier" in registered:
            self.delayDisplay("CAM of the phantom")
            result = logic.explainCam(imageNode, explain="predicted")
            cam = slicer.util.arrayFromVolume(result["camVolumeNode"])
            self.assertEqual(cam.shape[::-1], dimensions)
            self.assertTrue(0.0 <= float(cam.min()) and float(cam.max()) <= 1.0)
            self.assertEqual(result["slicesTableNode"].GetNumberOfRows(), dimensions[2])
            self.assertNotIn("structuresSegmentationNode", result)
            self.delayDisplay("CAM with the label-free RV / myocardium / LV estimate")
            result = logic.explainCam(imageNode, explain="predicted", structures=True)
            structures = result["structuresSegmentationNode"]
            heart = result["segmentationNode"]
            self.assertLessEqual(structures.GetSegmentation().GetNumberOfSegments(), 3)
            if heart.GetSegmentation().GetNumberOfSegments():  # a heart was found: it is divided, nothing added
                self.assertGreater(structures.GetSegmentation().GetNumberOfSegments(), 0)
            summary = result["summaryTableNode"]
            measurements = [summary.GetTable().GetValueByName(r, "Measurement").ToString()
                            for r in range(summary.GetNumberOfRows())]
            self.assertTrue(any(m.startswith("Estimated Left ventricle blood pool") for m in measurements))
        if {"lge_myocardium", "lge_fibrosis_weak"} <= registered:
            self.delayDisplay("LGE fibrosis on the phantom image (no scar expected)")
            result = logic.quantifyFibrosis(imageNode)
            self.assertEqual(result["slicesTableNode"].GetNumberOfRows(), dimensions[2])
            self.assertEqual(result["summaryTableNode"].GetTable().GetValueByName(0, "Unit").ToString(), "mL")
        self.delayDisplay("Test passed (capabilities without registered models were skipped)")

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
        if not self._torchOrSkip(logic, "test_CineSegmentationAndFunctionOnPhantomWhenModelsAreRegistered"):
            return
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
        if {"qc_vae", "qc_dice_regressor"} <= registered:  # QC runs by default with the bundled QC models
            self.assertIsNotNone(result["qcTableNode"], f"no QC table; warnings: {result['warnings']}")
            self.assertEqual(result["qcTableNode"].GetNumberOfRows(), imageNode.GetImageData().GetDimensions()[2])

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

    def test_CineSequenceChoosesEdAndEsFromTheVolumeCurveWhenModelsAreRegistered(self):
        """A three-frame phantom cine (ED, ES, and the ED heart shrunk by 10 %) through analyseCineSequence: ED is
        the fullest frame, ES the emptiest. Runs where the localiser and baseline cine models are installed."""
        logic = CardiacAILogic()
        logic.setupPythonRequirements(requireTorch=False)
        names = importBackend("regions.pipeline").CINE_MODEL_NAMES
        required = {names["localiser"], names["baseline"]}
        registered = self._registered(logic)
        if not required <= registered:
            self.delayDisplay(f"Skipped cine sequence test: models {sorted(required - registered)} are not registered.")
            return
        if not self._torchOrSkip(logic, "test_CineSequenceChoosesEdAndEsFromTheVolumeCurveWhenModelsAreRegistered"):
            return
        phantom = importBackend("phantom")
        cases = [phantom.make_cine_phantom(seed=5, phase="ED"), phantom.make_cine_phantom(seed=5, phase="ES"),
                 phantom.make_cine_phantom(seed=5, phase="ED", scale=0.9)]
        sequenceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "phantom cine")
        sequenceNode.SetIndexName("time")
        sequenceNode.SetIndexUnit("ms")
        for case, time in zip(cases, (0, 150, 300)):
            frameNode = self._volumeNode("frame", case.image.array, case.image.geometry)
            sequenceNode.SetDataNodeAtValue(frameNode, str(time))
            slicer.mrmlScene.RemoveNode(frameNode)

        self.delayDisplay("Frames that are not scalar volumes, and equal ED/ES frames, are refused before running")
        with self.assertRaises(ValueError):
            logic.analyseCineSequence(sequenceNode, edFrame=1, esFrame=1)
        with self.assertRaises(ValueError):
            logic.analyseCineSequence(sequenceNode, edFrame=3)
        labelSequenceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "label sequence")
        for time in (0, 1):
            labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
            slicer.util.updateVolumeFromArray(labelNode, cases[0].labels.array)
            labelSequenceNode.SetDataNodeAtValue(labelNode, str(time))
            slicer.mrmlScene.RemoveNode(labelNode)
        with self.assertRaises(ValueError):
            logic.analyseCineSequence(labelSequenceNode)

        self.delayDisplay("Segmenting every frame with one cardiacai batch, then the function of ED and ES")
        progress = []
        result = logic.analyseCineSequence(sequenceNode, mode="baseline", qc=False,
                                           progressCallback=lambda fraction, message: progress.append(fraction))
        self.assertEqual((result["edFrame"], result["esFrame"]), (0, 1), result["lvBloodPoolMl"])
        self.assertEqual(result["framesChosen"], {"ED": True, "ES": True})
        table = result["curveTableNode"].GetTable()
        self.assertEqual(result["curveTableNode"].GetNumberOfRows(), 3)
        self.assertEqual([table.GetValueByName(k, "time (ms)").ToDouble() for k in range(3)], [0.0, 150.0, 300.0])
        self.assertEqual([table.GetValueByName(k, "Phase").ToString() for k in range(3)], ["ED", "ES", ""])
        curve = [table.GetValueByName(k, "LV blood pool (ml)").ToDouble() for k in range(3)]
        self.assertTrue(curve[0] > curve[2] > curve[1], curve)
        self.assertEqual(result["edVolumeNode"].GetName(), "phantom cine ED (frame 0)")
        self.assertEqual(result["esVolumeNode"].GetName(), "phantom cine ES (frame 1)")
        self.assertTrue((slicer.util.arrayFromVolume(result["esVolumeNode"]) == cases[1].image.array).all())
        # ED and ES are segmented again by computeFunction with the same model: the same volumes as on the curve
        self.assertAlmostEqual(result["function"]["lv_edv_ml"], curve[0], places=2)
        self.assertAlmostEqual(result["function"]["lv_esv_ml"], curve[1], places=2)
        self.assertEqual(result["functionTableNode"].GetNumberOfRows(), 9)
        self.assertTrue(progress and progress[-1] == 1.0, f"progress went {progress}")

        self.delayDisplay("Given frames win over the curve")
        given = logic.analyseCineSequence(sequenceNode, edFrame=2, mode="baseline", qc=False)
        self.assertEqual((given["edFrame"], given["esFrame"]), (2, 1))
        self.assertEqual(given["framesChosen"], {"ED": False, "ES": True})
        self.delayDisplay("Test passed")
