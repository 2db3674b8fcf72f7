"""Preprocessing, MixUp/CutMix and RandAugment.

Pinned values marked "TF 2.4.1" were produced by the official TF code (nfnets/autoaugment.py,
dataset.py) under tensorflow-cpu 2.4.1 + tensorflow-addons 0.12.1 + numpy 1.19.5 (the official
requirements' era), run in graph mode as inside the official tf.data map.
"""

import io

import grain
import numpy as np
import pytest
from PIL import Image

from study.engine.datasets import mix, preprocess as pp, randaugment as ra
from study.engine.datasets.resize import resize_bicubic, resize_bicubic_tf


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.linspace(0, 255, h), np.linspace(0, 100, w))[..., None]
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --- train crop ------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(375, 500), (57, 83), (100, 400), (20, 20)])
def test_distorted_crop_stays_within_the_official_bounds(hw):
    h_img, w_img = hw
    rng = np.random.default_rng(0)
    boxes = np.array([pp.sample_distorted_bounding_box(h_img, w_img, rng) for _ in range(1500)])
    y, x, h, w = boxes.T
    full = (h == h_img) & (w == w_img)
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= h_img).all() and (x + w <= w_img).all()
    area = h * w / (h_img * w_img)
    # min_object_covered=0.1 over the whole-image box raises the 0.08 area floor to 0.1
    assert area[~full].min() >= 0.1 and area.max() <= 1.0
    # w = round(h * ratio), ratio in [3/4, 4/3]
    ratio = w[~full] / h[~full]
    assert (ratio >= 0.75 - 0.5 / h[~full]).all() and (ratio <= 4 / 3 + 0.5 / h[~full]).all()
    assert len(set(map(tuple, boxes))) > 100  # actually random
    if hw == (375, 500):  # spread over the whole range
        assert area.min() < 0.15 and area.max() > 0.9 and ratio.min() < 0.8 and ratio.max() > 1.25


def test_center_crop_window_by_hand():
    # scale = min(375, 500) / 256 = 1.46484375; int(1.46484375 * 224) = 328
    assert pp.center_crop_window(375, 500, 224) == (24, 86, 328, 328)
    # scale = 57 / 48 = 1.1875; int(1.1875 * 16) = 19; offsets (57 - 19 + 1) // 2, (83 - 19 + 1) // 2
    assert pp.center_crop_window(57, 83, 16, pad=32) == (19, 32, 19, 19)


def test_inception_crop_is_crop_flip_resize_with_the_given_rng():
    jb = encode(photo(57, 83))
    out = pp.inception_crop(jb, 24, np.random.default_rng(5))
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    rng = np.random.default_rng(5)  # redo by hand with the same draws
    y, x, h, w = pp.sample_distorted_bounding_box(57, 83, rng)
    im = Image.open(io.BytesIO(jb)).convert("RGB").crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(out, np.asarray(im.resize((24, 24), Image.Resampling.BICUBIC)))
    tf_out = pp.inception_crop(jb, 24, np.random.default_rng(5), resize="tf")
    assert tf_out.dtype == np.float32 and tf_out.shape == (24, 24, 3)


def test_decode_inception_crop_transform_is_seeded():
    recs = [{"image": encode(photo(57 + i, 83, i)), "label": np.int32(i)} for i in range(4)]
    def run(seed):
        ds = grain.MapDataset.source(recs).seed(seed).random_map(pp.DecodeInceptionCrop(16))
        return np.stack([r["image"] for r in ds])
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 16, 16, 3) and not np.array_equal(a, c)


# --- eval resize + crop, normalise -----------------------------------------------------------


def test_eval_resize_crop_matches_pil_by_hand():
    jb = encode(photo(57, 83))
    out = pp.DecodeResizeCrop(24).map({"image": jb, "label": 3})
    # both sides to 24 + 32 = 56 (aspect ratio not kept), then rows/cols [16, 40)
    big = Image.open(io.BytesIO(jb)).convert("RGB").resize((56, 56), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(out["image"], np.asarray(big)[16:40, 16:40])
    assert out["label"] == 3 and out["image"].dtype == np.uint8
    odd = pp.resize_then_center_crop(photo(40, 30), 7)  # 39 -> offset (32 + 1) // 2 = 16
    np.testing.assert_array_equal(odd, resize_bicubic(photo(40, 30), (39, 39))[16:23, 16:23])


def test_normalize_uses_imagenet_statistics_in_pixel_units():
    img = np.full((2, 3, 3), 255, np.uint8)
    out = pp.Normalize().map({"image": img})["image"]
    expect = (255 - np.array(pp.IMAGENET_MEAN)) / np.array(pp.IMAGENET_STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2], expect, rtol=1e-6)
    np.testing.assert_allclose(pp.IMAGENET_MEAN, (123.675, 116.28, 103.53))


