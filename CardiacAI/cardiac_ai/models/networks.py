"""Network builders by name: the one place where a network is made, for training and for inference alike.

A model card stores ``network`` (a name below) and ``network_kwargs``; :func:`build_network` turns them into an
``nn.Module``. Every network returns logits: no softmax, no argmax (segmentation ``(batch, classes, j, i)``,
classification ``(batch, classes)``).

======================  ==============  ===================================================================
name                    task            MONAI class (``spatial_dims=2``)
======================  ==============  ===================================================================
``unet2d``              segmentation    ``monai.networks.nets.UNet`` (residual units, instance norm)
``basic_unet2d``        segmentation    ``monai.networks.nets.BasicUNet`` (``j``, ``i`` divisible by 16)
``flexible_unet``       segmentation    ``monai.networks.nets.FlexibleUNet``, ResNet backbone, never pretrained
``densenet121_2d``      classification  ``monai.networks.nets.DenseNet121``
``resnet18_2d``         classification  ``monai.networks.nets.resnet18``
``resnet34_2d``         classification  ``monai.networks.nets.resnet34``
``tiny_unet2d``         segmentation    ``monai.networks.nets.UNet`` with 2 levels of 4 and 8 channels (tests)
``tiny_cnn2d``          classification  two convolutions, global pooling and a linear layer (tests)
``qc_vae``              generative QC   ``cardiac_ai.qc.vae.SegmentationVAE`` (returns probabilities, see below)
``qc_dice_regressor``   QC regression   ``cardiac_ai.models.qc_regressor.QCDiceRegressor`` (Dice logits per structure)
``fibrosis_cam_2d``     weak CAM        ``cardiac_ai.models.weak_networks.FibrosisCAMClassifier`` (slice level)
``fibrosis_cam_stack``  weak CAM        the same with 3x3x1 kernels; input ``(batch, channels, j, i, k)``
``cam_classifier_2d``   weak CAM        the same 2D network under a task-neutral name (e.g. the ACDC diagnosis
                                        classifier: ``in_channels=1``, ``out_channels=5``, ``mask_channel=None``)
======================  ==============  ===================================================================
"""
from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import ModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["NETWORK_BUILDERS", "network_names", "build_network", "build_seeded_network"]

log = logging.getLogger(__name__)


def _unet2d(
    *,
    in_channels: int = 1,
    out_channels: int = 4,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
) -> "nn.Module":
    """MONAI ``UNet``; input ``(batch, in_channels, j, i)`` with ``j``, ``i`` divisible by the product of strides."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


def _basic_unet2d(
    *,
    in_channels: int = 1,
    out_channels: int = 4,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
) -> "nn.Module":
    """MONAI ``BasicUNet``; input ``j``, ``i`` divisible by 16."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=tuple(features), dropout=dropout
    )


def _flexible_unet(
    *,
    in_channels: int = 1,
    out_channels: int = 4,
    backbone: str = "resnet18",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    dropout: float = 0.0,
) -> "nn.Module":
    """MONAI ``FlexibleUNet`` with a ResNet encoder, trained from scratch (``pretrained=False``: no download)."""
    from monai.networks.nets import FlexibleUNet

    if not backbone.startswith("resnet"):
        raise ModelError(
            f"flexible_unet supports ResNet backbones only (resnet10 ... resnet200), got backbone={backbone!r}; "
            "EfficientNet backbones would try to download weights."
        )
    return FlexibleUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        backbone=backbone,
        pretrained=False,
        decoder_channels=tuple(decoder_channels),
        spatial_dims=2,
        dropout=dropout,
    )


def _densenet121_2d(*, in_channels: int = 1, out_channels: int = 4, dropout_prob: float = 0.0) -> "nn.Module":
    """MONAI ``DenseNet121``; returns ``(batch, out_channels)`` logits."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout_prob, pretrained=False
    )


def _resnet_2d(depth: int) -> Callable[..., "nn.Module"]:
    def build(*, in_channels: int = 1, out_channels: int = 4) -> "nn.Module":
        from monai.networks import nets

        factory = getattr(nets, f"resnet{depth}")
        return factory(pretrained=False, spatial_dims=2, n_input_channels=in_channels, num_classes=out_channels)

    build.__doc__ = f"MONAI ``resnet{depth}`` (2D); returns ``(batch, out_channels)`` logits."
    return build


def _tiny_unet2d(*, in_channels: int = 1, out_channels: int = 4) -> "nn.Module":
    """A two-level MONAI ``UNet`` (4 and 8 channels) for tests; ``j``, ``i`` even."""
    return _unet2d(
        in_channels=in_channels, out_channels=out_channels, channels=(4, 8), strides=(2,), num_res_units=0
    )


def _tiny_cnn2d(*, in_channels: int = 1, out_channels: int = 4, features: int = 8) -> "nn.Module":
    """Two 3x3 convolutions, global average pooling and a linear layer, for classification tests."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, features, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(features, features, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(features, out_channels),
    )


