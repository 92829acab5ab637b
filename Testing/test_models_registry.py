"""Model cards and the weight registry: round trips, search order, and every way a model file can be wrong."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.models import (
    MODEL_CARD_SCHEMA,
    ModelCard,
    ModelRegistry,
    build_network,
    default_model_dirs,
    read_card,
    save_model,
)


def make_card(name: str = "toy_seg", version: str = "1.0", **changes) -> ModelCard:
    settings = dict(
        name=name, version=version, task="segmentation", network="tiny_unet2d",
        network_kwargs={"in_channels": 1, "out_channels": 3},
        input_spec={"in_plane_spacing_mm": [1.25, 1.25], "crop_size": [16, 16], "normalisation": "zscore",
                    "channels": ["cine"]},
        label_map={0: "background", 1: "rv_blood_pool", 2: "lv_myocardium"},
        training_data="synthetic phantom", split={"train": 8, "val": 2}, epochs=3,
        validation_metrics={"dice": 0.5}, date="2025-01-01",
    )
    settings.update(changes)
    return ModelCard(**settings)


def saved_model(folder: Path, card: ModelCard | None = None, *, seed: int = 0, half: bool = True):
    card = card or make_card()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = card.build_network()
    return network, save_model(network, card, folder, half_precision=half)


def registry_on(*folders: Path, **kwargs) -> ModelRegistry:
    return ModelRegistry(list(folders), environ=kwargs.pop("environ", {}), **kwargs)


def sample() -> torch.Tensor:
    return torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("half", [True, False])
def test_save_then_load_gives_the_same_outputs(tmp_path, half):
    network, card_path = saved_model(tmp_path, half=half)
    loaded = registry_on(tmp_path).load("toy_seg", device="cpu")
    assert not loaded.network.training
    assert loaded.card.precision == ("float16" if half else "float32")
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    network.eval()
    with torch.no_grad():
        expected, found = network(sample()), loaded.network(sample())
    if half:
        torch.testing.assert_close(found, expected, atol=1e-2, rtol=1e-2)
    else:
        assert torch.equal(found, expected)
    assert loaded.model_use().sha256 == read_card(card_path).sha256
    assert card_path == tmp_path / "toy_seg-1.0.json" and (tmp_path / "toy_seg-1.0.safetensors").is_file()


def test_card_dict_round_trip_keeps_integer_label_codes(tmp_path):
    card = make_card()
    data = json.loads(json.dumps(card.to_dict()))
    assert data["model_card_schema"] == MODEL_CARD_SCHEMA and "1" in data["label_map"]
    assert ModelCard.from_dict(data) == card


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": "v1"}, "version 'v1' must be dotted numbers"),
        ({"name": "Toy-Seg"}, "name 'Toy-Seg' must be lower-case"),
        ({"precision": "int8"}, "precision 'int8'"),
        ({"schema": MODEL_CARD_SCHEMA + 1}, "newer than this cardiac_ai reads"),
    ],
)
def test_invalid_cards_are_refused(changes, message):
    with pytest.raises(ModelError, match=message):
        make_card(**changes)


def test_card_with_unknown_key_is_refused():
    data = make_card().to_dict()
    data["weights_url"] = "http://example"
    with pytest.raises(ModelError, match="unknown keys \\['weights_url'\\]"):
        ModelCard.from_dict(data)


def test_missing_weights_file_names_the_path_and_the_fix(tmp_path):
    saved_model(tmp_path)
    (tmp_path / "toy_seg-1.0.safetensors").unlink()
    with pytest.raises(ModelError, match="toy_seg-1.0.safetensors not found.*CARDIACAI_MODELS"):
        registry_on(tmp_path).load("toy_seg")


def test_truncated_weights_fail_the_checksum(tmp_path):
    saved_model(tmp_path)
    weights = tmp_path / "toy_seg-1.0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match="toy_seg-1.0.safetensors has SHA-256.*truncated, corrupt"):
        registry_on(tmp_path).load("toy_seg")


def test_weights_from_another_model_fail_the_checksum(tmp_path):
    saved_model(tmp_path / "a", seed=0)
    saved_model(tmp_path / "b", seed=1)
    os.replace(tmp_path / "b" / "toy_seg-1.0.safetensors", tmp_path / "a" / "toy_seg-1.0.safetensors")
    with pytest.raises(ModelError, match="SHA-256"):
        registry_on(tmp_path / "a").load("toy_seg")


def test_corrupt_file_with_matching_checksum_is_reported_as_unreadable(tmp_path):
    saved_model(tmp_path)
    weights = tmp_path / "toy_seg-1.0.safetensors"
    weights.write_bytes(b"not a safetensors file")
    card_path = tmp_path / "toy_seg-1.0.json"
    data = json.loads(card_path.read_text())
    data["sha256"] = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot read .*toy_seg-1.0.safetensors as safetensors"):
        registry_on(tmp_path).load("toy_seg")


def test_weights_that_do_not_fit_the_network_list_the_mismatches(tmp_path):
    saved_model(tmp_path)
    card_path = tmp_path / "toy_seg-1.0.json"
    data = json.loads(card_path.read_text())
    data["network_kwargs"]["out_channels"] = 5
    card_path.write_text(json.dumps(data))
    expected = "toy_seg-1.0.safetensors do not match network tiny_unet2d.*wrong shape.*model.2.conv.weight "
    with pytest.raises(ModelError, match=expected + "\\(12, 3, 3, 3\\) vs network \\(12, 5, 3, 3\\)"):
        registry_on(tmp_path).load("toy_seg")


def test_save_refuses_a_network_that_does_not_match_its_card(tmp_path):
    network = build_network("tiny_unet2d", in_channels=1, out_channels=2)
    with pytest.raises(ModelError, match="does not match card toy_seg-1.0"):
        save_model(network, make_card(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_unknown_model_name_lists_available_models(tmp_path):
    saved_model(tmp_path)
    with pytest.raises(ModelError, match="No model named 'lge_scar'.*Available: \\['toy_seg'\\]"):
        registry_on(tmp_path).card("lge_scar")
    with pytest.raises(ModelError, match="no version '2.0'.*\\['1.0'\\]"):
        registry_on(tmp_path).card("toy_seg", "2.0")


def test_latest_version_is_chosen_numerically(tmp_path):
    for version in ("1.2", "1.10", "1.9.1"):
        saved_model(tmp_path, make_card(version=version))
    registry = registry_on(tmp_path)
    assert registry.card("toy_seg").version == "1.10"
    assert [c.version for c in registry.list()] == ["1.2", "1.9.1", "1.10"]
    assert registry.load("toy_seg", "1.2").card.version == "1.2"


def test_models_in_subfolders_are_found_and_other_json_is_ignored(tmp_path):
    saved_model(tmp_path / "toy_seg")
    (tmp_path / "config.json").write_text(json.dumps({"network": "unet2d"}))
    registry = registry_on(tmp_path)
    assert [c.name for c in registry.list()] == ["toy_seg"]
    assert registry.problems == {}


def test_a_broken_card_does_not_hide_the_other_models(tmp_path):
    saved_model(tmp_path)
    (tmp_path / "broken-1.0.json").write_text(json.dumps({"model_card_schema": 1, "name": "broken"}))
    registry = registry_on(tmp_path)
    assert [c.name for c in registry.list()] == ["toy_seg"]
    assert tmp_path / "broken-1.0.json" in registry.problems
    with pytest.raises(ModelError, match="Unusable cards.*broken-1.0.json"):
        registry.card("broken")


def test_environment_folders_come_before_bundled_and_extra_paths_before_both(tmp_path):
    bundled, from_env, extra = tmp_path / "bundled", tmp_path / "env", tmp_path / "extra"
    for folder, description in ((bundled, "bundled"), (from_env, "env"), (extra, "extra")):
        saved_model(folder, make_card(description=description))
    environ = {"CARDIACAI_MODELS": os.pathsep.join([str(tmp_path / "missing"), str(from_env)])}
    assert registry_on(bundled).card("toy_seg").description == "bundled"
    assert registry_on(bundled, environ=environ).card("toy_seg").description == "env"
    registry = registry_on(bundled, environ=environ, extra_paths=[extra])
    assert registry.card("toy_seg").description == "extra"
    assert registry.load("toy_seg").weights_path == extra / "toy_seg-1.0.safetensors"
    assert registry.search_paths == (extra, from_env, bundled)


def test_missing_extra_models_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="Models folder .*nowhere does not exist"):
        ModelRegistry([], extra_paths=[tmp_path / "nowhere"], environ={})


def test_default_folders_include_the_repository_models_folder():
    repository_models = Path(__file__).resolve().parents[1] / "Resources" / "Models"
    if not repository_models.is_dir():
        pytest.skip(f"{repository_models} does not exist in this checkout")
    assert repository_models in [path.resolve() for path in default_model_dirs()]


def test_card_input_spec_accepts_an_object_with_to_dict():
    class Spec:
        def to_dict(self):
            return {"crop_size": [8, 8]}

    card = dataclasses.replace(make_card(), input_spec=Spec())
    assert card.input_spec == {"crop_size": [8, 8]}


def test_a_model_in_an_earlier_folder_wins_even_with_a_lower_version(tmp_path):
    bundled, mine = tmp_path / "bundled", tmp_path / "mine"
    for folder, version, description in ((bundled, "2.0", "bundled"), (mine, "0.1", "mine")):
        card = ModelCard(name="toy_seg", version=version, task="segmentation", network="tiny_unet2d",
                         network_kwargs={"out_channels": 2}, description=description)
        save_model(build_network("tiny_unet2d", out_channels=2), card, folder)
    registry = ModelRegistry(paths=[mine, bundled])
    assert registry.card("toy_seg").description == "mine"
    assert registry.card("toy_seg", "2.0").description == "bundled"  # an explicit version is still found


def test_a_registry_model_becomes_the_start_checkpoint_of_a_fine_tune(tmp_path):
    """The highest version of a bundled model, written as a trainer checkpoint, loads into a fresh network of its
    kind and gives the model's outputs; the checkpoint says which model it came from; a missing one is refused."""
    from cardiac_ai.training.checkpoint import load_checkpoint_weights, registry_model_checkpoint

    saved_model(tmp_path, make_card(version="1.0"), seed=0)
    saved_model(tmp_path, make_card(version="2.0"), seed=1)
    path = registry_model_checkpoint(tmp_path, "toy_seg", tmp_path / "start" / "init.pt")

    fresh = make_card().build_network()
    checkpoint = load_checkpoint_weights(fresh, path)
    assert checkpoint["from"] == "toy_seg 2.0" and checkpoint["epoch"] == 0
    expected = registry_on(tmp_path).load("toy_seg", device="cpu").network
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(sample()), expected(sample()), atol=1e-3, rtol=1e-3)
    with pytest.raises(ModelError, match="other_model"):
        registry_model_checkpoint(tmp_path, "other_model", tmp_path / "none.pt")
    assert not (tmp_path / "none.pt").exists()


