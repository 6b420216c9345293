"""Dataset registry and the shared dataset options, on tiny files in the real formats and on digits."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_cifar_like, write_mnist_like
from shared.data import DataConfig, corrupt_labels, load_data, validation_split
from shared.datasets import sin_dataset
from shared.loaders import apply_pixel_permutations, gcn, pixel_permutations, random_crop_flip
from shared.errors import UsageError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_label_noise_fraction_always_differs_and_is_seeded():
    y = torch.arange(10).repeat(1000)
    noisy, mask = corrupt_labels(y, 10, 0.3, seed=1)
    assert abs(mask.float().mean().item() - 0.3) < 0.02
    assert torch.all(noisy[mask] != y[mask])  # a corrupted label always differs
    assert torch.equal(noisy[~mask], y[~mask])
    # uniform over the other classes
    counts = torch.bincount((noisy[mask] - y[mask]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.7 * counts[1:].max()
    again, _ = corrupt_labels(y, 10, 0.3, seed=1)
    other, _ = corrupt_labels(y, 10, 0.3, seed=2)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_noise_applies_to_training_split_only():
    clean = load_data(DataConfig(dataset="digits", split=0.2, split_seed=3))
    noisy = load_data(DataConfig(dataset="digits", split=0.2, split_seed=3, noise=0.5, noise_seed=1))
    assert torch.equal(clean.val.y, noisy.val.y)
    assert torch.equal(clean.test.y, noisy.test.y)
    frac = (clean.train.y != noisy.train.y).float().mean().item()
    assert 0.4 < frac < 0.6 and noisy.info["noisy_labels"] == int((clean.train.y != noisy.train.y).sum())


@pytest.mark.parametrize("hw", [(28, 28), (32, 32), (5, 7)])
def test_pixel_permutations_are_per_sample_and_fixed(hw):
    n, (h, w) = 6, hw
    perms = pixel_permutations(n, h * w, seed=0)
    assert all(torch.equal(perms[i].long().sort().values, torch.arange(h * w)) for i in range(n))
    assert not torch.equal(perms[0], perms[1])
    x = torch.arange(n * 3 * h * w, dtype=torch.float32).reshape(n, 3, h, w)
    out = apply_pixel_permutations(x, perms)
    for b in range(n):
        for c in range(3):  # the same permutation for every channel
            assert torch.equal(out[b, c].flatten(), x[b, c].flatten()[perms[b].long()])
    assert torch.equal(perms, pixel_permutations(n, h * w, seed=0))


def test_pixel_shuffle_through_the_loader_is_the_same_every_epoch():
    d = load_data(DataConfig(dataset="digits", pixel_shuffle=True, shuffle=True, batch_size=50))
    first = {int(i): x for x, _, idx in d.train.with_indices() for i, x in zip(idx, x)}
    second = {int(i): x for x, _, idx in d.train.with_indices() for i, x in zip(idx, x)}
    assert all(torch.equal(first[k], second[k]) for k in list(first)[:100])
    plain = load_data(DataConfig(dataset="digits", batch_size=50, shuffle=False))
    x0 = next(iter(plain.train))[0][0]
    assert torch.allclose(first[0].flatten().sort().values, x0.flatten().sort().values)  # same pixels, moved
    assert not torch.allclose(first[0], x0)


def test_class_subsampling_same_classes_every_split():
    d = load_data(DataConfig(dataset="digits", subsample_classes=4, class_sample_seed=7, split=0.25))
    kept = d.info["classes_kept"]
    assert len(kept) == 4 and d.num_classes == 4
    for loader in (d.train, d.val, d.test):
        assert set(loader.y.tolist()) == {0, 1, 2, 3}
    again = load_data(DataConfig(dataset="digits", subsample_classes=4, class_sample_seed=7))
    assert again.info["classes_kept"] == kept
    with pytest.raises(UsageError, match="more classes than the dataset has"):
        load_data(DataConfig(dataset="digits", subsample_classes=11))


def test_validation_split_plain_and_stratified():
    y = torch.tensor([0] * 80 + [1] * 20)
    tr, va = validation_split(y, 0.2, seed=0, stratified=False)
    assert len(va) == 20 and len(set(tr) | set(va)) == 100 and not set(tr) & set(va)
    tr2, va2 = validation_split(y, 0.2, seed=0, stratified=False)
    assert np.array_equal(va, va2)
    trs, vas = validation_split(y, 0.2, seed=0, stratified=True)
    assert (y[vas] == 1).sum() == 4 and (y[vas] == 0).sum() == 16
    with pytest.raises(UsageError, match="split"):
        load_data(DataConfig(dataset="digits", split=1.5))


def test_normalizations():
    d = load_data(DataConfig(dataset="digits", batch_size=2000, shuffle=False))
    x = next(iter(d.train))[0]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    g = gcn(torch.rand(4, 3, 8, 8) * 5 + 2)
    assert torch.allclose(g.flatten(1).mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(g.flatten(1).std(1, unbiased=False), torch.ones(4), atol=1e-4)
    raw = next(iter(load_data(DataConfig(dataset="digits", normalize="none", shuffle=False)).train))[0]
    assert raw.min() >= 0 and raw.max() <= 1


def test_random_crop_flip_matches_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert torch.equal(random_crop_flip(x, g, padding=0, flip=False), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = random_crop_flip(x, g1, padding=2, flip=False)
    oy = torch.randint(0, 5, (2,), generator=g2)
    ox = torch.randint(0, 5, (2,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        assert torch.equal(out[b], padded[b, :, oy[b]:oy[b] + 4, ox[b]:ox[b] + 4])


def test_mnist_idx_files_through_torchvision(tmp_path):
    write_mnist_like(tmp_path, "MNIST", n_train=120, n_test=30)
    d = load_data(DataConfig(dataset="mnist", data_path=str(tmp_path)))
    assert d.input_shape == (1, 28, 28) and d.info["train_size"] == 120 and d.info["test_size"] == 30
    d3 = load_data(DataConfig(dataset="mnist", data_path=str(tmp_path), resize=32, channels=3))
    assert d3.input_shape == (3, 32, 32)


def test_cifar_pickles_through_torchvision(tmp_path):
    write_cifar_like(tmp_path, n_per_batch=10, n_test=20)
    with pytest.raises(UsageError, match="md5"):
        load_data(DataConfig(dataset="cifar10", data_path=str(tmp_path)))
    d = load_data(DataConfig(dataset="cifar10", data_path=str(tmp_path), verify_checksums=False, augmentation=True))
    assert d.input_shape == (3, 32, 32) and d.info["train_size"] == 50 and d.num_classes == 10
    x, y = next(iter(d.train))
    assert x.shape[1:] == (3, 32, 32) and y.dtype == torch.long


def test_missing_dataset_says_how_to_provide_it(tmp_path):
    with pytest.raises(UsageError, match="MNIST/raw"):
        load_data(DataConfig(dataset="mnist", data_path=str(tmp_path)))
    with pytest.raises(UsageError, match="cifar-10-batches-py"):
        load_data(DataConfig(dataset="cifar10", data_path=str(tmp_path)))
    with pytest.raises(UsageError, match="unknown dataset 'cifar11'.*cifar10"):
        load_data(DataConfig(dataset="cifar11"))


def test_digits_is_fixed_and_upscaled():
    a, b = load_data(DataConfig(dataset="digits")), load_data(DataConfig(dataset="digits"))
    assert a.input_shape == (1, 28, 28) and a.info["train_size"] == 1437 and a.info["test_size"] == 360
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)


def test_digits_split_is_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from shared.datasets import _digits_split, digits_cache_file

    monkeypatch.setenv("GEOMLAB_CACHE", str(tmp_path / "empty"))
    tr, te = _digits_split()  # scikit-learn's split, computed
    assert not digits_cache_file().exists()
    a = load_data(DataConfig(dataset="digits"))
    f = digits_cache_file()
    assert f.is_file() and torch.equal(a.test.x, te.x) and torch.equal(a.test.y, te.y)
    assert torch.equal(load_data(DataConfig(dataset="digits")).train.y, tr.y)
    saved = torch.load(f)  # the second load reads the file: a changed file changes what it returns
    torch.save({**saved, "y_te": torch.zeros_like(saved["y_te"])}, f)
    assert load_data(DataConfig(dataset="digits")).test.y.sum() == 0
    f.write_bytes(b"damaged")  # a damaged cache is rebuilt
    assert torch.equal(load_data(DataConfig(dataset="digits")).test.y, te.y)
    assert torch.equal(torch.load(f)["y_te"], te.y)


def test_sin_dataset_follows_the_original_rules():
    x, y = sin_dataset(500, 0.01)
    k = math.exp(-0.04) / (8 * 500)
    assert len(x) <= 500 and len(x) > 400
    assert x.abs().max() <= math.sqrt(k) + 1e-9
    assert (x @ x.T).max() < k  # separability: no product reaches K
    assert torch.allclose(y, torch.sin(math.pi * x / math.sqrt(k)))
    d = load_data(DataConfig(dataset="constant", num_samples=100, synthetic_c=0.5))
    assert d.task == "regression" and torch.all(d.train.y == 0.5) and d.input_shape == (1,)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMLAB_CACHE", str(tmp_path))
    from shared.experiment import model_for
    from shared.train import TrainConfig, Trainer

    d = load_data(DataConfig(dataset="fashion_mnist", data_path=str(tmp_path / "none"), train_fraction=0.2,
                             batch_size=128))
    assert d.info["test_size"] == 10000 and d.info["train_size"] == 12000 and d.class_names[0] == "T-shirt/top"
    torch.manual_seed(0)
    res = Trainer(model_for("lenet_small", d, width=8), d, TrainConfig(epochs=1, lr=0.05), progress=False).fit()
    assert res.final["test_acc"] > 0.7


def test_imagenet_folder_is_streamed_with_the_shared_options(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    d = load_data(DataConfig(dataset="imagenet", data_path=str(tmp_path), resize=32, batch_size=4, split=0.25,
                             noise=0.5, subsample_classes=2, class_sample_seed=1))
    assert d.num_classes == 2 and d.input_shape == (3, 32, 32)
    assert d.info["train_size"] + d.info["val_size"] == 12 and d.info["test_size"] == 4
    xs, ys = zip(*d.train)
    assert all(x.shape[1:] == (3, 32, 32) for x in xs) and set(torch.cat(ys).tolist()) <= {0, 1}
    assert sum(len(y) for y in ys) == d.info["train_size"]
    assert sum(len(y) for _, y in d.val) == d.info["val_size"]
    with pytest.raises(UsageError, match="ImageFolder"):
        load_data(DataConfig(dataset="imagenet", data_path=str(tmp_path / "missing")))


def test_random_labels_are_uniform_independent_of_the_image_and_seeded():
    clean = load_data(DataConfig(dataset="digits"))
    rnd = load_data(DataConfig(dataset="digits", random_labels=True, noise_seed=3))
    y0, y = clean.train.y, rnd.train.y
    assert torch.equal(rnd.train.x, clean.train.x)  # the images are untouched
    agree = float((y == y0).float().mean())
    assert abs(agree - 0.1) < 0.04  # the true class keeps only its chance share (label noise keeps 1 - noise)
    counts = torch.bincount(y, minlength=10).float() / len(y)
    assert float(counts.min()) > 0.06 and float(counts.max()) < 0.14
    assert torch.equal(load_data(DataConfig(dataset="digits", random_labels=True, noise_seed=3)).train.y, y)
    assert not torch.equal(load_data(DataConfig(dataset="digits", random_labels=True, noise_seed=4)).train.y, y)
    assert torch.equal(rnd.test.y, clean.test.y)  # only the training split
