"""Class activation maps: MONAI CAM / Grad-CAM / Grad-CAM++ of classifiers, and CAMs that a network computes itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cardiac_ai.errors import InputError
from cardiac_ai.models import build_network
from cardiac_ai.models.weak_networks import FibrosisCAMClassifier, inflate_2d_to_stack
from cardiac_ai.weak import cam_for_class, class_activation_maps, model_cam

TINY_FIBROSIS = {"features": (4, 8, 8, 8), "blocks_per_stage": (1, 1, 1, 1)}


def _pixel_model() -> nn.Module:
    """logits = (mean(relu(x)), -mean(relu(x))): the CAM of class 0 is the image itself, of class 1 its negative."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[4].bias.zero_()
    return model


def _blob_images(n: int = 2, size: int = 24, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[:size, :size]
    images, centres = [], []
    for _ in range(n):
        centre = tuple(int(c) for c in rng.integers(5, size - 5, 2))
        blob = np.exp(-((jj - centre[0]) ** 2 + (ii - centre[1]) ** 2) / 8.0)
        images.append(blob + 0.05 * rng.random((size, size)))
        centres.append(centre)
    return np.asarray(images, np.float32)[:, None], centres


def _tiny_resnet() -> nn.Module:
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    return ResNet("basic", [1, 1, 1, 1], [4, 4, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=3)


def _random_images(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, size, size)).astype(np.float32)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_cam_peaks_on_the_discriminative_blob(method):
    images, centres = _blob_images()
    cams = class_activation_maps(_pixel_model(), images, method=method, target_layer="1", fc_layer="4", class_index=0)
    assert cams.shape == (2, 24, 24) and cams.dtype == np.float32
    for cam, centre in zip(cams, centres):
        assert np.unravel_index(cam.argmax(), cam.shape) == centre


def test_raw_cam_is_the_class_score_map_and_gradcam_is_its_positive_part():
    images, _ = _blob_images()
    model = _pixel_model()
    raw = class_activation_maps(model, images, method="cam", target_layer="1", fc_layer="4", class_index=[0, 1])
    np.testing.assert_allclose(raw[0], images[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw[1], -images[1, 0], rtol=1e-5, atol=1e-6)
    grad = class_activation_maps(model, images, method="gradcam", target_layer="1", class_index=[0, 1], normalise=True)
    np.testing.assert_allclose(grad[0], images[0, 0] / images[0, 0].max(), rtol=1e-4, atol=1e-6)
    assert not grad[1].any()  # class 1 only loses from the blob: empty positive part, and normalising keeps it 0


def test_normalise_gives_relu_scaled_to_unit_maximum():
    torch.manual_seed(0)  # some random weights give a map without a positive pixel, whose maximum stays 0
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=3)
    images = _random_images()
    raw = class_activation_maps(model, images, method="cam", target_layer="3", fc_layer="6")
    scaled = class_activation_maps(model, images, method="cam", target_layer="3", fc_layer="6", normalise=True)
    assert scaled.min() >= 0 and np.allclose(scaled.reshape(3, -1).max(1), 1.0)
    positive = np.maximum(raw, 0)
    np.testing.assert_allclose(scaled, positive / positive.reshape(3, -1).max(1)[:, None, None], rtol=1e-5)


@pytest.mark.parametrize("augment", [("hflip",), ("vflip",), ("shift",), ("hflip", "vflip", "shift")])
def test_augmentations_are_undone_before_averaging(augment):
    images, _ = _blob_images()  # blobs off-centre: a flip not undone would move the peak
    model = _pixel_model()
    plain = class_activation_maps(model, images, method="gradcam", target_layer="1", class_index=0)
    averaged = class_activation_maps(model, images, method="gradcam", target_layer="1", class_index=0, augment=augment)
    np.testing.assert_allclose(averaged, plain, rtol=1e-5, atol=1e-8)


def test_hflip_averaging_makes_the_cam_of_a_symmetric_image_symmetric():
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=3)
    half = _random_images(2, 16)[..., :8]
    images = np.concatenate([half, half[..., ::-1]], axis=-1)
    plain = class_activation_maps(model, images, method="gradcam", target_layer="3")
    averaged = class_activation_maps(model, images, method="gradcam", target_layer="3", augment=("hflip",))
    np.testing.assert_allclose(averaged, averaged[..., ::-1], rtol=1e-4, atol=1e-7)
    assert not np.allclose(plain, plain[..., ::-1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "cam"])