def test_a_2_5d_card_whose_network_takes_one_channel_is_refused_before_inference(tmp_path):
    spec = {"in_plane_spacing_mm": [1.25, 1.25], "crop_size": [16, 16], "channels": 3, "slice_context": 1}
    saved_model(tmp_path, make_card(input_spec=spec, network_kwargs={"in_channels": 3, "out_channels": 3}))
    assert registry_on(tmp_path).load("toy_seg", device="cpu").network(torch.rand(1, 3, 16, 16)).shape[1] == 3
    saved_model(tmp_path, make_card(version="2.0", input_spec=spec))  # in_channels 1: a card for other weights
    with pytest.raises(ModelError, match="neighbouring slice"):
        registry_on(tmp_path).load("toy_seg", device="cpu")


def test_a_saved_model_has_a_sorted_header_so_equal_weights_give_equal_files(tmp_path):
    from safetensors.torch import load_file

    _, card_path = saved_model(tmp_path / "a", seed=3)
    _, again = saved_model(tmp_path / "b", seed=3)
    weights = card_path.with_suffix(".safetensors").read_bytes()
    size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["name", "version"]
    assert weights == again.with_suffix(".safetensors").read_bytes()
    assert read_card(card_path).sha256 == read_card(again).sha256
    state = load_file(card_path.with_suffix(".safetensors"))  # still a valid file whose offsets are right
    assert set(state) == set(make_card().build_network().state_dict())
