"""Official test-time preprocessing: resize rule, BGR -> RGB mean subtraction, input checks."""
import cv2
import numpy as np
import pytest

from dcnviz.errors import UserError
from dcnviz.models.preprocess import preprocess, resize_scale


@pytest.mark.parametrize("hw, scales, want", [
    ((375, 500), (600, 1000), 1.6),          # short side -> 600, long side 800 fits
    ((300, 1000), (600, 1000), 1.0),         # 600/300 would make the long side 2000 -> long side 1000
    ((1024, 2048), (1024, 2048), 1.0),       # Cityscapes: scale 1
    ((600, 1001), (600, 1000), 1000 / 1001),  # round(1001) > 1000
])
def test_resize_rule(hw, scales, want):
    assert resize_scale(*hw, *scales) == pytest.approx(want, rel=1e-12)


def test_channels_are_rgb_minus_means():
    im = np.zeros((4, 6, 3), np.uint8)
    im[...] = (10, 20, 30)  # B, G, R
    im[0, 0] = (255, 0, 7)
    data, prep = preprocess(im, (4, 100))
    assert data.dtype.is_floating_point and data.shape == (1, 3, 4, 6)
    np.testing.assert_array_equal(data[0, :, 1, 1].numpy(), np.float32([30 - 123.15, 20 - 115.90, 10 - 103.06]))
    np.testing.assert_array_equal(data[0, :, 0, 0].numpy(), np.float32([7 - 123.15, 0 - 115.90, 255 - 103.06]))
    assert prep.image_size == (4, 6) and prep.scale == 1.0 and prep.input_size == (4, 6)


def test_resize_matches_opencv_and_reads_paths(tmp_path):
    im = np.random.RandomState(0).randint(0, 256, (30, 50, 3)).astype(np.uint8)
    path = str(tmp_path / "im.png")
    cv2.imwrite(path, im)
    data, prep = preprocess(path, (60, 1000))
    assert prep.scale == 2.0 and prep.input_size == (60, 100) and prep.image_size == (30, 50)
    resized = cv2.resize(im, None, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(data[0, 2].numpy(), (resized[:, :, 0] - 103.06).astype(np.float32))


@pytest.mark.parametrize("image, match", [
    (np.zeros((4, 4), np.uint8), r"BGR uint8 array of shape \(H, W, 3\), got array uint8 \(4, 4\)"),
    (np.zeros((4, 4, 3), np.float32), "got array float32"),
    (np.zeros((0, 4, 3), np.uint8), "must not be empty"),
    ([1, 2, 3], "got list"),
])
def test_bad_images(image, match):
    with pytest.raises(UserError, match=match):
        preprocess(image, (600, 1000))


def test_unreadable_paths(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        preprocess(str(tmp_path / "missing.jpg"), (600, 1000))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*bad.jpg.: not an image file"):
        preprocess(str(bad), (600, 1000))
