"""The data keys of the config: configs/folder.py validates once a folder is given; a folder
or packed dataset without its path is a one-line config error."""

from __future__ import annotations

import pytest

from byol_jax import data, train_data, validation
from configs import common, folder


def _validate(config):
    validation.validate_config(
        config, device_count=1, process_count=1, known_datasets=data.is_known_dataset
    )


def test_folder_config_needs_a_folder_and_then_validates():
    config = folder.get_config()
    assert config.data.dataset == "folder" and config.data.folder_labels is False
    with pytest.raises(validation.ConfigError, match="data.folder='' .* a folder of images"):
        _validate(config)
    config.data.folder = "/data/my_images"
    _validate(config)  # the path itself is checked when the data is read


def test_packed_needs_the_prepare_output_and_unknown_names_list_the_routes():
    config = common.base_config()
    config.batch_size = 8
    config.data.dataset = "packed"
    with pytest.raises(validation.ConfigError, match="the --out of byol_jax.prepare"):
        _validate(config)
    config.data.folder = "/data/packed"
    _validate(config)
    config.data.dataset = "no_such_dataset"
    with pytest.raises(validation.ConfigError, match="'folder' or 'packed'"):
        _validate(config)


def test_source_options_route_the_folder_as_the_data_location():
    config = folder.get_config()
    config.data.folder, config.data.data_dir = "/imgs", "/tfds"
    assert train_data.source_options(config.data)["data_dir"] == "/imgs"
    config.data.dataset = "cifar10"
    assert train_data.source_options(config.data)["data_dir"] == "/tfds"