# --- the TF-bicubic port ---------------------------------------------------------------------

RS_IN = np.array([[7, 60, 113, 166], [219, 16, 69, 122], [175, 228, 25, 78]], np.uint8)[..., None]
RS_DOWN = [[47.4179573059082, 72.9233627319336, 153.2113494873047],  # TF 2.4.1, (2, 3)
           [189.5522918701172, 106.20804595947266, 77.64636993408203]]
RS_UP_ROW0 = [-8.4478759765625, 24.042146682739258, 71.92391204833984, 106.60324096679688,
              146.4749755859375, 171.7906036376953]  # TF 2.4.1, (4, 6), first row


def test_tf_bicubic_port_matches_pinned_tensorflow_values():
    np.testing.assert_allclose(resize_bicubic_tf(RS_IN, (2, 3))[..., 0], RS_DOWN, atol=1e-3)
    up = resize_bicubic_tf(RS_IN, (4, 6))
    np.testing.assert_allclose(up[0, :, 0], RS_UP_ROW0, atol=1e-3)
    assert up.min() < 0  # overshoot is kept, as in the official pipeline (no clipping)
    img = photo(13, 17)
    np.testing.assert_array_equal(resize_bicubic_tf(img, (13, 17)), img.astype(np.float32))
    np.testing.assert_allclose(resize_bicubic_tf(np.full((9, 5, 3), 77, np.uint8), (4, 11)), 77, atol=1e-4)
    with pytest.raises(ValueError, match="resize method"):
        resize_bicubic(img, (3, 3), "lanczos")


# --- MixUp / CutMix --------------------------------------------------------------------------


