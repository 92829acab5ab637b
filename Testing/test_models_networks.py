"""Network builders by name, and batched inference over a stack of slices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.models import ModelCard, build_network, network_names, predict_slices
from cardiac_ai.models.networks import build_seeded_network
from cardiac_ai.provenance import Provenance

SEGMENTATION = ["unet2d", "basic_unet2d", "flexible_unet", "tiny_unet2d"]
CLASSIFICATION = ["densenet121_2d", "resnet18_2d", "resnet34_2d", "tiny_cnn2d"]
GENERATIVE = ["qc_vae"]  # tested in test_qc_core.py
OTHERS = ["qc_dice_regressor", "fibrosis_cam_2d", "fibrosis_cam_stack", "cam_classifier_2d"]  # test_qc_training.py, test_weak_networks.py


def test_every_registered_network_is_covered_here():
    assert set(network_names()) == set(SEGMENTATION) | set(CLASSIFICATION) | set(GENERATIVE) | set(OTHERS)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_networks_return_logit_maps_of_input_size(name):
    with torch.random.fork_rng():  # weights independent of what other tests drew before
        torch.manual_seed(0)
        network = build_network(name, in_channels=2, out_channels=3).eval()
    image = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, louder = network(image), network(100 * image)
    assert out.shape == (1, 3, 32, 32)
    # raw logits, not probabilities: no squashing keeps a much stronger input's output within [0, 1]
    assert min(out.min(), louder.min()) < 0 or max(out.max(), louder.max()) > 1


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_networks_return_class_logits(name):
    network = build_network(name, in_channels=1, out_channels=4).eval()
    with torch.no_grad():
        out = network(torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 4)


def test_unknown_network_name_lists_known_names():
    with pytest.raises(ModelError, match="Unknown network 'vnet'.*tiny_unet2d.*unet2d"):
        build_network("vnet")


def test_unknown_hyperparameter_is_named_with_accepted_ones():
    with pytest.raises(ModelError, match="unknown hyperparameters \\['chanels'\\].*'channels'"):
        build_network("unet2d", chanels=(4, 8))


def test_invalid_hyperparameter_values_raise_model_error():
    with pytest.raises(ModelError, match="cannot be built"):
        build_network("unet2d", channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ModelError, match="ResNet backbones only"):
        build_network("flexible_unet", backbone="efficientnet-b0")


def test_card_builds_the_same_architecture_as_training():
    kwargs = {"in_channels": 1, "out_channels": 4, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
    card = ModelCard(name="cine", version="1.0", task="segmentation", network="unet2d", network_kwargs=kwargs)
    built_for_training = build_network("unet2d", **kwargs).state_dict()
    built_for_inference = card.build_network().state_dict()
    assert {k: v.shape for k, v in built_for_training.items()} == {k: v.shape for k, v in built_for_inference.items()}


# ----------------------------------------------------------------------------- predict_slices


def tiny_net() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_network("tiny_unet2d", in_channels=1, out_channels=3)


def test_predict_slices_matches_a_direct_forward_pass_in_any_batch_size():
    images = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    network = tiny_net().eval()
    with torch.no_grad():
        expected = network(torch.from_numpy(images)).numpy()
    for batch_size in (1, 2, 8):
        out = predict_slices(network, images, device="cpu", batch_size=batch_size)
        assert out.dtype == np.float32 and out.shape == (5, 3, 16, 16)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_predict_slices_softmax_gives_probabilities_and_records_device():
    images = np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32)
    provenance = Provenance()
    out = predict_slices(tiny_net(), images, device="cpu", activation="softmax", provenance=provenance)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert provenance.device == "cpu" and provenance.warnings == []


def test_predict_slices_sliding_window_covers_larger_slices():
    images = np.random.default_rng(2).random((2, 1, 40, 24), dtype=np.float32)
    out = predict_slices(tiny_net(), images, device="cpu", roi_size=(16, 16), activation="sigmoid")
    assert out.shape == (2, 3, 40, 24)
    assert np.all((out > 0) & (out < 1))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((4, 16, 16), np.float32), "shaped \\(k, c, j, i\\)"),
        (np.zeros((2, 1, 16, 16), np.uint8), "float images"),
        (np.full((1, 1, 16, 16), np.nan, np.float32), "NaN"),
    ],
)
def test_predict_slices_refuses_unusable_input(images, message):
    with pytest.raises(InputError, match=message):
        predict_slices(tiny_net(), images, device="cpu")


def test_predict_slices_refuses_unknown_activation():
    with pytest.raises(InputError, match="activation must be one of"):
        predict_slices(tiny_net(), np.zeros((1, 1, 8, 8), np.float32), device="cpu", activation="argmax")


def test_seeded_networks_depend_on_the_seed_alone_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    first = build_seeded_network("tiny_unet2d", 7, out_channels=2).state_dict()
    after_first = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(1000)  # an earlier stage drew random numbers
    second = build_seeded_network("tiny_unet2d", 7, out_channels=2).state_dict()
    other_seed = build_seeded_network("tiny_unet2d", 8, out_channels=2).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)
    torch.manual_seed(123)
    build_seeded_network("tiny_unet2d", 7, out_channels=2)
    assert torch.equal(torch.rand(3), after_first)


def test_a_training_run_starts_from_the_same_weights_whatever_ran_before(tmp_path):
    """The weak U-Net entry point: two runs with one seed end equal although the process drew random numbers
    between them (the recipe's stages run one after another in one process)."""
    from cardiac_ai.phantom.cine import make_phantom_cohort
    from cardiac_ai.preprocessing import InputSpec
    from cardiac_ai.training import TrainingConfig
    from cardiac_ai.weak.training import prepare_weak_slices, train_weak_segmentation

    spec = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32))
    cohort = make_phantom_cohort(2, groups=("NOR", "DCM"), phases=("ED",), n_slices=5, shape=(48, 48),
                                 spacing_mm=(3.0, 3.0, 8.0))
    weak, truth = prepare_weak_slices(cohort, label_name="group", spec=spec)
    masks = (truth > 0).astype(np.uint8)
    config = TrainingConfig(network="tiny_unet2d", network_kwargs={"out_channels": 2}, input_spec=spec.to_dict(),
                            epochs=1, batch_size=8, loss="dice_ce", seed=3)
    weights = []
    for run in range(2):
        torch.rand(100 * (run + 1))
        _, network, _ = train_weak_segmentation(weak, None, masks, weak, None, masks, mode="pseudo_label",
                                                config=config, out_dir=tmp_path / f"run{run}", device="cpu")
        weights.append(network.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_qc_vae_keeps_its_channels_last_layout_through_saving_and_loading(tmp_path):
    """The latent search is faster with channels-last decoder weights; loading must not undo the layout, and the
    layout must not change what the network computes."""
    from cardiac_ai.models import ModelRegistry, save_model

    card = ModelCard(name="qc_vae", version="0.1", task="qc", network="qc_vae", network_kwargs={"input_size": 32},
                     input_spec={}, label_map={}, training_data="none")
    torch.manual_seed(0)
    network = build_network("qc_vae", input_size=32).eval()
    save_model(network, card, tmp_path, half_precision=False)
    loaded = ModelRegistry(paths=[tmp_path]).load("qc_vae", device="cpu").network
    weights = [m.weight for m in loaded.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    z = torch.randn(3, 8)
    with torch.no_grad():
        reference = network.to(memory_format=torch.contiguous_format).decode(z)
        torch.testing.assert_close(loaded.decode(z), reference)