def test_each_image_gets_the_map_of_its_own_class(method):
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=3)
    images = _random_images(3)
    options = {"method": method, "target_layer": "3", "fc_layer": "6"}
    together = class_activation_maps(model, images, class_index=[0, 2, 1], **options)
    for index, cls in enumerate([0, 2, 1]):
        alone = class_activation_maps(model, images[index : index + 1], class_index=cls, **options)
        np.testing.assert_allclose(together[index], alone[0], rtol=1e-4, atol=1e-7)


def test_default_class_is_the_predicted_one_and_probabilities_are_the_softmax():
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=3)
    images = _random_images(4)
    cams, probabilities = cam_for_class(model, images, target_layer="3")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(images)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    predicted = class_activation_maps(model, images, target_layer="3", class_index=list(expected.argmax(1)))
    np.testing.assert_array_equal(cams, predicted)


def test_single_logit_model_gets_sigmoid_probability():
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=1)
    images = _random_images(2)
    _, probabilities = cam_for_class(model, images, target_layer="3")
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "cam"])
def test_tiny_resnet_maps_have_input_size_and_leave_the_model_as_found(method):
    model = _tiny_resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    cams = class_activation_maps(model, _random_images(2, 32), method=method, target_layer="layer4", fc_layer="fc")
    assert cams.shape == (2, 32, 32) and np.isfinite(cams).all()
    if method != "cam":
        assert cams.min() >= 0
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch-norm statistics too
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace


def test_cams_are_deterministic():
    model = build_network("tiny_cnn2d", in_channels=1, out_channels=3)
    images = _random_images()
    first = class_activation_maps(model, images, target_layer="3", augment=("hflip", "shift"), batch_size=2)
    second = class_activation_maps(model, images, target_layer="3", augment=("hflip", "shift"), batch_size=3)
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-9)


def test_unknown_layer_lists_close_names():
    with pytest.raises(InputError, match=r"'layer5' is not a layer of ResNet; close names: \['layer4'"):
        class_activation_maps(_tiny_resnet(), _random_images(1, 32), target_layer="layer5")
    with pytest.raises(InputError, match="fc_layer='fully'"):
        class_activation_maps(_tiny_resnet(), _random_images(1, 32), method="cam", target_layer="layer4",
                              fc_layer="fully")


def test_cam_method_needs_fc_layer():
    with pytest.raises(InputError, match="needs fc_layer"):
        class_activation_maps(_pixel_model(), _random_images(1), method="cam", target_layer="1")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 16, 16), np.float32), r"\(n, channels, j, i\)"),
        (np.zeros((1, 1, 16, 16), np.int16), "must be float"),
        (np.full((1, 1, 16, 16), np.nan, np.float32), "256 NaN or infinite"),
        (torch.zeros(1, 1, 16, 16), "numpy array"),
    ],
)
def test_bad_images_are_input_errors(images, message):
    with pytest.raises(InputError, match=message):
        class_activation_maps(_pixel_model(), images, target_layer="1")


def test_bad_options_are_input_errors():
    model, images = _pixel_model(), _random_images(2)
    with pytest.raises(InputError, match="Unknown CAM method 'scorecam'"):
        class_activation_maps(model, images, target_layer="1", method="scorecam")
    with pytest.raises(InputError, match="Unknown augment \\['rotate'\\]"):
        class_activation_maps(model, images, target_layer="1", augment=("rotate",))
    with pytest.raises(InputError, match=r"outside 0..1"):
        class_activation_maps(model, images, target_layer="1", class_index=2)
    with pytest.raises(InputError, match="one int per image \\(2\\)"):
        class_activation_maps(model, images, target_layer="1", class_index=[0, 1, 0])
    with pytest.raises(InputError, match="batch_size"):
        class_activation_maps(model, images, target_layer="1", batch_size=0)


