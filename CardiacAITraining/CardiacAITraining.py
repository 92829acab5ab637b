"""CardiacAITraining: train CardiacAI's networks from 3D Slicer (Module, Widget, Logic and Test).

Each task trains one model family of the project (``cardiac_ai.slicer_results.TRAINING_TASKS``): a custom
segmentation U-Net with ``cardiacai train``, and the cine, mapping, QC, weak (ACDC CAM) and EMIDEC fibrosis models
with the ``scripts/train_*.py`` entry points of a source checkout. Training runs in a separate process (same bundled
backend, same PythonSlicer launcher and Stop handling as the CardiacAI module), so a long training never blocks or
crashes Slicer. Nothing from ``cardiac_ai`` or PyTorch is imported when Slicer starts.

While it runs, the progress bar follows the ``PROGRESS`` lines of the process (``--progress-lines``: a training
script reports each stage's share of the run and the epochs inside it), the loss and validation metrics of
``<output>/checkpoints/log.csv`` are plotted (a table, plot series and a plot chart node, refreshed whenever the
file changes) and the other process output goes to the log. When it finishes, the model is registered
(``--register-to``) in the CardiacAI models folder, which CardiacAI passes to the backend as ``--models-dir``, so
CardiacAI finds the new model by its name and version.

From Slicer's Python console::

    logic = CardiacAITraining.CardiacAITrainingLogic()
    parameters = logic.getParameterNode()
    parameters.dataFolder, parameters.outputFolder = pathlib.Path("ACDC/training"), pathlib.Path("run1")
    parameters.epochs = 5
    result = logic.train(parameters)  # blocks; result["series"]["train_loss"], result["registeredCard"]
    parameters.task = "qc"                # scripts/train_qc.py on an ACDC folder (source checkout only)
"""

import glob
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Annotated, Callable, Optional

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403 - the template's way to get the four base classes
from slicer.util import VTKObservationMixin

#: Model families that can be trained: the keys of cardiac_ai.slicer_results.TRAINING_TASKS. "segmentation" runs
#: ``cardiacai train``; the others run scripts/train_*.py of a source checkout (see scriptsDirectory()).
TRAINING_TASKS = ("segmentation", "cine", "mapping", "qc", "weak", "fibrosis", "weak-cam")
#: Seconds between two looks at the training scripts' log.csv files (each stage of a script writes its own).
LOG_POLL_S = 2.0
DEVICES = ("auto", "cpu", "cuda")
#: ``cardiacai train --layout``: how the data folder is organised (auto: detected from its content).
LAYOUTS = ("auto", "acdc", "emidec", "generic")
#: What Start does with an earlier run in the output folder (cardiac_ai.slicer_results.EARLIER_RUN_CHOICES): refuse
#: to touch it, continue it from its last checkpoint (--resume), or remove it and start again (--overwrite).
EARLIER_RUNS = ("refuse", "resume", "restart")
#: qt.QSettings key of the folder where trained models are registered; CardiacAI passes it as --models-dir.
MODELS_FOLDER_SETTING = "CardiacAI/ModelsFolder"
#: Columns of log.csv that are not plotted (the x axis, the learning rate and the epoch duration).
NOT_PLOTTED_COLUMNS = ("epoch", "lr", "seconds")
#: Model names and versions the backend's model registry accepts (cardiac_ai/models/registry.py).
MODEL_NAME_PATTERN = r"[a-z0-9][a-z0-9_]*"
MODEL_VERSION_PATTERN = r"[0-9]+(\.[0-9]+){0,3}"
#: Colours of the plotted series, in column order.
PLOT_COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74))


def defaultModelsFolder() -> str:
    """``<folder of Slicer's user settings file>/CardiacAI/Models``: kept across Slicer and extension updates."""
    return os.path.join(os.path.dirname(slicer.app.slicerUserSettingsFilePath), "CardiacAI", "Models")


