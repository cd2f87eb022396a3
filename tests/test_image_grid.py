"""The one image-grid builder (data.images.image_grid) and the grids built on it (reconstruction eval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vqrae.data.images import image_grid

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (128, 64, 32)]
WHITE = (255, 255, 255)


def _solid(rgb, size=(6, 4)) -> Image.Image:  # (width, height): not square, so rows and columns can't be swapped
    return Image.new("RGB", size, rgb)


def _cell(grid: Image.Image, row: int, col: int, w: int, h: int, pad: int = 0) -> tuple[int, int, int]:
    """The colour at the centre of cell (row, col); asserts the whole cell is that one colour."""
    arr = np.asarray(grid)
    x0, y0 = pad + col * (w + pad), pad + row * (h + pad)
    block = arr[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3)
    assert (block == block[0]).all(), f"cell ({row}, {col}) is not one colour"
    return tuple(int(v) for v in block[0])


@pytest.mark.parametrize("n, columns, shape", [(5, None, (2, 3)), (4, None, (2, 2)), (7, 3, (3, 3)), (3, 5, (1, 3)),
                                               (1, None, (1, 1))])
def test_sizes_and_row_major_placement(n, columns, shape):
    grid = image_grid([_solid(c) for c in COLOURS[:n]], columns)
    rows, cols = shape
    assert grid.mode == "RGB" and grid.size == (cols * 6, rows * 4)
    for i in range(rows * cols):
        # image i at row i // cols, column i % cols; cells after the last image are white
        assert _cell(grid, i // cols, i % cols, 6, 4) == (COLOURS[i] if i < n else WHITE)
    if columns is None:
        assert cols == math.ceil(math.sqrt(n))


def test_padding_frames_and_separates_cells():
    grid = image_grid([_solid(c) for c in COLOURS[:3]], columns=2, padding=2, background=0.0)
    assert grid.size == (2 + 2 * (6 + 2), 2 + 2 * (4 + 2))
    arr = np.asarray(grid)
    assert (arr[:2] == 0).all() and (arr[:, :2] == 0).all() and (arr[:, 8:10] == 0).all()  # frame and gutter
    assert [_cell(grid, r, c, 6, 4, pad=2) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))] == [*COLOURS[:3], (0, 0, 0)]


def test_tensors_pil_and_none_cells():
    pil = [_solid(c) for c in COLOURS[:3]]
    tensors = [torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 4, 6) for c in COLOURS[:3]]
    a = image_grid(pil, 3)
    assert np.array_equal(np.asarray(a), np.asarray(image_grid(tensors, 3)))
    assert np.array_equal(np.asarray(a), np.asarray(image_grid(torch.stack(tensors), 3)))  # one (N, 3, H, W) tensor
    assert np.array_equal(np.asarray(a), np.asarray(image_grid([pil[0], tensors[1], pil[2]], 3)))  # mixed
    holes = image_grid([pil[0], None, tensors[2]], 3)
    assert [_cell(holes, 0, c, 6, 4) for c in range(3)] == [COLOURS[0], WHITE, COLOURS[2]]
    # values outside [0, 1] are clamped, not wrapped
    assert _cell(image_grid([torch.full((3, 4, 6), 2.0), torch.full((3, 4, 6), -1.0)], 2), 0, 1, 6, 4) == (0, 0, 0)


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="differ in size"):
        image_grid([_solid(COLOURS[0]), _solid(COLOURS[1], (4, 4))])
    with pytest.raises(ValueError, match="at least one"):
        image_grid([])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        image_grid([torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="columns"):
        image_grid([_solid(COLOURS[0])], columns=0)


def test_reconstruction_grid_interleaves_rows(tmp_path):
    from vqrae.eval.reconstruction import save_grid

    def batch(colours):
        return torch.stack([torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 4, 4)
                            for c in colours])

    originals, recons = batch(COLOURS[:3]), batch(COLOURS[3:6])
    save_grid(originals, recons, tmp_path / "sub" / "grid.png", columns=2)
    grid = Image.open(tmp_path / "sub" / "grid.png").convert("RGB")
    assert grid.size == (2 * 4, 4 * 4)
    rows = [[_cell(grid, r, c, 4, 4) for c in range(2)] for r in range(4)]
    # originals 0, 1 over their reconstructions; then original 2 over reconstruction 2 (a short row starts anew)
    assert rows == [COLOURS[0:2], COLOURS[3:5], [COLOURS[2], WHITE], [COLOURS[5], WHITE]]
    # fewer images than columns: the grid is as wide as the images, and at most 4 rows of pairs are kept
    save_grid(originals[:1], recons[:1], tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").size == (4, 8)
    many = batch(COLOURS * 2)
    save_grid(many, many, tmp_path / "many.png", columns=1)
    assert Image.open(tmp_path / "many.png").size == (4, 8 * 4)
