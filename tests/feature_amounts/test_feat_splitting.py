"""Micro-batch splitting: probing with exact gradient accumulation, OOM handling, memory limit, cache, probing
without trace; and the training path that applies the split (the shared Trainer's ``_train_step``)."""
import copy
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from projects.feature_amounts import splitting as S
from projects.feature_amounts.models import feature_vgg
from shared.data import DataConfig, load_data
from shared.errors import UsageError
from shared.train import TrainConfig, Trainer

W = [4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8, 10, 10]


def small_model(bn_eps=0.0, dropout=0.0, dtype=torch.float64, seed=0, size=8):
    torch.manual_seed(seed)
    return feature_vgg(5, 3, size, W, bn_eps=bn_eps, dropout=dropout).to(dtype)


def batch(n=24, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("micro", [1, 5, 7, 12, 24])
def test_accumulated_gradients_equal_full_batch(micro):
    x, y = batch()
    ref = small_model()
    loss = F.cross_entropy(ref(x), y)  # the literal definition: gradient of the batch-mean loss
    loss.backward()
    m = small_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    r = S.accumulate_step(m, opt, F.cross_entropy, x, y, micro)
    assert r.chunks == len(S.chunk_sizes(24, micro)) and r.n == 24
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-6), name
        assert (p.grad - q.grad).abs().max().item() < 1e-12
    assert r.loss_sum / 24 == pytest.approx(loss.item(), rel=1e-12)
    assert r.correct == int((ref(x).argmax(1) == y).sum())


def test_accumulated_gradients_float32_to_1e6():
    x, y = batch(dtype=torch.float32)
    ref = small_model(dtype=torch.float32)
    F.cross_entropy(ref(x), y).backward()
    m = small_model(dtype=torch.float32)
    S.accumulate_step(m, torch.optim.SGD(m.parameters(), lr=0.0), F.cross_entropy, x, y, 6)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max().item() < 1e-6


def test_chunk_helpers_and_parse_memory():
    assert S.chunk_sizes(128, 32) == [32] * 4 and S.chunk_sizes(10, 4) == [4, 4, 2]
    assert S.micro_for_chunks(128, 2) == 64 and S.micro_for_chunks(100, 8) == 13
    with pytest.raises(UsageError):
        S.micro_for_chunks(128, 0)
    assert S.parse_memory("512MB") == 512 * 2**20 and S.parse_memory("1.5g") == int(1.5 * 2**30)
    assert S.parse_memory("0") is None and S.parse_memory(None) is None and S.parse_memory("2048") == 2048
    with pytest.raises(UsageError, match="memory"):
        S.parse_memory("lots")


class Hog(nn.Module):
    """Asks the CPU allocator for a petabyte when a chunk has more than ``limit`` samples (a real allocator OOM)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.lin = nn.Linear(3 * 8 * 8, 5).double()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            torch.empty(2**50, dtype=torch.uint8)
        return self.lin(x.flatten(1))


@functools.lru_cache(maxsize=1)
def _digits():
    return load_data(DataConfig(dataset="digits", batch_size=32, shuffle=False))


def trainer(model, micro_batches, lr=0.1, momentum=0.0):
    """The shared Trainer, whose ``_train_step`` is what training runs with the chosen split (feature_amounts sets
    ``Trainer.micro_batches`` to the decision's number of chunks)."""
    t = Trainer(model, _digits(), TrainConfig(epochs=1, lr=lr, momentum=momentum, weight_decay=0.0,
                                              snapshot_init=False, device="cpu"), progress=False)
    t.micro_batches = micro_batches
    return t


@pytest.mark.parametrize("n", [32, 100])
def test_real_cpu_oom_is_caught_and_halved_and_training_fits(n):
    x, y = batch(n)
    m = Hog(limit=13)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in m.parameters()]
    d = S.AutoSplitter(batch_size=n).choose(m, opt, F.cross_entropy, x, y)
    expected = {32: [32, 16, 8], 100: [100, 50, 25, 13]}[n]
    assert d.source == "probe" and [p.micro_batch for p in d.probes] == expected
    assert [p.ok for p in d.probes] == [False] * (len(expected) - 1) + [True]
    assert "DefaultCPUAllocator" in d.probes[0].error
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # the probe left no trace
    # the training step with the decided number of chunks never hands the model more than the probed micro-batch
    t = trainer(m, d.chunks)
    m.seen.clear()
    loss, out = t._train_step(x, y)
    assert len(m.seen) == d.chunks and max(m.seen) <= d.micro_batch and sum(m.seen) == n
    assert out.shape == (n, 5) and math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))  # training proceeded
    # the same step without the split runs out of memory for real
    with pytest.raises(RuntimeError) as e:
        trainer(m, 1)._train_step(x, y)
    assert S.is_oom(e.value)


@pytest.mark.parametrize("chunks", [5, 12])
def test_trainer_step_with_chunks_is_the_full_batch_step(chunks):
    x, y = batch(24)
    ref = small_model()
    loss = F.cross_entropy(ref(x), y)
    loss.backward()
    m = small_model()
    t = trainer(m, chunks, lr=0.5)
    total, out = t._train_step(x, y)
    assert total == pytest.approx(loss.item(), rel=1e-12)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max().item() < 1e-12, name
        assert torch.allclose(p.detach(), q.detach() - 0.5 * q.grad, rtol=0, atol=1e-12), name


