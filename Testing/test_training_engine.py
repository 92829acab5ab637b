"""Behaviour of the training loop: learning, resume, cancel, early stopping, best checkpoint, samplers, config."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch

from cardiac_ai.errors import Cancelled, InputError, ModelError, OutputError
from cardiac_ai.models import ModelRegistry, build_network
from cardiac_ai.training import (
    QuadraticPositionSampler,
    Trainer,
    TrainerHook,
    TrainingConfig,
    build_loss,
    export_best_model,
    load_checkpoint,
    quadratic_position_weights,
)


class ThresholdSlices(torch.utils.data.Dataset):
    """Label = pixel > 0.5: learnable by a tiny U-Net in a few steps. Noise from the global generators makes the
    result depend on the RNG state the trainer saves and restores."""

    def __init__(self, n: int, seed: int, *, noise: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.random((n, 1, 16, 16)).astype(np.float32)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(self.images[index])
        label = (image > 0.5).long()
        if self.noise:
            image = image + self.noise * torch.randn(image.shape) + self.noise * float(np.random.randn())
        return {"image": image, "label": label}


def make_config(**changes) -> TrainingConfig:
    settings = dict(network="tiny_unet2d", network_kwargs={"out_channels": 2}, epochs=2, batch_size=4,
                    learning_rate=1e-2, seed=3)
    settings.update(changes)
    return TrainingConfig(**settings)


def make_network(config: TrainingConfig, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_network(config.network, **config.network_kwargs)


class ScriptedMetric:
    """metric_fn returning given values in turn."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, network, loader, device):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"score": value}


def cancel_on(text: str):
    def progress(fraction: float, message: str) -> None:
        if text in message:
            raise Cancelled(f"cancelled at {message!r}")

    return progress


def test_training_lowers_loss_on_a_learnable_task(tmp_path):
    config = make_config(epochs=6, learning_rate=2e-2)
    result = Trainer(config, make_network(config), ThresholdSlices(16, 0), ThresholdSlices(8, 1),
                     out_dir=tmp_path / "run", device="cpu").fit()
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.epochs_completed == 6 and not result.stopped_early
    rows = list(csv.DictReader(result.log_path.open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_loss", "lr", "seconds"} <= set(rows[0])
    assert TrainingConfig.load(result.config_path) == config


def test_resume_after_cancel_gives_identical_weights_to_uninterrupted_run(tmp_path):
    config = make_config(epochs=3)
    train, val = ThresholdSlices(12, 0, noise=0.05), ThresholdSlices(4, 1)
    straight = Trainer(config, make_network(config), train, val, out_dir=tmp_path / "a", device="cpu")
    result_a = straight.fit()

    interrupted = Trainer(config, make_network(config), train, val, out_dir=tmp_path / "b", device="cpu",
                          progress=cancel_on("epoch 1/3 done"))
    with pytest.raises(Cancelled):
        interrupted.fit()
    torch.rand(5), np.random.rand(3), random.random()  # a different global RNG state must not matter
    resumed = Trainer(config, make_network(config, seed=99), train, val, out_dir=tmp_path / "b", device="cpu")
    result_b = resumed.fit(resume=True)

    for key, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    assert [r["train_loss"] for r in result_a.history] == [r["train_loss"] for r in result_b.history]
    assert result_b.epochs_completed == 3


def test_cancel_mid_epoch_leaves_last_checkpoint_of_previous_epoch(tmp_path):
    config = make_config(epochs=3)
    trainer = Trainer(config, make_network(config), ThresholdSlices(12, 0), ThresholdSlices(4, 1),
                      out_dir=tmp_path / "run", device="cpu", progress=cancel_on("epoch 2/3: batch 2/3"))
    with pytest.raises(Cancelled):
        trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["epoch"] == 1
    assert len(checkpoint["history"]) == 1
    network = make_network(config, seed=5)
    network.load_state_dict(checkpoint["model"])
    assert len(list(csv.DictReader((tmp_path / "run" / "log.csv").open()))) == 1
    assert not list((tmp_path / "run").glob("*.partial*"))


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    config = make_config(epochs=10, early_stopping_patience=2, metric_name="score", metric_mode="max")
    metric = ScriptedMetric([0.5, 0.6, 0.6, 0.55, 0.9])
    result = Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1),
                     metric_fn=metric, out_dir=tmp_path / "run", device="cpu").fit()
    assert result.stopped_early
    assert result.epochs_completed == 4
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(0.6)


