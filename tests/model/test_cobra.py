"""Spec: the order the language model reads the image patches in is part of a model's config: the release's (rows) by
default, column by column where a model says so, and it survives saving and loading."""

import dataclasses

import pytest
import torch

from cobra_app import load
from cobra_app.loading import save_model_dir
from cobra_app.model.cobra import CobraConfig, CobraVLM
from tests.helpers import make_tiny_vlm, reading_columns, sample_image


def image_tokens(vlm: CobraVLM) -> torch.Tensor:
    pixels = {k: v[None] for k, v in vlm.image_transform(sample_image()).items()}
    with torch.no_grad():
        return vlm.encode_images(pixels)[0]  # [P, d]


def test_columns_read_the_patch_of_row_r_and_column_c_at_position_c_times_grid_plus_r():
    rows, _ = make_tiny_vlm()
    grid = rows.config.vision.patch_grid
    by_rows, by_columns = image_tokens(rows), image_tokens(reading_columns(rows))
    assert grid > 1 and by_rows.shape == by_columns.shape
    for r in range(grid):
        for c in range(grid):
            assert torch.equal(by_columns[c * grid + r], by_rows[r * grid + c])
    assert not torch.equal(by_columns, by_rows)


def test_a_config_that_names_no_order_reads_rows_as_the_release_does():
    vlm, _ = make_tiny_vlm()
    saved = vlm.config.to_dict()
    del saved["image_token_order"]  # config.json files written before the field existed
    assert CobraConfig.from_dict(saved).image_token_order == "rows"


def test_the_order_survives_saving_and_loading(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    columns = reading_columns(vlm)
    loaded = load(save_model_dir(columns, tokenizer, tmp_path / "model"), device="cpu", dtype="float32").vlm
    assert loaded.config.image_token_order == "columns"
    assert torch.equal(image_tokens(loaded), image_tokens(columns))


def test_an_unknown_order_is_refused_with_the_known_ones():
    vlm, _ = make_tiny_vlm()
    with pytest.raises(ValueError, match=r"'spiral'.*\['columns', 'rows'\]"):
        dataclasses.replace(vlm.config, image_token_order="spiral")