def test_segmentation_network_is_rejected():
    with pytest.raises(InputError, match=r"\(batch, classes\) logits"):
        class_activation_maps(build_network("tiny_unet2d", in_channels=1, out_channels=2), _random_images(1),
                              target_layer="model")


def _fibrosis_inputs(n: int, size: int = 32, slices: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 2, size, size) if slices is None else (n, 2, size, size, slices)
    x = rng.random(shape).astype(np.float32)
    x[:, 1] = 0
    x[:, 1, 8:24, 8:24] = 1
    return x


def test_model_cam_is_the_network_cam_upsampled_to_the_input_grid():
    torch.manual_seed(0)
    model = FibrosisCAMClassifier(out_channels=3, **TINY_FIBROSIS).eval()
    x = _fibrosis_inputs(2)
    cams = model_cam(model, x, class_index=[2, 0])
    with torch.no_grad():
        _, low = model.forward_with_cam(torch.from_numpy(x))
        up = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    assert cams.shape == (2, 32, 32)
    np.testing.assert_allclose(cams, up[[0, 1], [2, 0]], rtol=1e-5, atol=1e-6)


def test_stack_model_cam_equals_the_slice_model_cam_of_each_slice():
    torch.manual_seed(1)
    model2d = FibrosisCAMClassifier(**TINY_FIBROSIS)
    with torch.no_grad():  # make the attention block count: its output scale starts at zero
        model2d.attention.out[1].weight.fill_(0.5)
    stack = _fibrosis_inputs(1, slices=3)
    cams3d = model_cam(inflate_2d_to_stack(model2d), stack, augment=("hflip",))
    per_slice = model_cam(model2d, np.moveaxis(stack[0], -1, 0), augment=("hflip",))
    assert cams3d.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(cams3d[0], np.moveaxis(per_slice, 0, -1), rtol=1e-4, atol=1e-6)


def test_class_activation_maps_also_work_on_the_fibrosis_classifier():
    torch.manual_seed(0)
    cams = class_activation_maps(FibrosisCAMClassifier(**TINY_FIBROSIS), _fibrosis_inputs(2), target_layer="attention")
    assert cams.shape == (2, 32, 32) and cams.min() >= 0


def test_model_cam_needs_forward_with_cam():
    with pytest.raises(InputError, match="forward_with_cam"):
        model_cam(_pixel_model(), _random_images(1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fibrosis_cam_is_the_1x1_convolution_of_the_non_local_blocks_output(spatial_dims):
    """Order stages -> non-local block -> 1x1 CAM convolution: the CAM head reads what the attention block gives."""
    torch.manual_seed(0)
    model = FibrosisCAMClassifier(spatial_dims=spatial_dims, **TINY_FIBROSIS).eval()
    calls, outputs = [], {}

    def record(name):
        def hook(module, inputs, output):
            calls.append(name)
            outputs[name] = (inputs[0], output)
        return hook

    for name in ("stages", "attention", "cam_head"):
        getattr(model, name).register_forward_hook(record(name))
    shape = (2, 2, 16, 16) if spatial_dims == 2 else (2, 2, 16, 16, 3)
    x = torch.rand(shape)
    x[:, 1] = (x[:, 1] > 0.5).float()
    with torch.no_grad():
        logits, cam = model.forward_with_cam(x)
    assert calls == ["stages", "attention", "cam_head"]
    assert outputs["attention"][0] is outputs["stages"][1]
    assert outputs["cam_head"][0] is outputs["attention"][1]
    assert cam is outputs["cam_head"][1] and logits.shape == (2, 1)
    assert isinstance(model.cam_head, (nn.Conv2d, nn.Conv3d)) and set(model.cam_head.kernel_size) == {1}