def test_best_checkpoint_holds_weights_of_best_epoch(tmp_path):
    class Snapshots(TrainerHook):
        def __init__(self):
            self.states = {}

        def on_epoch_end(self, trainer, epoch, record):
            self.states[epoch + 1] = {k: v.clone() for k, v in trainer.network.state_dict().items()}

    config = make_config(epochs=3, metric_name="score", metric_mode="min")
    snapshots = Snapshots()
    result = Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1),
                     metric_fn=ScriptedMetric([0.4, 0.1, 0.3]), out_dir=tmp_path / "run", device="cpu",
                     hooks=[snapshots]).fit()
    assert result.best_epoch == 2
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == 2 and best["metric"] == pytest.approx(0.1)
    for key, value in snapshots.states[2].items():
        assert torch.equal(best["model"][key], value)
    assert not torch.equal(best["model"]["model.0.conv.weight"], snapshots.states[3]["model.0.conv.weight"])


def test_resume_with_a_different_config_is_refused(tmp_path):
    config = make_config(epochs=1)
    Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
            device="cpu").fit()
    changed = make_config(epochs=1, learning_rate=0.5)
    with pytest.raises(InputError, match="different config.*learning_rate"):
        Trainer(changed, make_network(changed), ThresholdSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu").fit(resume=True)


def test_resume_without_last_checkpoint_is_refused(tmp_path):
    config = make_config()
    with pytest.raises(InputError, match="last.pt does not exist"):
        Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu").fit(resume=True)


def test_fresh_run_refuses_a_folder_that_holds_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    config = make_config(epochs=1)
    with pytest.raises(OutputError, match="already holds files"):
        Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu").fit()


def test_missing_validation_set_needs_train_loss_metric(tmp_path):
    config = make_config()
    with pytest.raises(InputError, match="No val_dataset"):
        Trainer(config, make_network(config), ThresholdSlices(8, 0), None, out_dir=tmp_path)
    config = make_config(epochs=1, metric_name="train_loss")
    result = Trainer(config, make_network(config), ThresholdSlices(8, 0), None, out_dir=tmp_path,
                     device="cpu").fit()
    assert result.best_epoch == 1 and result.best_metric == pytest.approx(result.history[0]["train_loss"])


def test_fit_leaves_the_callers_global_random_state_untouched(tmp_path):
    config = make_config(epochs=1)
    network = make_network(config)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Trainer(config, network, ThresholdSlices(8, 0, noise=0.1), ThresholdSlices(4, 1), out_dir=tmp_path,
            device="cpu").fit()
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_custom_batch_sampler_decides_the_batches(tmp_path):
    class CountingTrainer(Trainer):
        def on_train_epoch_start(self, epoch):
            self.batch_sizes = []

        def train_step(self, batch):
            self.batch_sizes.append(len(batch["image"]))
            return super().train_step(batch)

    config = make_config(epochs=1)
    positions = np.linspace(0, 1, 8)
    sampler = QuadraticPositionSampler(positions, batch_size=3, num_batches=5, ratio=4, seed=1)
    trainer = CountingTrainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1),
                              out_dir=tmp_path, device="cpu", batch_sampler=sampler)
    trainer.fit()
    assert trainer.batch_sizes == [3, 3, 3, 3, 3]


