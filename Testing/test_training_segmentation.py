"""The few-lines API every capability uses: train on cases, register, load from the registry, segment, evaluate."""
from __future__ import annotations

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.metrics import dice_per_label
from cardiac_ai.models import ModelRegistry
from cardiac_ai.models.inference import segment_stack
from cardiac_ai.phantom import make_cine_phantom, make_phantom_cohort
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.segmentation import train_segmentation
from cardiac_ai.training.slices import load_prepared, prepare_slices, save_prepared

SPEC = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32))


def _config(**overrides) -> TrainingConfig:
    values = dict(
        network="unet2d",
        network_kwargs={"out_channels": 4, "channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1},
        input_spec=SPEC.to_dict(), epochs=12, batch_size=8, learning_rate=1e-2,
        metric_name="val_dice", metric_mode="max", seed=0,
    )
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.mark.slow
def test_trained_model_is_registered_loaded_and_segments_an_unseen_phantom(tmp_path):
    cohort = make_phantom_cohort(6, seed=1, phases=("ED",))
    models_dir = tmp_path / "models"
    result = train_segmentation(
        cohort[:5], cohort[5:], config=_config(), out_dir=tmp_path / "run", model_name="phantom_unet",
        models_dir=models_dir, augmentation=AugmentationConfig.none(), training_data="phantom",
    )
    assert result.card_path is not None and result.card_path.exists()
    assert result.validation_metrics["val_dice"] > 0.5

    model = ModelRegistry(extra_paths=[models_dir]).load("phantom_unet", device="cpu")
    assert model.card.split["validation"] == [cohort[5].case_id]
    unseen = make_cine_phantom(seed=99, center_offset_mm=(0.0, 0.0))
    segmentation = segment_stack(model, unseen.image, device="cpu")
    assert segmentation.labels.geometry == unseen.image.geometry
    assert segmentation.labels.array.shape == unseen.labels.array.shape
    dices = dice_per_label(segmentation.labels.array, unseen.labels.array)
    assert dices[3] > 0.7, dices  # LV blood pool: chance level is near 0
    assert np.nanmean(list(dices.values())) > 0.5, dices


def test_out_channels_must_cover_label_codes(tmp_path):
    cohort = make_phantom_cohort(2, seed=0, phases=("ED",))
    config = _config(network_kwargs={"out_channels": 3})
    with pytest.raises(InputError, match="out_channels"):
        train_segmentation(cohort[:1], cohort[1:], config=config, out_dir=tmp_path, model_name="x")


def test_prepared_slices_round_trip_as_compact_npz(tmp_path):
    cohort = make_phantom_cohort(2, seed=3, phases=("ED",))
    prepared = prepare_slices(cohort, SPEC)
    assert prepared.images.shape[1:] == (32, 32) and len(prepared) == sum(c.image.array.shape[0] for c in cohort)
    labelled = ~np.isnan(prepared.positions)
    assert prepared.positions[labelled].min() == 0.0 and prepared.positions[labelled].max() == 1.0
    path = save_prepared(prepared, tmp_path / "slices.npz")
    back = load_prepared(path)
    np.testing.assert_array_equal(back.labels, prepared.labels)
    np.testing.assert_array_equal(back.case_ids, prepared.case_ids)
    assert np.abs(back.images - prepared.images).max() <= 0.5 / 255 + 1e-6
    assert back.spec == SPEC
