"""Comparison videos and PNG strips: layout, conversion and the file on disk."""

import numpy as np
import pytest
from PIL import Image

from vidgen.evaluation import visualize


def test_to_uint8_maps_range_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(visualize.to_uint8(x), [0, 0, 128, 255, 255])


def test_side_by_side_layout():
    a = np.full((3, 4, 5, 3), 10, np.uint8)
    b = np.full((3, 4, 5, 3), 1.0, np.float32)
    out = visualize.side_by_side(a, b, gap=2)
    assert out.shape == (3, 4, 12, 3) and out.dtype == np.uint8
    assert (out[:, :, :5] == 10).all() and (out[:, :, 5:7] == 0).all() and (out[:, :, 7:] == 255).all()
    with pytest.raises(ValueError, match="one shape"):
        visualize.side_by_side(a, a[:, :, :4])


def test_frame_strip_rows_and_png(tmp_path):
    video = np.arange(9, dtype=np.uint8)[:, None, None, None] * np.ones((9, 4, 6, 3), np.uint8)
    strip = visualize.frame_strip([video, video + 100], max_frames=3, gap=1)
    assert strip.shape == (2 * 5, 3 * 7, 3)
    assert [strip[0, 7 * i, 0] for i in range(3)] == [0, 4, 8]        # evenly spaced frames
    assert strip[5, 0, 0] == 100                                       # second row below
    path = tmp_path / "sub" / "strip.png"
    visualize.save_png(path, strip)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), strip)
