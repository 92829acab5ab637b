"""CardiacAITraining: train CardiacAI's networks from 3D Slicer (Module, Widget, Logic and Test).

Training runs ``cardiacai train ...`` in a separate process through the CardiacAI module's Logic (same bundled
backend, same PythonSlicer launcher, same progress lines and Stop handling), so a long training never blocks or
crashes Slicer. Nothing from ``cardiac_ai`` or PyTorch is imported when Slicer starts.
"""

import logging
import os
import pathlib
from typing import Annotated, Callable, Optional

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403 - the template's way to get the four base classes
from slicer.util import VTKObservationMixin

#: Networks that can be trained; names match the CardiacAI task names.
TRAINING_TASKS = ("segmentation",)
DEVICES = ("auto", "cpu", "cuda")


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
    outputFolder - where weights, model card and log are written.
    task - which network to train, one of TRAINING_TASKS.
    epochs - passes over the training data.
    device - "auto" (CUDA when available), "cpu" or "cuda".
    """

    dataFolder: pathlib.Path
    outputFolder: pathlib.Path
    task: Annotated[str, Choice(TRAINING_TASKS)] = "segmentation"
    epochs: Annotated[int, WithinRange(1, 10000)] = 100
    device: Annotated[str, Choice(DEVICES)] = "auto"


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
                try:
                    self.logic.train(
                        self._parameterNode, progressCallback=self._onProgress, shouldCancel=self._shouldStop
                    )
                    self.ui.statusLabel.text = _("Training finished.")
                except Cancelled:
                    self.ui.statusLabel.text = _("Training stopped.")
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

    def getParameterNode(self) -> CardiacAITrainingParameterNode:
        return CardiacAITrainingParameterNode(super().getParameterNode())

    def log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    def trainOptions(self, dataFolder, outputFolder, task: str, epochs: int, device: str) -> dict:
        """The ``cardiacai train`` options for these settings, after checking them.

        :raises ValueError: if a folder is not chosen or missing, or task, epochs or device are invalid.
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
        return {"data": dataFolder, "out": outputFolder, "task": task, "epochs": int(epochs), "device": device}

    def buildTrainCommand(
        self, dataFolder, outputFolder, task: str, epochs: int, device: str, pythonExecutable=None
    ) -> list:
        """The full ``PythonSlicer -m cardiac_ai train ... --progress-lines`` argument list (for display and logs)."""
        from CardiacAI import CardiacAILogic, importBackend

        options = self.trainOptions(dataFolder, outputFolder, task, epochs, device)
        python = pythonExecutable or CardiacAILogic.pythonExecutable()
        return importBackend("subprocess_runner").build_command("train", [], options, python_executable=python)

    def train(
        self,
        parameterNode: CardiacAITrainingParameterNode,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        shouldCancel: Optional[Callable[[], bool]] = None,
    ):
        """Run ``cardiacai train`` with the settings of ``parameterNode`` and wait for it to finish.

        PyTorch and the backend's packages are installed first if missing. Whether a task can be trained is decided
        by the backend: a version that cannot train it exits with a one-line error, raised here as CommandError.

        :raises ValueError: invalid settings (see trainOptions).
        :raises cardiac_ai.subprocess_runner.CommandError: the backend failed; the message is its one-line error.
        :raises cardiac_ai.errors.Cancelled: shouldCancel returned True; the training process tree is gone.
        """
        from CardiacAI import CardiacAILogic

        options = self.trainOptions(
            parameterNode.dataFolder, parameterNode.outputFolder, parameterNode.task, parameterNode.epochs,
            parameterNode.device,
        )
        runner = CardiacAILogic()
        runner.logCallback = self.logCallback
        runner.setupPythonRequirements(requireTorch=True)
        return runner.runCommand("train", [], options, progressCallback=progressCallback, shouldCancel=shouldCancel)


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

    def test_TrainCommandCarriesTheSettings(self):
        logic = CardiacAITrainingLogic()
        dataFolder = slicer.util.tempDirectory()
        outputFolder = os.path.join(slicer.util.tempDirectory(), "model")
        command = logic.buildTrainCommand(dataFolder, outputFolder, "segmentation", 3, "cpu", pythonExecutable="python")
        self.assertEqual(command[:4], ["python", "-m", "cardiac_ai", "train"])
        for flag, value in (("--data", dataFolder), ("--out", outputFolder), ("--task", "segmentation"),
                            ("--epochs", "3"), ("--device", "cpu")):
            self.assertEqual(command[command.index(flag) + 1], value)
        self.assertEqual(command[-1], "--progress-lines")
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
        self.delayDisplay("Test passed")