def _qc_vae(
    *,
    n_structures: int = 3,
    latent_size: int = 8,
    features: Sequence[int] = (32, 64, 128, 256),
    input_size: int = 96,
    n_image_channels: int = 1,
) -> "nn.Module":
    """The generative-QC VAE; unlike the others its ``forward`` returns ``(reconstruction, mu, logvar)`` with a
    sigmoid reconstruction, not logits."""
    import torch

    from ..qc.vae import SegmentationVAE

    network = SegmentationVAE(
        n_structures=n_structures, latent_size=latent_size, features=tuple(features), input_size=input_size,
        n_image_channels=n_image_channels,
    )
    # The latent search runs the decoder's transposed convolutions forward and backward ~80 times per volume; with
    # channels-last weights they take 10-12 instead of 16 ms per step on CPU-2, same values. Loading weights into
    # the network (copy_) keeps the layout.
    return network.to(memory_format=torch.channels_last)



def _qc_dice_regressor(
    *,
    in_channels: int = 4,
    n_outputs: int = 3,
    features: Sequence[int] = (16, 32, 64, 128),
    input_size: int = 96,
    dropout: float = 0.2,
) -> "nn.Module":
    """The CNN Dice regressor of QC (Robinson et al. 2018); ``sigmoid`` of its ``(batch, n_outputs)`` logits is the
    predicted Dice per structure."""
    from .qc_regressor import QCDiceRegressor

    return QCDiceRegressor(in_channels=in_channels, n_outputs=n_outputs, features=tuple(features),
                           input_size=input_size, dropout=dropout)

def _fibrosis_cam(spatial_dims: int) -> Callable[..., "nn.Module"]:
    def build(
        *,
        in_channels: int = 2,
        out_channels: int = 1,
        features: Sequence[int] = (24, 48, 96, 192),
        blocks_per_stage: Sequence[int] = (1, 1, 2, 2),
        mask_channel: int | None = 1,
        top_fraction: float | None = None,
    ) -> "nn.Module":
        from .weak_networks import FibrosisCAMClassifier

        return FibrosisCAMClassifier(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features,
            blocks_per_stage=blocks_per_stage, mask_channel=mask_channel, top_fraction=top_fraction,
        )

    level = "slice" if spatial_dims == 2 else "stack"
    build.__doc__ = (
        f"``FibrosisCAMClassifier`` ({level} level): image + myocardium-mask channels in, ``(batch, out_channels)`` "
        "logits out; ``forward_with_cam`` also returns the CAM at 1/4 resolution."
    )
    return build


NETWORK_BUILDERS: dict[str, Callable[..., "nn.Module"]] = {
    "unet2d": _unet2d,
    "basic_unet2d": _basic_unet2d,
    "flexible_unet": _flexible_unet,
    "densenet121_2d": _densenet121_2d,
    "resnet18_2d": _resnet_2d(18),
    "resnet34_2d": _resnet_2d(34),
    "tiny_unet2d": _tiny_unet2d,
    "tiny_cnn2d": _tiny_cnn2d,
    "qc_vae": _qc_vae,
    "qc_dice_regressor": _qc_dice_regressor,
    "fibrosis_cam_2d": _fibrosis_cam(2),
    "fibrosis_cam_stack": _fibrosis_cam(3),
    "cam_classifier_2d": _fibrosis_cam(2),
}
"""Network name -> builder taking keyword hyperparameters only. Add an entry here to make a network trainable."""


def network_names() -> tuple[str, ...]:
    """The names :func:`build_network` accepts, sorted."""
    return tuple(sorted(NETWORK_BUILDERS))


def build_network(name: str, **kwargs: Any) -> "nn.Module":
    """Build the network ``name`` with hyperparameters ``kwargs``; training and inference both call this.

    Parameters
    ----------
    name : str
        One of :func:`network_names`, e.g. ``"unet2d"``.
    **kwargs
        Hyperparameters of that builder (``in_channels``, ``out_channels``, ``channels``, ``strides``, ...);
        the model card's ``network_kwargs``. Omitted ones take the builder's defaults.

    Returns
    -------
    torch.nn.Module
        A freshly initialised network (weights from torch's global generator; training uses
        :func:`build_seeded_network`) whose ``forward`` returns logits.

    Raises
    ------
    ModelError
        For an unknown name (the message lists the known ones), or a keyword the builder does not take.
    """
    builder = NETWORK_BUILDERS.get(name)
    if builder is None:
        raise ModelError(
            f"Unknown network {name!r}. Known networks: {', '.join(network_names())}. "
            "Check the 'network' field of the model card or training config."
        )
    accepted = [p for p in inspect.signature(builder).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(
            f"Network {name!r} got unknown hyperparameters {unknown}; it accepts {accepted}. "
            "Check 'network_kwargs' in the model card or training config."
        )
    try:
        return builder(**kwargs)
    except ModelError:
        raise
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelError(f"Network {name!r} cannot be built with {kwargs}: {error}") from error


def build_seeded_network(name: str, seed: int, **kwargs: Any) -> "nn.Module":
    """:func:`build_network` with its initial weights drawn from ``seed``, the global generator left untouched.

    Training runs build their networks with this, so that a run's initial weights depend on its seed alone and not
    on whatever drew random numbers earlier in the same process (another stage, an inference pass).
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_network(name, **kwargs)