def modelsFolder() -> str:
    """The folder where trained models are registered: the "CardiacAI/ModelsFolder" setting, or the default."""
    value = qt.QSettings().value(MODELS_FOLDER_SETTING, "")
    return str(value) if value else defaultModelsFolder()


def setModelsFolder(folder) -> None:
    """Store the models folder in the "CardiacAI/ModelsFolder" setting (read by CardiacAI when it runs the backend)."""
    qt.QSettings().setValue(MODELS_FOLDER_SETTING, str(folder))


def scriptsDirectory() -> Optional[str]:
    """``scripts/`` of the source checkout this module runs from, or None (an installed extension has none)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
    return folder if os.path.isdir(folder) else None


#
# CardiacAITraining
#


class CardiacAITraining(ScriptedLoadableModule):  # noqa: F405
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("Cardiac AI Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = ["CardiacAI"]  # runs the backend through CardiacAI's Logic
        self.parent.contributors = ["CardiacAI contributors"]
        self.parent.helpText = _("""
Train CardiacAI's networks on a folder of cases, in a separate process that Stop ends.
The same training runs without Slicer with <code>cardiacai train</code>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's scripted module template (Jean-Christophe Fillion-Robin, Kitware Inc.; Andras Lasso, PerkLab;
Steve Pieper, Isomics, Inc.).
""")


#
# CardiacAITrainingParameterNode
#


@parameterNodeWrapper
class CardiacAITrainingParameterNode:
    """
    The parameters of the module, saved with the scene.

    dataFolder - folder with the training cases.
    layout - how dataFolder is organised, one of LAYOUTS ("auto" detects it).
    outputFolder - the run folder: checkpoints, log.csv, config and split are written there.
    task - which model family to train, one of TRAINING_TASKS.
    epochs - passes over the training data.
    device - "auto" (CUDA when available), "cpu" or "cuda".
    modelName, modelVersion - name and version under which the trained model is registered (segmentation; the
        other tasks register their models under their own names, version 1.0).
    registerModel - register the trained model in the CardiacAI models folder, so CardiacAI can use it.
    labelColumn - weak-cam: the labels.csv column holding the image-level labels (ACDC: its diagnoses, Info.cfg's
        Group, whatever the name; "diagnosis" and "group" both work).
    samplingRatio - segmentation: region-aware batch sampling, basal and apical slices this many times as likely as
        mid-ventricular ones (the paper used 4 and 20); 1 draws every slice equally (the default).
    earlierRun - what Start does when the output folder holds an earlier run, one of EARLIER_RUNS: "refuse" (the
        default: nothing is touched), "resume" (continue from its last checkpoint) or "restart" (its checkpoints are
        removed and training starts again; after such a Start the panel goes back to "refuse", so a later Start
        cannot remove a run by a choice made earlier). The training scripts always continue the stages already in
        their folder.
    """

    dataFolder: pathlib.Path
    outputFolder: pathlib.Path
    task: Annotated[str, Choice(TRAINING_TASKS)] = "segmentation"
    epochs: Annotated[int, WithinRange(1, 10000)] = 100
    device: Annotated[str, Choice(DEVICES)] = "auto"
    layout: Annotated[str, Choice(LAYOUTS)] = "auto"
    modelName: str = "custom_unet2d"
    modelVersion: str = "1.0"
    registerModel: bool = True
    labelColumn: str = "diagnosis"
    samplingRatio: Annotated[float, WithinRange(1.0, 100.0)] = 1.0
    earlierRun: Annotated[str, Choice(EARLIER_RUNS)] = "refuse"


#
# CardiacAITrainingWidget
#


class CardiacAITrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._stopRequested = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacAITraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CardiacAITrainingLogic()
        self.logic.logCallback = self._onLog

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.modelsFolderPathLineEdit.currentPath = modelsFolder()
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderChanged)
        self.ui.stopButton.enabled = False
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = 0

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._stopRequested = True
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[CardiacAITrainingParameterNode]) -> None:
        """Set the parameter node; the .ui widgets bind to it by their SlicerParameterName property."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self.ui.startButton.enabled = bool(self._parameterNode) and not self._running

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self.ui.startButton.enabled = not running
        self.ui.stopButton.enabled = running
        self.ui.settingsCollapsibleButton.enabled = not running
        if running:
            self.ui.progressBar.value = 0

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def _onLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onModelsFolderChanged(self, path: str) -> None:
        if path:
            setModelsFolder(path)

    def _shouldStop(self) -> bool:
        slicer.app.processEvents()  # keeps the GUI responsive and lets Stop be clicked while training runs
        return self._stopRequested

    def onStopButton(self) -> None:
        self._stopRequested = True
        self.ui.statusLabel.text = _("Stopping...")

    def onStartButton(self) -> None:
        if self._running:
            return
        self._stopRequested = False
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = ""
        self._setRunning(True)
        try:
            with slicer.util.tryWithErrorDisplay(_("Training did not complete."), waitCursor=False):
                from CardiacAI import importBackend

                Cancelled = importBackend("errors").Cancelled
                self.logic.checkSettings(self._parameterNode)  # a bad setting changes neither the scene nor the layout
                restart = self._parameterNode.earlierRun == "restart"
                # The live loss plot: the Logic refills this chart's table whenever log.csv changes.
                chartNode = self.logic.resetLossPlot(self._parameterNode.modelName)
                slicer.modules.plots.logic().ShowChartInLayout(chartNode)
                try:
                    result = self.logic.train(
                        self._parameterNode, progressCallback=self._onProgress, shouldCancel=self._shouldStop
                    )
                    if result["registeredCard"]:
                        self.ui.statusLabel.text = _("Training finished; the model is registered for CardiacAI.")
                    else:
                        self.ui.statusLabel.text = _("Training finished.")
                except Cancelled:
                    self.ui.statusLabel.text = _("Training stopped.")
                finally:
                    if restart:  # the earlier run is gone now: a later Start must not remove this one unasked
                        self._parameterNode.earlierRun = "refuse"
        finally:
            self._setRunning(False)