def test_cutmix_ratio_is_the_pasted_pixel_fraction():
    h, w = 20, 28
    images = np.concatenate([np.zeros((8, h, w, 3)), np.ones((4, h, w, 3)), np.zeros((4, h, w, 3))])
    labels = np.array([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    out = mix.mix({"image": images.astype(np.float32), "label": labels}, np.random.default_rng(0),
                  num_classes=5)
    assert out["image"].shape == (8, h, w, 3) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["label_dist"].sum(1), 1.0, rtol=1e-6)
    assert out["label"].tolist() == [0] * 4 + [2] * 4
    cut = out["image"][4:, ..., 0]  # q3 (ones, label 2) pasted onto q4 (zeros, label 3)
    assert ((cut.mean(axis=(1, 2)) > 0) & (cut.mean(axis=(1, 2)) < 1)).any()
    np.testing.assert_allclose(out["label_dist"][4:, 2], cut.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(out["label_dist"][4:, 3], 1 - cut.mean(axis=(1, 2)), rtol=1e-6)
    for m in cut:  # the pasted region is one axis-aligned box
        rows, cols = np.where(m.any(1))[0], np.where(m.any(0))[0]
        if rows.size:
            assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and m.sum() == rows.size * cols.size


def test_mixup_images_and_labels_share_the_ratio():
    h = w = 6
    images = np.concatenate([np.full((4, h, w, 3), 100.0), np.full((4, h, w, 3), 20.0)])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    out = mix.mix({"image": images, "label": labels}, np.random.default_rng(3), num_classes=2, mode="mixup")
    r = out["label_dist"][:, 1]
    np.testing.assert_allclose(out["image"][:, 0, 0, 0], 20 + 80 * r, rtol=1e-5)
    np.testing.assert_allclose(out["label_dist"].sum(1), 1.0, rtol=1e-6)
    # Beta(0.2, 0.2): mean 1/2, most of the mass near 0 and 1
    labels = np.array([1] * 2000 + [0] * 2000)
    ratios = mix.mix({"image": np.zeros((4000, 1, 1, 1)), "label": labels}, np.random.default_rng(0),
                     num_classes=2, mode="mixup")["label_dist"][:, 1]
    assert np.mean((ratios < 0.1) | (ratios > 0.9)) > 0.5 and abs(ratios.mean() - 0.5) < 0.05


def test_cutmix_box_side_follows_sqrt_one_minus_u():
    rng = np.random.default_rng(0)
    masks = np.stack([mix.cutmix_mask(64, 64, rng)[..., 0] for _ in range(3000)])
    frac = masks.mean(axis=(1, 2))
    # unclipped area fraction is ~(1 - U), uniform; clipping at the border only shrinks it
    assert frac.max() <= 1.0 and 0.25 < frac.mean() < 0.5 and (frac == 0).mean() < 0.05


def test_mix_validates_and_is_deterministic():
    batch = {"image": np.random.default_rng(0).random((8, 5, 5, 3)).astype(np.float32),
             "label": np.arange(8) % 3}
    a = mix.MixBatch(3).random_map(batch, np.random.default_rng(9))
    b = mix.MixBatch(3).random_map(batch, np.random.default_rng(9))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label_dist"], b["label_dist"])
    with pytest.raises(ValueError, match="divisible by 4"):
        mix.mix({"image": batch["image"][:6], "label": batch["label"][:6]}, np.random.default_rng(0),
                num_classes=3)
    with pytest.raises(ValueError, match="mode"):
        mix.MixBatch(3, mode="both")


# --- RandAugment -----------------------------------------------------------------------------


@pytest.mark.parametrize("magnitude", [0, 5, 15])
@pytest.mark.parametrize("op", ra.OPS)
def test_every_op_keeps_shape_and_dtype(op, magnitude):
    img = photo(21, 26, seed=magnitude)
    out = ra.apply_op(op, img, float(magnitude), np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8


def test_point_ops_by_hand():
    img = np.array([[[0, 10, 200], [255, 37, 128]], [[64, 65, 127], [3, 100, 250]]], np.uint8)
    np.testing.assert_array_equal(ra.invert(img), 255 - img)
    # autocontrast: per channel (x - lo) * (255 / (hi - lo)) in float32, truncated
    out = ra.autocontrast(img)
    for c in range(3):
        x = img[..., c].astype(np.float32)
        scale = np.float32(255) / (x.max() - x.min())
        np.testing.assert_array_equal(out[..., c], ((x - x.min()) * scale).astype(np.uint8))
    # TF 2.4.1: float32 rounding makes the top of channel 2 land on 254, not 255
    tf_out = [[0, 255, 64, 3], [0, 76, 155, 255], [151, 2, 0, 254]]
    np.testing.assert_array_equal(out.reshape(4, 3).T, tf_out)
    np.testing.assert_array_equal(ra.autocontrast(np.full((2, 2, 3), 9, np.uint8)), 9)  # flat: as is
    # posterize keeps the top `bits` bits; 0 bits keeps 1 (TF clamps a shift of 8 to 7)
    np.testing.assert_array_equal(ra.posterize(img, 2), img & 0b11000000)
    np.testing.assert_array_equal(ra.posterize(img, 0), img & 0b10000000)
    np.testing.assert_array_equal(ra.posterize(img, 6), img & 0b11111100)


def test_official_level_quirks():
    img = photo(16, 16)
    rng = np.random.default_rng(0)
    # Solarize threshold int(256 L) wraps mod 256 in TF: magnitude 10 inverts every pixel
    np.testing.assert_array_equal(ra.apply_op("Solarize", img, 10.0, rng), 255 - img)
    np.testing.assert_array_equal(ra.apply_op("Solarize", img, 15.0, rng), ra.solarize(img, 128))
    np.testing.assert_array_equal(ra.solarize(img, 128), np.where(img < 128, img, 255 - img))
    # Posterize gets *weaker* as the magnitude grows: int(4 L) bits kept
    np.testing.assert_array_equal(ra.apply_op("Posterize", img, 5.0, rng), img & 0b11000000)
    np.testing.assert_array_equal(ra.apply_op("Posterize", img, 15.0, rng), img & 0b11111100)
    # Contrast blends towards a grey of min(H*W/256, 255) = 1 for 16x16, not the mean grey
    np.testing.assert_array_equal(ra.contrast(img, 0.0), 1)
    np.testing.assert_array_equal(ra.contrast(photo(40, 40), 0.0), 6)
    np.testing.assert_array_equal(ra.contrast(photo(20, 20), 1.0), photo(20, 20))
    # SolarizeAdd at 15: +165 to pixels < 128, clipped
    exp = np.where(img < 128, np.minimum(img.astype(int) + 165, 255), img)
    np.testing.assert_array_equal(ra.apply_op("SolarizeAdd", img, 15.0, rng), exp)
    # Cutout at 15: a 120 x 120 square covers this 16 x 16 image whatever the centre
    np.testing.assert_array_equal(ra.apply_op("Cutout", img, 15.0, rng), 128)
    np.testing.assert_array_equal(ra.apply_op("Cutout", img, 0.0, rng), img)


GEO_IN = ((np.arange(35) * 37 + 11) % 256).astype(np.uint8).reshape(5, 7)
GEO_TF = {  # TF 2.4.1 + tfa 0.12.1, official rotate / shear_x / translate_x with replace 128
    "rotate45": [[128, 128, 159, 162, 199, 239, 128], [128, 85, 125, 162, 165, 205, 242],
                 [48, 88, 88, 128, 168, 168, 208], [14, 51, 91, 94, 131, 171, 128],
                 [128, 17, 57, 94, 97, 128, 128]],
    "shearx-0.45": [[11, 48, 85, 122, 159, 196, 233], [14, 51, 88, 125, 162, 199, 236],
                    [128, 17, 54, 91, 128, 165, 202], [128, 20, 57, 94, 131, 168, 205],
                    [128, 128, 23, 60, 97, 134, 171]],
    "translatex-3": [[128, 128, 128, 11, 48, 85, 122], [128, 128, 128, 14, 51, 88, 125],
                     [128, 128, 128, 17, 54, 91, 128], [128, 128, 128, 20, 57, 94, 131],
                     [128, 128, 128, 23, 60, 97, 134]],
}


def test_geometric_ops_match_pinned_tensorflow_outputs():
    img = np.repeat(GEO_IN[..., None], 3, axis=2)
    got = {"rotate45": ra.rotate(img, 45.0), "shearx-0.45": ra.shear_x(img, -0.45),
           "translatex-3": ra.translate_x(img, -3.0)}
    for name, out in got.items():
        np.testing.assert_array_equal(out[..., 0], GEO_TF[name], err_msg=name)
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(ra.translate_y(img, 150.0), 128)
    np.testing.assert_array_equal(ra.shear_y(ra.shear_y(img, 0.0), 0.0), img)


def test_color_matches_pinned_tensorflow_output():
    g = GEO_IN
    img = np.stack([g, g[::-1], 255 - g], -1).astype(np.uint8)
    tf_row2 = [[0, 0, 255], [25, 25, 255], [76, 76, 255], [128, 128, 125], [181, 181, 0],
               [232, 232, 0], [255, 255, 0]]  # TF 2.4.1 official color(image, 2.8), row 2
    np.testing.assert_array_equal(ra.color(img, 2.8)[2], tf_row2)


def test_randaugment_transform_is_seeded_and_handles_batches_and_floats():
    imgs = np.stack([photo(24, 24, s) for s in range(6)])
    t = ra.RandAugment(layers=4, magnitude=15)
    a = t.random_map({"image": imgs, "label": 1}, np.random.default_rng(4))
    b = t.random_map({"image": imgs, "label": 1}, np.random.default_rng(4))
    assert a["image"].shape == imgs.shape and a["image"].dtype == np.uint8 and a["label"] == 1
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], imgs)
    # float input (after MixUp) is clipped and truncated to uint8 first, as dataset.py does
    f = imgs[0].astype(np.float32) + 0.7
    f[0, 0] = [-30.0, 300.0, 12.9]
    one = ra.randaugment(f, np.random.default_rng(0), layers=0)
    assert one.dtype == np.uint8 and one[0, 0].tolist() == [0, 255, 12]
    np.testing.assert_array_equal(one[1:], imgs[0][1:])


def test_full_official_train_chain_in_grain():
    """crop -> batch 2B -> MixUp/CutMix -> RandAugment -> normalise, as augment_before_mix=False."""
    recs = [{"image": photo(30 + i, 41, i), "label": np.int32(i % 5)} for i in range(16)]
    ds = (grain.MapDataset.source(recs).seed(0).shuffle()
          .random_map(pp.DecodeInceptionCrop(20)).batch(8)
          .random_map(mix.MixBatch(num_classes=5)).random_map(ra.RandAugment(4, 5)).map(pp.Normalize()))
    batch = ds[1]
    assert batch["image"].shape == (4, 20, 20, 3) and batch["image"].dtype == np.float32
    assert batch["label_dist"].shape == (4, 5)
    np.testing.assert_allclose(batch["label_dist"].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(ds[1]["image"], batch["image"])