class PositionedSlices(ThresholdSlices):
    """ThresholdSlices with a base-to-apex position per slice, as SliceDataset has; each item says its index."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.positions = np.linspace(0, 1, n)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(index), "index": torch.tensor(index)}


def test_position_sampling_ratio_draws_basal_and_apical_slices_more_often(tmp_path):
    def drawn(trainer, epochs):
        return [i for epoch in range(epochs) for batch in trainer.train_loader(epoch) for i in batch["index"].tolist()]

    config = make_config(epochs=1, batch_size=5, position_sampling_ratio=20.0)
    trainer = Trainer(config, make_network(config), PositionedSlices(11, 0), ThresholdSlices(4, 1),
                      out_dir=tmp_path / "run", device="cpu")
    indices = drawn(trainer, 20)
    assert len(indices) == 20 * 3 * 5  # ceil(11 / 5) batches of 5 per epoch, as uniform shuffling takes
    counts = np.bincount(indices, minlength=11)
    assert counts[[0, 10]].mean() > 5 * counts[4:7].mean()  # weights: 20 at the very ends, ~15 against slices 4-6
    assert drawn(trainer, 3) == indices[:45]  # the draw depends on seed and epoch only (resume takes the same)
    trainer.fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["position_sampling_ratio"] == 20.0

    uniform = make_config(epochs=1, batch_size=5)
    trainer = Trainer(uniform, make_network(uniform), PositionedSlices(11, 0), ThresholdSlices(4, 1),
                      out_dir=tmp_path / "uniform", device="cpu")
    assert sorted(drawn(trainer, 2)) == sorted(list(range(11)) * 2)  # without it: every slice once per epoch


def test_position_sampling_is_refused_where_it_cannot_work(tmp_path):
    config = make_config(position_sampling_ratio=4.0)
    with pytest.raises(InputError, match="slice positions"):
        Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu")
    sampler = QuadraticPositionSampler(np.linspace(0, 1, 8), batch_size=3, num_batches=2)
    with pytest.raises(InputError, match="pass no batch_sampler"):
        Trainer(config, make_network(config), PositionedSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu", batch_sampler=sampler)
    for bad in (0.5, float("nan"), float("inf"), True):
        with pytest.raises(InputError, match="position_sampling_ratio"):
            make_config(position_sampling_ratio=bad)


def test_resume_refuses_another_position_sampling_ratio(tmp_path):
    config = make_config(epochs=2, position_sampling_ratio=4.0)
    Trainer(config, make_network(config), PositionedSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
            device="cpu").fit()
    changed = make_config(epochs=2, position_sampling_ratio=20.0)
    with pytest.raises(InputError, match="position_sampling_ratio"):
        Trainer(changed, make_network(changed), PositionedSlices(8, 0), ThresholdSlices(4, 1), out_dir=tmp_path,
                device="cpu").fit(resume=True)


def test_export_best_model_loads_through_the_registry(tmp_path):
    config = make_config(epochs=1, input_spec={"in_plane_spacing_mm": [1.5, 1.5], "crop_size": [16, 16]})
    trainer = Trainer(config, make_network(config), ThresholdSlices(8, 0), ThresholdSlices(4, 1),
                      out_dir=tmp_path / "run", device="cpu")
    trainer.fit()
    card_path = export_best_model(tmp_path / "run", tmp_path / "models", name="toy_seg", version="0.1",
                                  task="segmentation", label_map={0: "background", 1: "bright"},
                                  half_precision=False)
    loaded = ModelRegistry([tmp_path / "models"], environ={}).load("toy_seg")
    assert loaded.card.input_spec["crop_size"] == [16, 16]
    assert loaded.card.epochs == 1 and "val_loss" in loaded.card.validation_metrics
    assert json.loads(card_path.read_text())["network"] == "tiny_unet2d"
    image = ThresholdSlices(1, 7)[0]["image"][None]
    trainer.network.eval()
    with torch.no_grad():
        assert torch.equal(loaded.network(image), trainer.network(image))


def test_export_without_run_folder_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        export_best_model(tmp_path / "nothing", tmp_path / "models", name="toy", version="1", task="segmentation",
                          label_map={})


# ----------------------------------------------------------------------------- losses and config


def test_losses_accept_label_maps_with_or_without_channel_axis():
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    for name in ("dice_ce", "dice", "jaccard", "ce"):
        loss = build_loss(name)
        assert torch.allclose(loss(logits, labels), loss(logits, labels[:, None])), name
    perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 20
    assert build_loss("dice_ce")(perfect, labels) < 0.05 < build_loss("dice_ce")(logits, labels)
    class_logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    assert build_loss("ce")(class_logits, torch.tensor([0, 1])) < 0.01
    assert build_loss("bce")(class_logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]])) < 0.02


def test_unknown_loss_is_refused():
    with pytest.raises(InputError, match="Unknown loss 'hinge'"):
        build_loss("hinge")


def test_config_json_round_trip(tmp_path):
    config = make_config(network_kwargs={"out_channels": 2, "in_channels": 1}, early_stopping_patience=5,
                         input_spec={"crop_size": [128, 128], "normalisation": "zscore"})
    assert TrainingConfig.from_json(config.to_json()) == config
    assert TrainingConfig.load(config.save(tmp_path / "config.json")) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"loss": "focal"}, "loss must be one of"),
        ({"metric_mode": "best"}, "metric_mode must be 'max' or 'min'"),
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
    ],
)
def test_invalid_config_values_are_named(changes, message):
    with pytest.raises(InputError, match=message):
        make_config(**changes)


def test_config_with_unknown_key_is_refused():
    data = make_config().to_dict()
    data["learnig_rate"] = 0.1
    with pytest.raises(InputError, match="unknown keys \\['learnig_rate'\\]"):
        TrainingConfig.from_dict(data)


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("ratio", [4.0, 20.0])
def test_quadratic_sampler_end_to_middle_frequency_matches_ratio(ratio):
    positions = np.array([0.0] * 20 + [0.5] * 20 + [1.0] * 20)
    sampler = QuadraticPositionSampler(positions, batch_size=50, num_batches=1200, ratio=ratio, seed=0)
    counts = np.bincount(np.concatenate(list(sampler)), minlength=60)
    base, middle, apex = counts[:20].sum(), counts[20:40].sum(), counts[40:].sum()
    assert base / middle == pytest.approx(ratio, rel=0.1)
    assert apex / middle == pytest.approx(ratio, rel=0.1)


def test_quadratic_weights_keep_non_cardiac_slices_at_uniform_probability():
    positions = np.concatenate([np.linspace(0, 1, 10001), [np.nan]])
    weights = quadratic_position_weights(positions, ratio=20)
    assert weights[-1] == 1.0
    assert weights[:-1].mean() == pytest.approx(1.0, rel=1e-3)
    assert weights[0] / weights[5000] == pytest.approx(20)
    assert np.argmin(weights[:-1]) == 5000


def test_quadratic_sampler_repeats_per_epoch_and_changes_between_epochs():
    positions = np.linspace(0, 1, 30)
    sampler = QuadraticPositionSampler(positions, batch_size=4, num_batches=6, seed=7)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_quadratic_sampler_splits_batches_between_ranks():
    positions = np.linspace(0, 1, 30)
    single = list(QuadraticPositionSampler(positions, batch_size=4, num_batches=6, seed=7))
    ranks = [list(QuadraticPositionSampler(positions, batch_size=4, num_batches=6, seed=7, num_replicas=2, rank=r))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert sorted(ranks[0] + ranks[1]) == sorted(single)


def test_quadratic_sampler_refuses_positions_outside_unit_interval():
    with pytest.raises(InputError, match="positions must lie in \\[0, 1\\]"):
        quadratic_position_weights([0.2, 1.5])
    with pytest.raises(InputError, match="ratio"):
        quadratic_position_weights([0.2], ratio=0.5)
    with pytest.raises(InputError, match="rank must be in"):
        QuadraticPositionSampler([0.1], batch_size=1, num_batches=1, num_replicas=2, rank=2)
