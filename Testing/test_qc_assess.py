"""Generative QC of one segmentation (qc/assess.py): per-slice predicted Dice, flags, surrogate, bad input, run_qc."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.geometry import Geometry
from cardiac_ai.io.report import to_jsonable
from cardiac_ai.models import ModelCard, ModelRegistry, save_model
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.provenance import Provenance
from cardiac_ai.qc import DEFAULT_DICE_THRESHOLD, QCConfig, SegmentationVAE, assess_segmentation, run_qc

TINY = {"latent_size": 2, "features": (4, 4, 8, 8)}
FAST = QCConfig(steps=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SegmentationVAE(**TINY).eval()


@pytest.fixture(scope="module")
def result(cine_phantom, vae):
    return assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST)


def test_slices_outside_the_labelled_range_are_not_assessed_and_have_no_dice(result):
    assert result.slice_dice.shape == (8, 3) and result.structures == (1, 2, 3)
    np.testing.assert_array_equal(result.assessed, [False, True, True, True, True, True, True, False])
    assert np.isnan(result.slice_dice[[0, 7]]).all() and not result.slice_flags[[0, 7]].any()
    finite = result.slice_dice[~np.isnan(result.slice_dice)]
    assert finite.size > 0 and ((0 <= finite) & (finite <= 1)).all()


def test_surrogate_is_a_label_map_on_exactly_the_image_grid(result, cine_phantom):
    surrogate = result.surrogate
    assert surrogate.array.shape == cine_phantom.image.array.shape and surrogate.array.dtype == np.uint8
    assert surrogate.geometry.is_close(cine_phantom.image.geometry, atol_mm=1e-9, atol_direction=1e-12)
    assert set(np.unique(surrogate.array).tolist()) <= {0, 1, 2, 3}
    assert not surrogate.array[[0, 7]].any()  # nothing proposed where nothing was assessed


def test_volume_dice_pools_pixels_so_it_lies_within_the_slice_values(result):
    for column in range(3):
        values = result.slice_dice[:, column]
        values = values[~np.isnan(values)]
        if values.size:
            assert values.min() - 1e-9 <= result.volume_dice[column] <= values.max() + 1e-9
    assert result.mean_dice == pytest.approx(np.nanmean(result.volume_dice))


def test_flags_follow_the_threshold(cine_phantom, vae, result):
    image, labels = cine_phantom.image, cine_phantom.labels
    none = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, dice_threshold=0.0))
    every = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, dice_threshold=1.0))
    assert not none.slice_flags.any() and none.flagged_slices == []
    np.testing.assert_array_equal(every.slice_flags, every.assessed)  # an untrained model is never perfect
    np.testing.assert_array_equal(result.slice_flags, result.assessed & (result.slice_min_dice < 0.8))
    assert result.dice_threshold == DEFAULT_DICE_THRESHOLD == 0.8


def test_empty_segmentation_is_flagged_everywhere_not_an_error(cine_phantom, vae):
    empty = cine_phantom.labels.with_array(np.zeros_like(cine_phantom.labels.array))
    provenance = Provenance()
    result = assess_segmentation(cine_phantom.image, empty, vae, config=FAST, provenance=provenance)
    assert result.empty_segmentation and result.assessed.all() and result.slice_flags.all()
    assert (result.slice_dice == 0).all() and result.min_slice_dice == 0.0 and result.needs_review
    assert not result.rules.passed
    assert any("empty" in w for w in result.warnings) and any("empty" in w for w in provenance.warnings)


@pytest.mark.parametrize("field, change", [
    ("origin_lps_mm", lambda g: Geometry(g.spacing_mm, (5.0, 0.0, 0.0), g.direction_lps)),
    ("spacing_mm", lambda g: Geometry((1.6, 1.5, 8.0), g.origin_lps_mm, g.direction_lps)),
    ("direction_lps", lambda g: Geometry(g.spacing_mm, g.origin_lps_mm, (0, 1, 0, 1, 0, 0, 0, 0, 1))),
])
def test_labels_on_another_grid_are_refused_naming_the_field(cine_phantom, vae, field, change):
    moved = cine_phantom.labels.__class__(cine_phantom.labels.array, change(cine_phantom.labels.geometry))
    with pytest.raises(InputError, match=field):
        assess_segmentation(cine_phantom.image, moved, vae, config=FAST)


def test_labels_of_another_shape_or_outside_the_table_are_refused(cine_phantom, vae):
    with pytest.raises(InputError, match="shape"):
        assess_segmentation(cine_phantom.image, cine_phantom.labels.with_array(cine_phantom.labels.array[:-1]), vae)
    bad = cine_phantom.labels.array.copy()
    bad[3, 10, 10] = 9
    with pytest.raises(InputError, match="label table"):
        assess_segmentation(cine_phantom.image, cine_phantom.labels.with_array(bad), vae)


def test_heart_too_large_for_the_roi_is_resampled_and_reported_once(vae, caplog):
    big = make_cine_phantom(n_slices=6, seed=1, scale=2.2, shape=(160, 160))  # heart ~180 mm > 88 px x 1.8 mm
    provenance = Provenance()
    with caplog.at_level("WARNING"):
        result = assess_segmentation(big.image, big.labels, vae, config=FAST, provenance=provenance)
    assert result.resampled_to_fit and result.roi_spacing_mm > 1.8
    assert sum("resampled" in w for w in result.warnings) == 1
    assert sum("resampled" in w for w in provenance.warnings) == 1
    assert sum("resampled" in r.getMessage() for r in caplog.records) == 1
    assert result.to_dict()["roi"] == {"spacing_mm": result.roi_spacing_mm, "size_px": 96, "resampled_to_fit": True}
    assert result.surrogate.geometry.is_close(big.image.geometry) and result.surrogate.array.shape == (6, 160, 160)


def test_report_dict_is_strict_json_and_the_table_has_one_row_per_slice(result):
    data = result.to_dict()
    text = json.dumps(to_jsonable(data), allow_nan=False)
    assert json.loads(text)["slices"][0]["dice"] == {"rv_blood_pool": None, "lv_myocardium": None,
                                                     "lv_blood_pool": None}
    assert data["dice_threshold"] == 0.8 and data["n_assessed_slices"] == 6
    assert data["flagged_slices"] == result.flagged_slices and set(data["volume_dice"]) == set(result.structure_names)
    rows = result.slice_table_rows()
    assert len(rows) == 8 and list(rows[0]) == [
        "slice", "assessed", "flagged", "min_dice", "dice_rv_blood_pool", "dice_lv_myocardium", "dice_lv_blood_pool",
        "rule_reasons"]
    assert [r["flagged"] for r in rows] == result.slice_flags.tolist()


def test_config_and_model_are_checked(cine_phantom, vae):
    with pytest.raises(InputError, match="dice_threshold"):
        QCConfig(dice_threshold=1.5)
    with pytest.raises(InputError, match="structures"):
        QCConfig(structures=(4,))
    with pytest.raises(InputError, match="3 segmentation channels"):
        assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=QCConfig(structures=(2,)))
    with pytest.raises(ModelError, match="SegmentationVAE"):
        assess_segmentation(cine_phantom.image, cine_phantom.labels, torch.nn.Linear(2, 2))


def test_structures_not_judged_get_no_dice_no_flag_and_no_rule(cine_phantom, vae):
    without_rv = cine_phantom.labels.with_array(np.where(cine_phantom.labels.array == 1, 0, cine_phantom.labels.array))
    everything = assess_segmentation(cine_phantom.image, without_rv, vae, config=FAST)
    assert not everything.rules.passed  # the missing RV breaks a rule when the RV is judged
    judged = assess_segmentation(cine_phantom.image, without_rv, vae,
                                 config=dataclasses.replace(FAST, judged_structures=(2, 3)))
    assert np.isnan(judged.slice_dice[:, 0]).all() and np.isnan(judged.volume_dice[0])
    assert judged.rules.passed and not np.isnan(judged.volume_dice[1:]).any()
    with pytest.raises(InputError, match="judged_structures"):
        QCConfig(judged_structures=(4,))


def test_a_registered_model_brings_its_structures_and_roi_spacing(cine_phantom, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        card = ModelCard(name="qc_vae", version="0.1", task="qc", network="qc_vae",
                         network_kwargs={"n_structures": 1, **TINY}, label_map={2: "lv_myocardium"},
                         input_spec=InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(96, 96)).to_dict())
        save_model(card.build_network(), card, tmp_path)
    loaded = ModelRegistry(paths=[tmp_path]).load("qc_vae", device="cpu")
    provenance = Provenance()
    result = run_qc(cine_phantom.image, cine_phantom.labels, loaded, config=FAST, provenance=provenance)
    assert result.structures == (2,) and result.slice_dice.shape == (8, 1) and result.roi_spacing_mm == 2.0
    assert [m.name for m in provenance.models] == ["qc_vae"] and "qc" in provenance.timings_s
    assert provenance.parameters["qc"]["dice_threshold"] == 0.8


def test_run_qc_without_a_model_skips_with_a_warning_naming_where_it_looked(cine_phantom):
    provenance = Provenance()
    assert run_qc(cine_phantom.image, cine_phantom.labels, None, provenance=provenance, searched="/models/here") is None
    assert len(provenance.warnings) == 1
    assert provenance.warnings[0].startswith("QC skipped: no qc_vae model found in /models/here")
    assert "train_qc.py" in provenance.warnings[0]


def test_run_qc_turns_input_it_cannot_check_into_a_warning(cine_phantom, vae):
    provenance = Provenance()
    constant = cine_phantom.image.with_array(np.ones_like(cine_phantom.image.array))
    assert run_qc(constant, cine_phantom.labels, vae, config=FAST, provenance=provenance) is None
    assert provenance.warnings and provenance.warnings[-1].startswith("QC not done:")


# -- the CNN Dice regressor as predictor ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regressor():
    from cardiac_ai.models.qc_regressor import QCDiceRegressor

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return QCDiceRegressor(features=(4, 8)).eval()


def test_regressor_gives_the_dice_and_the_search_becomes_a_second_opinion(cine_phantom, vae, regressor, result):
    from cardiac_ai.models.qc_regressor import regress_dice
    from cardiac_ai.qc import qc_input

    both = assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST, regressor=regressor)
    assert both.predictor == "regressor" and result.predictor == "search" and result.search_dice is None
    np.testing.assert_array_equal(both.search_dice, result.slice_dice)  # the search itself is unchanged
    np.testing.assert_array_equal(both.surrogate.array, result.surrogate.array)
    pairs, _ = qc_input(cine_phantom.image, cine_phantom.labels)
    expected = regress_dice(regressor, pairs[both.assessed])
    given = pairs[both.assessed][:, 1:] > 0.5
    empty = ~given.any(axis=(2, 3))
    expected[empty & (expected >= 0.5)] = np.nan  # absent, and judged right
    expected[empty & (expected < 0.5)] = 0.0  # missing: no overlap
    np.testing.assert_allclose(both.slice_dice[both.assessed], expected, rtol=1e-6)
    assert np.isnan(both.slice_dice[~both.assessed]).all()
    np.testing.assert_array_equal(both.slice_flags, both.assessed & (both.slice_min_dice < 0.8))
    data = both.to_dict()
    assert data["predictor"] == "regressor" and "Robinson" in data["method"]
    assert set(data["slices"][3]["search_dice"]) == {"rv_blood_pool", "lv_myocardium", "lv_blood_pool"}
    assert "search_dice" not in result.to_dict()["slices"][3]


def test_regressed_volume_dice_counts_missed_slices_and_not_absent_ones(monkeypatch):
    from cardiac_ai.models import qc_regressor
    from cardiac_ai.qc.assess import regressed_dice

    given = np.zeros((4, 2, 8, 8), bool)
    given[0, 0, :4] = True  # structure 0: 32 pixels on slice 0, 16 on slice 1, missing on slices 2 and 3
    given[1, 0, :2] = True
    given[0, 1, :1] = True  # structure 1: 8 pixels on slice 0 only
    regressed = np.array([[0.9, 0.8], [0.6, 0.7], [0.2, 0.9], [0.7, 0.1]])
    monkeypatch.setattr(qc_regressor, "regress_dice", lambda network, pairs, **options: regressed.copy())
    pairs = np.concatenate([np.zeros((4, 1, 8, 8), np.float32), given.astype(np.float32)], axis=1)
    dice, volume = regressed_dice(None, pairs)
    # slice 2 of structure 0 judged missing (0.2 < 0.5): Dice 0; slice 3 judged absent (0.7): no Dice
    np.testing.assert_array_equal(dice[:, 0], [0.9, 0.6, 0.0, np.nan])
    np.testing.assert_array_equal(dice[:, 1], [0.8, np.nan, np.nan, 0.0])
    typical = np.median([32, 16])  # the missed slice weighs as much as a typical segmented slice of the structure
    assert volume[0] == pytest.approx((0.9 * 32 + 0.6 * 16 + 0.0 * typical) / (32 + 16 + typical))
    assert volume[0] < (0.9 * 32 + 0.6 * 16) / (32 + 16)  # what segmented-area weights alone gave
    assert volume[1] == pytest.approx(0.8 * 8 / (8 + 8))


def test_predictor_choice_is_honoured_and_checked(cine_phantom, vae, regressor):
    image, labels = cine_phantom.image, cine_phantom.labels
    searched = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="search"),
                                   regressor=regressor)
    assert searched.predictor == "search" and searched.search_dice is None
    with pytest.raises(ModelError, match="qc_dice_regressor"):
        assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="regressor"))
    with pytest.raises(InputError, match="predictor"):
        QCConfig(predictor="cnn")
    from cardiac_ai.models.qc_regressor import QCDiceRegressor

    with pytest.raises(ModelError, match="channels"):
        assess_segmentation(image, labels, vae, config=FAST, regressor=QCDiceRegressor(in_channels=2, n_outputs=1,
                                                                                      features=(4, 8)))
    with pytest.raises(ModelError, match="QCDiceRegressor"):
        assess_segmentation(image, labels, vae, config=FAST, regressor=vae)


def test_labels_filling_whole_slices_get_predicted_dice_zero_and_break_a_rule(cine_phantom, vae, regressor):
    """A label map that is LV everywhere: whatever the models make of the crop, such slices are no heart."""
    filled = cine_phantom.labels.with_array(np.full_like(cine_phantom.labels.array, 3))
    for model_regressor in (None, regressor):
        result = assess_segmentation(cine_phantom.image, filled, vae, config=FAST, regressor=model_regressor)
        assert result.slice_flags.all() and result.mean_dice == 0.0 and result.needs_review
        assert np.nanmax(result.slice_dice) == 0.0
        assert any("labels every pixel" in w for w in result.warnings)
        assert all("no background" in " ".join(r) for r in result.rules.slice_reasons)


def test_empty_segmentation_stays_flagged_with_the_regressor(cine_phantom, vae, regressor):
    empty = cine_phantom.labels.with_array(np.zeros_like(cine_phantom.labels.array))
    result = assess_segmentation(cine_phantom.image, empty, vae, config=FAST, regressor=regressor)
    assert result.predictor == "regressor" and (result.slice_dice == 0).all() and result.slice_flags.all()


def test_run_qc_names_the_regressor_it_used(cine_phantom, tiny_qc_models, tiny_qc_regressor_models):
    registry = ModelRegistry(paths=[tiny_qc_models, tiny_qc_regressor_models])
    vae_loaded, regressor_loaded = registry.load("qc_vae"), registry.load("qc_dice_regressor")
    provenance = Provenance()
    result = run_qc(cine_phantom.image, cine_phantom.labels, vae_loaded, config=FAST, provenance=provenance,
                    regressor=regressor_loaded)
    assert result.predictor == "regressor"
    assert [m.name for m in provenance.models] == ["qc_vae", "qc_dice_regressor"]
    assert provenance.parameters["qc"]["predictor"] == "auto"


def test_without_a_wanted_surrogate_the_regressor_skips_the_search(cine_phantom, vae, regressor):
    image, labels = cine_phantom.image, cine_phantom.labels
    full = assess_segmentation(image, labels, vae, config=FAST, regressor=regressor)
    quick = assess_segmentation(image, labels, vae, config=FAST, regressor=regressor, surrogate_wanted=False)
    assert full.search["ran"] and full.surrogate is not None and full.search_dice is not None
    assert quick.search == {"ran": False} and quick.surrogate is None and quick.search_dice is None
    np.testing.assert_array_equal(quick.slice_dice, full.slice_dice)
    np.testing.assert_array_equal(quick.slice_flags, full.slice_flags)
    assert "search_dice" not in quick.to_dict()["slices"][3]
    searched = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="search"),
                                   regressor=regressor, surrogate_wanted=False)
    assert searched.search["ran"] and searched.surrogate is not None  # the search is then the predictor


def test_the_regressor_assesses_the_margin_its_card_gives_and_the_search_stays_in_the_labelled_range(
    cine_phantom, vae, regressor, result
):
    from types import SimpleNamespace

    image, labels = cine_phantom.image, cine_phantom.labels  # labelled slices 1..6 of 8
    trained_with_margin = SimpleNamespace(network=regressor, card=SimpleNamespace(
        inference={"assess_margin_slices": 1}))
    widened = assess_segmentation(image, labels, vae, config=FAST, regressor=trained_with_margin)
    assert widened.margin_slices == 1 and widened.assessed.all()
    assert widened.to_dict()["margin_slices"] == 1 and widened.to_dict()["n_assessed_slices"] == 8
    # the search, its surrogate and its second opinion keep to the labelled range
    np.testing.assert_array_equal(widened.search_dice, result.slice_dice)
    np.testing.assert_array_equal(widened.surrogate.array, result.surrogate.array)
    # on a margin slice the segmentation is empty: the structure is judged absent (no Dice) or missing (Dice 0)
    margin_values = widened.slice_dice[[0, 7]]
    assert np.all(np.isnan(margin_values) | (margin_values == 0.0))
    plain = assess_segmentation(image, labels, vae, config=FAST, regressor=regressor)
    assert plain.margin_slices == 0 and not plain.assessed[[0, 7]].any()
    np.testing.assert_array_equal(widened.slice_dice[1:7], plain.slice_dice[1:7])
    overridden = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, margin_slices=0),
                                     regressor=trained_with_margin)
    np.testing.assert_array_equal(overridden.assessed, plain.assessed)
    searched = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="search", margin_slices=1),
                                   regressor=trained_with_margin)
    assert searched.margin_slices == 0 and not searched.assessed[[0, 7]].any()


def test_a_bad_margin_is_refused(cine_phantom, vae, regressor):
    from types import SimpleNamespace

    with pytest.raises(InputError, match="margin_slices"):
        QCConfig(margin_slices=-1)
    with pytest.raises(InputError, match="margin_slices"):
        QCConfig(margin_slices=True)
    odd_card = SimpleNamespace(network=regressor, card=SimpleNamespace(inference={"assess_margin_slices": "one"}))
    with pytest.raises(ModelError, match="assess_margin_slices"):
        assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST, regressor=odd_card)


def test_combined_predictor_weighs_regressor_and_search_as_the_card_says(cine_phantom, vae, regressor, monkeypatch):
    from types import SimpleNamespace

    from cardiac_ai.models import qc_regressor
    from cardiac_ai.qc.assess import regressed_dice

    image, labels = cine_phantom.image, cine_phantom.labels
    weights = [[0.5, 0.3, 0.1, 0.05], [0.6, 0.2, 0.0, 0.1], [0.4, 0.4, 0.2, 0.0]]
    combining = SimpleNamespace(network=regressor, card=SimpleNamespace(inference={"combination": {
        "terms": ["regressor", "search", "regressor*search", "1"], "coefficients": weights}}))
    combined = assess_segmentation(image, labels, vae, config=FAST, regressor=combining)
    alone = assess_segmentation(image, labels, vae, config=FAST, regressor=regressor)
    assert combined.predictor == "combined" and alone.predictor == "regressor"
    assert "combined" in combined.to_dict()["method"]
    a, b = alone.slice_dice, combined.search_dice
    w = np.asarray(weights)
    expected = np.clip(w[:, 0] * a + w[:, 1] * b + w[:, 2] * a * b + w[:, 3], 0, 1)
    shown = np.stack([(labels.array == code).any(axis=(1, 2)) for code in (1, 2, 3)], axis=1)
    use = shown & np.isfinite(b) & combined.assessed[:, None]
    assert use.any()
    np.testing.assert_allclose(combined.slice_dice[use], expected[use], rtol=1e-6)
    # where the segmentation leaves a structure out, the absent / missing rule of the regressor holds
    np.testing.assert_array_equal(np.isnan(combined.slice_dice[~shown]), np.isnan(alone.slice_dice[~shown]))
    # the segmenting commands skip the search for speed: then the regressor alone
    quick = assess_segmentation(image, labels, vae, config=FAST, regressor=combining, surrogate_wanted=False)
    assert quick.predictor == "regressor" and quick.search_dice is None
    np.testing.assert_array_equal(quick.slice_dice, alone.slice_dice)
    forced = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="combined"),
                                 regressor=combining, surrogate_wanted=False)
    np.testing.assert_array_equal(forced.slice_dice, combined.slice_dice)  # combined runs the search itself
    # a structure the search has no value for keeps the regressor's
    given = np.zeros((2, 1, 8, 8), bool)
    given[:, 0, :3] = True
    monkeypatch.setattr(qc_regressor, "regress_dice", lambda network, pairs, **options: np.array([[0.9], [0.7]]))
    pairs = np.concatenate([np.zeros((2, 1, 8, 8), np.float32), given.astype(np.float32)], axis=1)
    dice, _ = regressed_dice(None, pairs, searched=np.array([[0.5], [np.nan]]),
                             combination=np.array([[0.5, 0.5, 0, 0]]))
    np.testing.assert_allclose(dice[:, 0], [0.7, 0.7])


def test_a_missing_or_bad_combination_is_refused(cine_phantom, vae, regressor):
    from types import SimpleNamespace

    image, labels = cine_phantom.image, cine_phantom.labels
    with pytest.raises(ModelError, match="inference.combination"):
        assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="combined"), regressor=regressor)
    for combination in ({"coefficients": [[1, 0, 0, 0]]}, {"coefficients": [[1, 0, 0, 0]] * 3, "terms": ["a"]},
                        {"coefficients": [[np.nan, 0, 0, 0]] * 3}, {"weights": 1}):
        odd = SimpleNamespace(network=regressor, card=SimpleNamespace(inference={"combination": combination}))
        with pytest.raises(ModelError, match="combination"):
            assess_segmentation(image, labels, vae, config=FAST, regressor=odd)
    # a predictor that does not combine does not read the combination
    for predictor in ("search", "regressor"):
        result = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor=predictor), regressor=odd)
        assert result.predictor == predictor
    from cardiac_ai.qc.assess import regressed_dice

    with pytest.raises(InputError, match="searched"):
        regressed_dice(regressor, np.zeros((1, 4, 96, 96), np.float32), combination=np.zeros((3, 4)))


def test_without_a_search_the_encoders_dice_is_combined_as_the_card_says(cine_phantom, vae, regressor):
    from types import SimpleNamespace

    from cardiac_ai.qc import qc_input
    from cardiac_ai.qc.assess import regressed_dice

    image, labels = cine_phantom.image, cine_phantom.labels
    weights = np.array([[0.5, 0.3, 0.1, 0.05], [0.6, 0.2, 0.0, 0.1], [0.4, 0.4, 0.2, 0.0]])
    terms = ["regressor", "search", "regressor*search", "1"]
    combining = SimpleNamespace(network=regressor, card=SimpleNamespace(inference={
        "combination_encoder": {"terms": terms, "coefficients": weights.tolist()}}))
    quick = assess_segmentation(image, labels, vae, config=FAST, regressor=combining, surrogate_wanted=False)
    assert quick.predictor == "combined" and quick.search == {"ran": True, "steps": 0, "encoder_only": True}
    assert quick.surrogate is None and quick.search_dice is None
    encoder = assess_segmentation(image, labels, vae, config=QCConfig(steps=0, predictor="search")).slice_dice
    pairs, _ = qc_input(image, labels)
    expected, _ = regressed_dice(regressor, pairs[quick.assessed], searched=encoder[quick.assessed],
                                 combination=weights)
    np.testing.assert_allclose(quick.slice_dice[quick.assessed], expected, rtol=1e-6)
    # with the search wanted and no weights for it, the regressor predicts alone
    full = assess_segmentation(image, labels, vae, config=FAST, regressor=combining)
    alone = assess_segmentation(image, labels, vae, config=FAST, regressor=regressor)
    assert full.predictor == "regressor"
    np.testing.assert_array_equal(full.slice_dice, alone.slice_dice)
    forced = assess_segmentation(image, labels, vae, config=QCConfig(steps=5, predictor="regressor"),
                                 regressor=combining, surrogate_wanted=False)
    assert forced.predictor == "regressor" and forced.search == {"ran": False}


def test_unsegmented_heart_slices_are_two_or_more_beyond_the_labelled_range():
    from cardiac_ai.qc.extent import unsegmented_heart_slices

    labels = np.zeros((8, 4, 4), np.uint8)
    labels[2:6, 1:3, 1:3] = 2
    areas = [900, 800, 1000, 1000, 1000, 1000, 400, 0]
    assert unsegmented_heart_slices(labels, areas) == [0, 1]  # 800 >= half the median 1000; 400 is not
    assert unsegmented_heart_slices(labels, [0, 800, 1000, 1000, 1000, 1000, 400, 0]) == []  # one slice: the
    # localiser often sees one slice past where annotators stop
    assert unsegmented_heart_slices(np.zeros_like(labels), areas) == []
    # the apex: small slices, far below half the median, but not below a third of the segmentation's last slice
    apex_labels = np.zeros((8, 4, 4), np.uint8)
    apex_labels[2:5, 1:3, 1:3] = 2
    assert unsegmented_heart_slices(apex_labels, [0, 0, 1000, 1000, 500, 250, 160, 0]) == [5, 6]
    assert unsegmented_heart_slices(apex_labels, [0, 0, 1000, 1000, 500, 250, 140, 0]) == []  # 140 < 0.3 x 500
    assert unsegmented_heart_slices(apex_labels, [0, 0, 1000, 1000, 200, 90, 90, 90]) == []  # under 100 mm^2
    assert unsegmented_heart_slices(apex_labels, [0, 0, 1000, 1000, 0, 120, 110, 0]) == []  # an end slice the
    # localiser does not see gives no measure to compare with
    with pytest.raises(InputError, match="one area per slice"):
        unsegmented_heart_slices(labels, areas[:-1])


def test_slices_where_the_segmentation_stops_early_are_flagged_with_a_rule(cine_phantom, vae):
    labels = cine_phantom.labels.array.copy()
    labelled = np.flatnonzero(labels.any(axis=(1, 2)))
    cut = labelled[:2]
    labels[cut] = 0
    result = assess_segmentation(cine_phantom.image, cine_phantom.labels.with_array(labels), vae, config=FAST,
                                 unsegmented_slices=cut)
    assert set(cut) <= set(result.flagged_slices) and result.needs_review
    assert np.all(result.slice_dice[cut] == 0) and result.assessed[cut].all()
    assert any("stops before the heart" in r for r in result.rules.volume_reasons)
    assert all("cine localiser" in result.rules.slice_reasons[k][-1] for k in cut)
    labelled_slice = int(labelled[-1])  # a slice with labels is never called unsegmented
    other = assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST,
                                unsegmented_slices=[labelled_slice])
    assert "stops before" not in " ".join(other.rules.volume_reasons)


def test_rv_and_lv_codes_exchanged_are_named_in_a_warning(cine_phantom, vae):
    truth = cine_phantom.labels.array
    swapped = np.where(truth == 1, 3, np.where(truth == 3, 1, truth)).astype(truth.dtype)
    result = assess_segmentation(cine_phantom.image, cine_phantom.labels.with_array(swapped), vae, config=FAST)
    assert any("look swapped" in w and "--label-codes LV=1 MYO=2 RV=3" in w for w in result.warnings)
    as_given = assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST)
    assert not any("swapped" in w for w in as_given.warnings)


def test_the_regressor_is_averaged_over_the_rotations_its_card_gives(cine_phantom, vae, regressor):
    from types import SimpleNamespace

    from cardiac_ai.models.qc_regressor import regress_dice
    from cardiac_ai.qc import qc_input

    views = SimpleNamespace(network=regressor, card=SimpleNamespace(
        inference={"test_time_rotations_deg": [0, 6, -6, 12, -12]}))
    plain = assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST, regressor=regressor,
                                surrogate_wanted=False)
    averaged = assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST, regressor=views,
                                   surrogate_wanted=False)
    pairs, _ = qc_input(cine_phantom.image, cine_phantom.labels)
    shown = pairs[averaged.assessed][:, 1:].any(axis=(2, 3))
    expected = np.mean([regress_dice(regressor, pairs[averaged.assessed], rotations_deg=(a,))
                        for a in (0, 6, -6, 12, -12)], axis=0)
    np.testing.assert_allclose(averaged.slice_dice[averaged.assessed][shown], expected[shown], rtol=1e-5)
    assert not np.allclose(averaged.slice_dice[averaged.assessed][shown], plain.slice_dice[plain.assessed][shown])
    for bad in ([], "15", {"6": 0}, [True], [90]):  # "15" must not read as 1 and 5 degrees
        odd = SimpleNamespace(network=regressor, card=SimpleNamespace(inference={"test_time_rotations_deg": bad}))
        with pytest.raises(ModelError, match="test_time_rotations_deg"):
            assess_segmentation(cine_phantom.image, cine_phantom.labels, vae, config=FAST, regressor=odd,
                                surrogate_wanted=False)