#
# CardiacAITrainingLogic
#


class CardiacAITrainingLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """Builds and runs ``cardiacai train``; usable without the GUI.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405
        self.logCallback: Optional[Callable[[str], None]] = None
        #: The live loss plot: chart, its table (one row per epoch) and one series per plotted column.
        self.lossChartNode = None
        self.lossTableNode = None
        self.lossSeriesNodes: dict = {}
        self._logStamp = None  # (mtime, size) of log.csv when it was last plotted

    def getParameterNode(self) -> CardiacAITrainingParameterNode:
        return CardiacAITrainingParameterNode(super().getParameterNode())

    def log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    def trainOptions(
        self,
        dataFolder,
        outputFolder,
        task: str,
        epochs: int,
        device: str,
        layout: str = "auto",
        modelName: str = "custom_unet2d",
        modelVersion: str = "1.0",
        registerTo=None,
        labelColumn: str = "diagnosis",
        samplingRatio: float = 1.0,
        earlierRun: str = "refuse",
    ) -> dict:
        """The ``cardiacai train`` options for these settings, after checking them.

        :param registerTo: folder to register the trained model in (``--register-to``); None: not registered.
        :param earlierRun: an earlier run in the output folder: "refuse" it, "resume" it (``--resume``) or "restart"
            (``--overwrite``; not for the training scripts, which continue their stages).
        :raises ValueError: if a folder is not chosen or missing, or task, epochs, device, layout, model name,
            model version or the earlier-run choice are invalid.
        """
        dataFolder = str(dataFolder or "")
        outputFolder = str(outputFolder or "")
        if dataFolder in ("", ".") or not os.path.isdir(dataFolder):
            raise ValueError(f"Choose the folder that holds the training cases (got {dataFolder!r}).")
        if outputFolder in ("", "."):
            raise ValueError("Choose an output folder for the trained model.")
        if os.path.abspath(outputFolder) == os.path.abspath(dataFolder):
            raise ValueError(
                "The output folder must differ from the data folder, so training never writes into your data."
            )
        if task not in TRAINING_TASKS:
            raise ValueError(f"Unknown training task {task!r}; choose one of {', '.join(TRAINING_TASKS)}.")
        if not 1 <= int(epochs) <= 10000:
            raise ValueError(f"Epochs must be between 1 and 10000, got {epochs}.")
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown data layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
        if not re.fullmatch(MODEL_NAME_PATTERN, modelName or ""):
            raise ValueError(
                f"Model name {modelName!r} is not valid: use lower-case letters, digits and '_', not starting with "
                "'_' (for example custom_unet2d)."
            )
        if not re.fullmatch(MODEL_VERSION_PATTERN, modelVersion or ""):
            raise ValueError(
                f"Model version {modelVersion!r} is not valid: use one to four dotted numbers such as 1.0 or 2.1.3."
            )
        options = {"data": dataFolder, "layout": layout, "out": outputFolder, "task": task, "epochs": int(epochs),
                   "device": device, "model_name": modelName, "model_version": modelVersion}
        if task == "weak-cam":
            if layout != "acdc" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ -]*", labelColumn or ""):
                raise ValueError(
                    f"Label column {labelColumn!r} is not valid: give the labels.csv column that holds the image-level "
                    "labels (for example diagnosis)."
                )
            options["label_column"] = labelColumn
        if not 1.0 <= float(samplingRatio) <= 100.0:
            raise ValueError(f"The batch sampling ratio must be between 1 (uniform) and 100, got {samplingRatio}.")
        if float(samplingRatio) > 1.0:
            if task != "segmentation":
                raise ValueError("Region-aware batch sampling applies to the segmentation task only; set the ratio "
                                 "to 1 for the other tasks.")
            options["sampling_ratio"] = float(samplingRatio)
        if earlierRun not in EARLIER_RUNS:
            raise ValueError(
                f"Unknown choice for an earlier run {earlierRun!r}; choose one of {', '.join(EARLIER_RUNS)}."
            )
        script = task not in ("segmentation", "weak-cam", "fibrosis")  # the others run scripts/train_*.py
        if earlierRun == "restart" and script:
            raise ValueError(f"The {task} training script continues the stages already in its output folder; choose an "
                             "empty output folder to start again.")
        options["resume"] = earlierRun == "resume"
        options["overwrite"] = earlierRun == "restart"
        if earlierRun == "refuse" and not script and os.path.isdir(outputFolder) and os.listdir(outputFolder):
            raise ValueError(
                f"The output folder {outputFolder} already holds files (an earlier run?). Under 'Earlier run', choose "
                "'resume' to continue it or 'restart' to remove its checkpoints and start again, or choose an empty "
                "output folder."
            )
        if registerTo:
            if os.path.abspath(str(registerTo)) in (os.path.abspath(dataFolder), os.path.abspath(outputFolder)):
                raise ValueError("The models folder must differ from the data and output folders.")
            options["register_to"] = str(registerTo)
        return options

    def buildTrainCommand(
        self, dataFolder, outputFolder, task: str, epochs: int, device: str, pythonExecutable=None,
        scriptsDir=None, **settings
    ) -> list:
        """The full command line that trains ``task`` (for running, display and logs).

        "segmentation": ``PythonSlicer -m cardiac_ai train ... --progress-lines``; the other tasks:
        ``PythonSlicer <scripts>/train_*.py --data ... --work <output> --device ... --<epochs options> N
        --progress-lines`` (``cardiac_ai.slicer_results.training_command``).

        :param scriptsDir: the checkout's scripts folder; default :func:`scriptsDirectory`.
        :param settings: layout, modelName, modelVersion, registerTo, labelColumn, samplingRatio, earlierRun, as for
            :meth:`trainOptions`.
        :raises ValueError: invalid settings, or a script task without the scripts folder.
        """
        from CardiacAI import CardiacAILogic, importBackend

        options = self.trainOptions(dataFolder, outputFolder, task, epochs, device, **settings)
        python = pythonExecutable or CardiacAILogic.pythonExecutable()
        return importBackend("slicer_results").training_command(
            task, python_executable=python, data=options["data"], out=options["out"], epochs=options["epochs"],
            device=options["device"], layout=options["layout"], model_name=options["model_name"],
            model_version=options["model_version"], register_to=options.get("register_to"),
            scripts_dir=scriptsDir if scriptsDir is not None else scriptsDirectory(),
            label_column=options.get("label_column"), sampling_ratio=options.get("sampling_ratio"),
            earlier_run="resume" if options["resume"] else "restart" if options["overwrite"] else "refuse",
        )

    # -- live loss plot -------------------------------------------------------------------------------------------

    @staticmethod
    def trainingLogPath(outputFolder) -> str:
        """``<outputFolder>/checkpoints/log.csv``, which ``cardiacai train`` rewrites after every epoch."""
        return os.path.join(str(outputFolder), "checkpoints", "log.csv")

    def resetLossPlot(self, name: str = "CardiacAI training"):
        """Make the plot chart, table and series nodes of a new run (replacing the previous run's series).

        :return: the vtkMRMLPlotChartNode; show it with ``slicer.modules.plots.logic().ShowChartInLayout(node)``.
        """
        for seriesNode in self.lossSeriesNodes.values():
            if seriesNode.GetScene():
                slicer.mrmlScene.RemoveNode(seriesNode)
        self.lossSeriesNodes = {}
        self._logStamp = None
        if self.lossTableNode is None or self.lossTableNode.GetScene() is None:
            self.lossTableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} training log")
        else:
            self.lossTableNode.RemoveAllColumns()
        if self.lossChartNode is None or self.lossChartNode.GetScene() is None:
            self.lossChartNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} training")
        self.lossChartNode.SetTitle(f"Training: {name}")
        self.lossChartNode.SetXAxisTitle("Epoch")
        self.lossChartNode.SetYAxisTitle("Loss / metric")
        return self.lossChartNode

    def updateLossPlot(self, logPath: str, force: bool = False) -> Optional[dict]:
        """Refill the loss plot from ``logPath`` (a training log.csv) if the file changed since the last call.

        Every column except NOT_PLOTTED_COLUMNS becomes a series over the epochs; a metric computed only in some
        epochs (validation) has gaps (NaN).

        :return: the series (``cardiac_ai.slicer_results.training_log_series``), or None when the file is missing,
            unchanged, or cannot be read (then the plot keeps the previous values and the reason is logged).
        """
        try:
            stat = os.stat(logPath)
        except OSError:
            return None  # no epoch finished yet
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._logStamp and not force:
            return None
        from CardiacAI import CardiacAILogic, importBackend

        results = importBackend("slicer_results")
        try:
            with open(logPath, encoding="utf-8") as f:
                series = results.training_log_series(f.read())
        except (OSError, UnicodeDecodeError, importBackend("errors").DataError) as error:
            self.log(f"Training log {logPath} not plotted: {error}")
            return None
        self._logStamp = stamp
        if not series:
            return series
        if self.lossChartNode is None or self.lossChartNode.GetScene() is None:
            self.resetLossPlot()
        names = list(series)
        rows = [{name: series[name][index] for name in names} for index in range(len(series["epoch"]))]
        CardiacAILogic().fillTable(self.lossTableNode, rows, self.lossTableNode.GetName())
        for column in names:
            if column in NOT_PLOTTED_COLUMNS or column in self.lossSeriesNodes:
                continue
            seriesNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
            seriesNode.SetAndObserveTableNodeID(self.lossTableNode.GetID())
            seriesNode.SetXColumnName("epoch")
            seriesNode.SetYColumnName(column)
            seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            seriesNode.SetColor(*PLOT_COLORS[len(self.lossSeriesNodes) % len(PLOT_COLORS)])
            self.lossChartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
            self.lossSeriesNodes[column] = seriesNode
        return series

    @staticmethod
    def _settings(parameterNode: CardiacAITrainingParameterNode) -> dict:
        registerTo = modelsFolder() if parameterNode.registerModel else None
        return {"layout": parameterNode.layout, "modelName": parameterNode.modelName,
                "modelVersion": parameterNode.modelVersion, "registerTo": registerTo,
                "labelColumn": parameterNode.labelColumn, "samplingRatio": parameterNode.samplingRatio,
                "earlierRun": parameterNode.earlierRun}

    def checkSettings(self, parameterNode: CardiacAITrainingParameterNode) -> dict:
        """The options :meth:`trainOptions` makes of ``parameterNode``'s settings; ValueError for an invalid one,
        before anything (the loss plot, the run folder) is made."""
        return self.trainOptions(parameterNode.dataFolder, parameterNode.outputFolder, parameterNode.task,
                                 parameterNode.epochs, parameterNode.device, **self._settings(parameterNode))

    def train(
        self,
        parameterNode: CardiacAITrainingParameterNode,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
    ) -> dict:
        """Run ``cardiacai train`` with the settings of ``parameterNode`` and wait for it to finish.

        PyTorch and the backend's packages are installed first if missing. Whether a task can be trained is decided
        by the backend: a version that cannot train it exits with a one-line error, raised here as CommandError.
        ``progressCallback`` gets the (fraction, message) of every ``PROGRESS`` line of the backend or training
        script. The loss plot (:meth:`updateLossPlot`) is refreshed after each progress line of ``cardiacai train``
        and every few seconds from the log.csv a training script is writing. With
        ``registerModel``, the model is registered in :func:`modelsFolder` (and that folder stored in the
        "CardiacAI/ModelsFolder" setting), where CardiacAI looks for models.

        :return: dict with "chartNode" (the loss plot), "series" (the last log.csv columns, or None), "logPath",
            "registeredCard" (path of the registered model card, or None) and "run" (the CompletedRun).
        :raises ValueError: invalid settings (see trainOptions).
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed; the message is its one-line error.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True; the training process tree is gone.
        """
        from CardiacAI import CardiacAILogic, importBackend, moduleDirectory

        task = parameterNode.task
        settings = self._settings(parameterNode)
        registerTo = settings["registerTo"]
        options = self.checkSettings(parameterNode)
        command = self.buildTrainCommand(parameterNode.dataFolder, parameterNode.outputFolder, task,
                                         parameterNode.epochs, parameterNode.device, **settings)
        results = importBackend("slicer_results")
        logPath = self.trainingLogPath(options["out"])
        if self.lossChartNode is None or self.lossChartNode.GetScene() is None:
            self.resetLossPlot(parameterNode.modelName if task == "segmentation" else task)
        self._logStamp = None

        def onProgress(fraction: float, message: str) -> None:
            self.updateLossPlot(logPath)  # re-reads log.csv only when the file changed
            if progressCallback:
                progressCallback(fraction, message)

        runner = CardiacAILogic()
        runner.logCallback = self.logCallback
        runner.setupPythonRequirements(requireTorch=True)
        if registerTo:
            os.makedirs(registerTo, exist_ok=True)
            setModelsFolder(registerTo)  # CardiacAI passes this folder to the backend as --models-dir
        if task == "segmentation":
            run = runner.runCommand("train", [], options, progressCallback=onProgress, shouldCancel=shouldCancel)
            series = self.updateLossPlot(logPath, force=True)
            registeredCard = next(
                (line.split(" ", 1)[1].strip() for line in run.output_lines if line.startswith("Registered ")), None
            )
        else:
            # The script's PROGRESS lines (--progress-lines, in the command) drive progressCallback; its stages write
            # one log.csv each, so the plot follows the newest log.csv under the output folder.
            lastLook = [0.0]

            def shouldStop() -> bool:
                if time.monotonic() - lastLook[0] > LOG_POLL_S:
                    lastLook[0] = time.monotonic()
                    latest = results.latest_training_log(options["out"])
                    if latest is not None:
                        self.updateLossPlot(str(latest))
                return bool(shouldCancel and shouldCancel())

            self.log("Running: " + " ".join(command))
            env = slicer.util.startupEnvironment()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDirectory(), env.get("PYTHONPATH")) if p)
            os.makedirs(options["out"], exist_ok=True)
            run = importBackend("subprocess_runner").run_with_progress(
                command, on_progress=progressCallback, on_output=self.log, should_cancel=shouldStop,
                cwd=options["out"], env=env,
            )
            latest = results.latest_training_log(options["out"])
            logPath = str(latest) if latest is not None else logPath
            series = self.updateLossPlot(logPath, force=True)
            registeredCard = self.registerScriptModels(task, options["out"], registerTo, run.output_lines)
        if registeredCard:
            self.log(f"Registered {registeredCard} in {registerTo}: CardiacAI finds it there (it uses the highest "
                     "version of each model name it needs).")
        return {"chartNode": self.lossChartNode, "series": series, "logPath": logPath,
                "registeredCard": registeredCard, "run": run}

    def registerScriptModels(self, task: str, outputFolder, registerTo, outputLines=()) -> Optional[str]:
        """Copy the models a training script registered in ``<output>/models`` into the CardiacAI models folder.

        ``cardiacai train --task fibrosis`` and ``--task weak-cam`` register straight into ``registerTo``
        (``--register-to``) and say so in a "Registered ... in ..." line of ``outputLines``, which names what this
        run registered (not the cards earlier runs left in the folder). A model card and its weights are copied
        together; a model already in ``registerTo`` with the same name and version is replaced.

        :return: the models registered or the copied card files, comma-separated, or None when nothing was.
        """
        if not registerTo:
            return None
        if task in ("fibrosis", "weak-cam"):  # these write straight into registerTo
            said = [line[len("Registered "):].split(" in ", 1)[0] for line in outputLines
                    if line.startswith("Registered ")]
            return ", ".join(said) or None
        source = os.path.join(str(outputFolder), "models")
        copied = []
        for card in sorted(glob.glob(os.path.join(source, "*.json"))):
            stem = os.path.splitext(os.path.basename(card))[0]
            for path in glob.glob(os.path.join(source, stem + ".*")):
                shutil.copy2(path, os.path.join(str(registerTo), os.path.basename(path)))
            copied.append(os.path.basename(card))
        return ", ".join(copied) or None


#
# CardiacAITrainingTest
#


class CardiacAITrainingTest(ScriptedLoadableModuleTest):  # noqa: F405
    """
    Checks the Logic's settings validation and the command it builds; training itself is tested in the backend.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainCommandCarriesTheSettings()
        self.setUp()
        self.test_InvalidSettingsAreRejectedBeforeRunning()
        self.setUp()
        self.test_LossPlotFollowsTheTrainingLog()

    def test_TrainCommandCarriesTheSettings(self):
        logic = CardiacAITrainingLogic()
        dataFolder = slicer.util.tempDirectory()
        outputFolder = os.path.join(slicer.util.tempDirectory(), "model")
        modelsDir = os.path.join(slicer.util.tempDirectory(), "models")
        command = logic.buildTrainCommand(
            dataFolder, outputFolder, "segmentation", 3, "cpu", pythonExecutable="python", layout="acdc",
            modelName="cine_baseline", modelVersion="2.0", registerTo=modelsDir, samplingRatio=20.0,
        )
        self.assertEqual(command[:4], ["python", "-m", "cardiac_ai", "train"])
        for flag, value in (("--data", dataFolder), ("--out", outputFolder), ("--task", "segmentation"),
                            ("--epochs", "3"), ("--device", "cpu"), ("--layout", "acdc"),
                            ("--model-name", "cine_baseline"), ("--model-version", "2.0"),
                            ("--register-to", modelsDir), ("--sampling-ratio", "20.0")):
            self.assertEqual(command[command.index(flag) + 1], value)
        self.assertEqual(command[-1], "--progress-lines")
        unregistered = logic.buildTrainCommand(dataFolder, outputFolder, "segmentation", 3, "cpu",
                                               pythonExecutable="python")
        self.assertNotIn("--register-to", unregistered)
        self.assertNotIn("--sampling-ratio", unregistered)  # ratio 1: every slice drawn equally
        with self.assertRaises(ValueError):  # a segmentation-only option
            logic.buildTrainCommand(dataFolder, outputFolder, "weak-cam", 3, "cpu", pythonExecutable="python",
                                    samplingRatio=4.0)
        if scriptsDirectory():  # a source checkout: the other tasks run its training scripts
            qc = logic.buildTrainCommand(dataFolder, outputFolder, "qc", 3, "cpu", pythonExecutable="python")
            self.assertTrue(qc[1].endswith("train_qc.py"))
            self.assertEqual(qc[qc.index("--work") + 1], outputFolder)
            self.assertEqual(qc[-1], "--progress-lines")  # the script reports its stages and epochs
        else:
            with self.assertRaises(ValueError):
                logic.buildTrainCommand(dataFolder, outputFolder, "qc", 3, "cpu", pythonExecutable="python")
        self.delayDisplay("Test passed")

    def test_LossPlotFollowsTheTrainingLog(self):
        logic = CardiacAITrainingLogic()
        chartNode = logic.resetLossPlot("test")
        logPath = os.path.join(slicer.util.tempDirectory(), "log.csv")
        self.assertIsNone(logic.updateLossPlot(logPath))  # no epoch finished yet: nothing to plot
        with open(logPath, "w", encoding="utf-8") as f:
            f.write("epoch,train_loss,val_dice,lr,seconds\n1,0.9,0.41,0.001,3.2\n2,0.7,,0.001,3.1\n")
        series = logic.updateLossPlot(logPath)
        self.assertEqual(series["train_loss"], [0.9, 0.7])
        self.assertEqual(logic.lossTableNode.GetNumberOfRows(), 2)
        self.assertEqual(sorted(logic.lossSeriesNodes), ["train_loss", "val_dice"])
        self.assertEqual(chartNode.GetNumberOfPlotSeriesNodes(), 2)
        self.assertIsNone(logic.updateLossPlot(logPath))  # unchanged file: not read again
        with open(logPath, "a", encoding="utf-8") as f:
            f.write("3,0.5,0.62,0.001,3.0\n")
        self.assertEqual(logic.updateLossPlot(logPath, force=True)["epoch"], [1.0, 2.0, 3.0])
        self.assertEqual(logic.lossTableNode.GetNumberOfRows(), 3)
        self.assertEqual(chartNode.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")

    def test_InvalidSettingsAreRejectedBeforeRunning(self):
        logic = CardiacAITrainingLogic()
        folder = slicer.util.tempDirectory()
        with self.assertRaises(ValueError):
            logic.trainOptions("", os.path.join(folder, "out"), "segmentation", 10, "auto")
        with self.assertRaises(ValueError):
            logic.trainOptions(folder, folder, "segmentation", 10, "auto")
        with self.assertRaises(ValueError):
            logic.trainOptions(folder, os.path.join(folder, "out"), "no-such-task", 10, "auto")
        with self.assertRaises(ValueError):
            logic.trainOptions(folder, os.path.join(folder, "out"), "segmentation", 10, "auto", modelName="Bad-Name")
        with self.assertRaises(ValueError):
            logic.trainOptions(folder, os.path.join(folder, "out"), "segmentation", 10, "auto", modelVersion="v1")
        with self.assertRaises(ValueError):
            logic.trainOptions(folder, os.path.join(folder, "out"), "segmentation", 10, "auto", layout="mnms")
        self.delayDisplay("Test passed")
