"""Shared fixtures. Tests that read the real data in ../shared/data skip cleanly where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """../shared/data beside the repository, or $CARDIACAI_SHARED_DATA."""
    override = os.environ.get("CARDIACAI_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root} (set CARDIACAI_SHARED_DATA to its folder)")
    return root


@pytest.fixture(scope="session")
def acdc_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "acdc" / "training"
    if not root.is_dir():
        pytest.skip(f"ACDC data not available at {root}")
    return root


@pytest.fixture(scope="session")
def emidec_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "emidec-png"
    if not root.is_dir():
        pytest.skip(f"EMIDEC data not available at {root}")
    return root


# -- QC tests: one torch thread, the 8-slice cine phantom, a tiny registered qc_vae -----------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions run much faster on one thread than on two busy cores (QC test modules use it autouse)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cine_phantom():
    """The 8-slice cine phantom with seed 3: heart on slices 1..6, none on slices 0 and 7."""
    from cardiac_ai.phantom import make_cine_phantom

    return make_cine_phantom(n_slices=8, seed=3)


_CINE_STRUCTURES = {1: "rv_blood_pool", 2: "lv_myocardium", 3: "lv_blood_pool"}


def _save_seeded_untrained(folder: Path, name: str, task: str, network_kwargs: dict) -> Path:
    """Write an untrained ``name`` network (weights drawn with seed 0) with its card into ``folder``."""
    import torch
    from cardiac_ai.models import ModelCard, save_model

    card = ModelCard(name=name, version="0.1", task=task, network=name, network_kwargs=network_kwargs,
                     label_map=_CINE_STRUCTURES, training_data="none")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model(card.build_network(), card, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qc_models(tmp_path_factory):
    """A tmp registry folder holding a tiny, randomly initialised (seed 0) qc_vae for the three cine structures."""
    return _save_seeded_untrained(tmp_path_factory.mktemp("qc_models"), "qc_vae", "qc",
                                  {"latent_size": 2, "features": [4, 4, 8, 8]})


@pytest.fixture(scope="module")
def tiny_qc_regressor_models(tmp_path_factory):
    """A tmp registry folder holding a tiny, randomly initialised (seed 0) qc_dice_regressor (to pass beside
    ``tiny_qc_models``)."""
    return _save_seeded_untrained(tmp_path_factory.mktemp("qc_regressor_models"), "qc_dice_regressor", "regression",
                                  {"in_channels": 4, "n_outputs": 3, "features": [4, 8], "input_size": 96})


@pytest.fixture(scope="session")
def save_untrained_map_model():
    """``save(folder)`` writes an untrained two-level ``map_myocardium`` (64 px at 2 mm, seeded weights) into
    ``folder`` and returns the folder: for tests of the mapping plumbing, whose labels do not come from it."""

    def save(folder: Path) -> Path:
        import torch

        from cardiac_ai.mapping import MAP_MODEL_NAME
        from cardiac_ai.models import ModelCard, save_model
        from cardiac_ai.preprocessing import InputSpec

        spec = InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(64, 64))
        card = ModelCard(name=MAP_MODEL_NAME, version="0.1", task="segmentation", network="unet2d",
                         network_kwargs={"out_channels": 4, "channels": (4, 8), "strides": (2,), "num_res_units": 0},
                         input_spec=spec.to_dict(), label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"})
        with torch.random.fork_rng():
            torch.manual_seed(0)
            save_model(card.build_network(), card, folder)
        return folder

    return save