def test_non_oom_errors_propagate_and_micro_one_failure_is_a_memory_failure():
    x, y = batch(8)
    m = Hog(limit=0)
    with pytest.raises(S.MemoryFailure, match="micro-batch of 1"):
        S.AutoSplitter(batch_size=8).choose(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy, x, y)
    assert issubclass(S.MemoryFailure, UsageError)

    class Broken(Hog):
        def forward(self, x):
            raise RuntimeError("shape mismatch, nothing to do with memory")

    b = Broken(0)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        S.AutoSplitter(batch_size=8).choose(b, torch.optim.SGD(b.parameters(), lr=0.1), F.cross_entropy, x, y)


def footprint(micro, x, y):
    m = small_model(bn_eps=1e-4, dtype=torch.float32, size=32)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    sp = S.AutoSplitter(batch_size=x.shape[0], memory_limit=2**40)
    p = sp._try(m, opt, F.cross_entropy, x, y, micro, x.device)
    return p.peak_bytes


def wide_setup():
    x, y = batch(64, dtype=torch.float32)
    x = torch.nn.functional.interpolate(x, size=32)
    return x, y


def test_measured_peak_grows_with_micro_batch():
    x, y = wide_setup()
    f = {mb: footprint(mb, x, y) for mb in (64, 32, 8)}
    assert f[64] > f[32] > f[8] > 0
    # activations dominate this model: halving the micro-batch saves a large part of the footprint
    assert f[64] - f[32] > 0.25 * f[64]


def test_memory_limit_forces_split_and_training_proceeds(tmp_path):
    x, y = wide_setup()
    f64, f16 = footprint(64, x, y), footprint(16, x, y)
    limit = (f64 + 2 * f16) // 3  # between the 16-sample and the 32-sample footprints' lower range
    torch.manual_seed(5)
    m = small_model(bn_eps=1e-4, dropout=0.5, dtype=torch.float32, size=32)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    cache = S.SplitCache(tmp_path / "splits.json")
    sp = S.AutoSplitter(batch_size=64, memory_limit=limit, cache=cache)
    t = trainer(m, 1, lr=0.05, momentum=0.9)
    d = sp.choose(t.model, t.optimizer, F.cross_entropy, x, y)
    t.micro_batches = d.chunks
    losses = [t._train_step(x, y)[0] for _ in range(4)]
    assert d.source == "probe" and d.chunks >= 2 and d.probes[0].ok is False
    assert all(p.peak_bytes > limit for p in d.probes if not p.ok)
    assert d.probes[-1].ok and d.probes[-1].peak_bytes <= limit
    assert losses[-1] < losses[0]  # it trains
    # the probe left no trace: the same training steps with the chosen split and the same seed give the same weights
    torch.manual_seed(5)
    m2 = small_model(bn_eps=1e-4, dropout=0.5, dtype=torch.float32, size=32)
    t2 = trainer(m2, d.chunks, lr=0.05, momentum=0.9)
    for _ in range(4):
        t2._train_step(x, y)
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(m.buffers(), m2.buffers()):
        assert torch.equal(a, b)
    # the cache file remembers it; a new splitter (new process) reuses it without probing
    data = json.loads((tmp_path / "splits.json").read_text())
    assert [v["micro_batch"] for v in data.values()] == [d.micro_batch]
    assert list(tmp_path.iterdir()) == [tmp_path / "splits.json"]  # no temp files left behind
    sp2 = S.AutoSplitter(batch_size=64, memory_limit=limit, cache=S.SplitCache(tmp_path / "splits.json"))
    d2 = sp2.choose(t.model, t.optimizer, F.cross_entropy, x, y)
    assert d2.source == "cache" and d2.micro_batch == d.micro_batch
    # a different limit is a different key
    sp3 = S.AutoSplitter(batch_size=64, memory_limit=2**40, cache=S.SplitCache(tmp_path / "splits.json"))
    d3 = sp3.choose(t.model, t.optimizer, F.cross_entropy, x, y)
    assert d3.source == "probe" and d3.micro_batch == 64


def test_damaged_cache_file_is_ignored(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    c = S.SplitCache(p)
    assert c.get("k") is None
    c.put("k", {"micro_batch": 8})
    assert json.loads(p.read_text()) == {"k": {"micro_batch": 8}}
    assert S.SplitCache(p).get("k") == {"micro_batch": 8}


def test_last_partial_batch_is_split_and_scaled_by_its_own_size():
    x, y = batch(20)
    m = small_model()
    t = trainer(m, 4)  # the split of a logical batch of 16 ...
    t._train_step(x[:16], y[:16])
    m.zero_grad()
    ref = copy.deepcopy(m)
    total, _ = t._train_step(x[16:], y[16:])  # ... applied to the last 4 samples of the epoch (2 chunks of 2)
    loss = F.cross_entropy(ref(x[16:]), y[16:])
    loss.backward()
    assert total == pytest.approx(loss.item(), rel=1e-12)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max().item() < 1e-12
