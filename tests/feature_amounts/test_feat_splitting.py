"""Micro-batch splitting: exact gradient accumulation, OOM handling, memory limit, cache, probing without trace."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from projects.feature_amounts import splitting as S
from projects.feature_amounts.models import feature_vgg
from shared.errors import UsageError

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


def test_real_cpu_oom_is_caught_and_halved():
    x, y = batch(32)
    m = Hog(limit=6)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sp = S.AutoSplitter(batch_size=32)
    before = [p.detach().clone() for p in m.parameters()]
    r = sp.step(m, opt, F.cross_entropy, x, y)
    d = sp.decision
    assert d.source == "probe" and d.micro_batch == 4 and d.chunks == 8
    assert [p.micro_batch for p in d.probes] == [32, 16, 8, 4]
    assert [p.ok for p in d.probes] == [False, False, False, True]
    assert "DefaultCPUAllocator" in d.probes[0].error
    assert r.n == 32 and r.chunks == 8
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))  # training proceeded


def test_oom_in_training_step_halves_and_redoes_batch():
    x, y = batch(32)
    m = Hog(limit=10)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sp = S.AutoSplitter(batch_size=32, chunks=1)  # forced: no probe, the real step runs out of memory
    ref = Hog(limit=100)
    ref.load_state_dict(m.state_dict())
    S.accumulate_step(ref, torch.optim.SGD(ref.parameters(), lr=0.1), F.cross_entropy, x, y, 8)
    sp.step(m, opt, F.cross_entropy, x, y)
    assert [d.source for d in sp.history] == ["forced", "retry", "retry"] and sp.decision.micro_batch == 8
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-14)


def test_non_oom_errors_propagate_and_micro_one_failure_is_usage_error():
    x, y = batch(8)
    m = Hog(limit=0)
    with pytest.raises(UsageError, match="micro-batch of 1"):
        S.AutoSplitter(batch_size=8).step(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy, x, y)

    class Broken(Hog):
        def forward(self, x):
            raise RuntimeError("shape mismatch, nothing to do with memory")

    b = Broken(0)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        S.AutoSplitter(batch_size=8).step(b, torch.optim.SGD(b.parameters(), lr=0.1), F.cross_entropy, x, y)


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
    losses = [sp.step(m, opt, F.cross_entropy, x, y).loss_sum / 64 for _ in range(4)]
    d = sp.history[0]
    assert d.source == "probe" and d.chunks >= 2 and d.probes[0].ok is False
    assert all(p.peak_bytes > limit for p in d.probes if not p.ok)
    assert d.probes[-1].ok and d.probes[-1].peak_bytes <= limit
    assert losses[-1] < losses[0]  # it trains
    # the probe left no trace: the same steps with the chosen split and the same seed give the same weights
    torch.manual_seed(5)
    m2 = small_model(bn_eps=1e-4, dropout=0.5, dtype=torch.float32, size=32)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        S.accumulate_step(m2, opt2, F.cross_entropy, x, y, d.micro_batch)
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(m.buffers(), m2.buffers()):
        assert torch.equal(a, b)
    # the cache file remembers it; a new splitter (new process) reuses it without probing
    data = json.loads((tmp_path / "splits.json").read_text())
    assert [v["micro_batch"] for v in data.values()] == [d.micro_batch]
    assert list(tmp_path.iterdir()) == [tmp_path / "splits.json"]  # no temp files left behind
    sp2 = S.AutoSplitter(batch_size=64, memory_limit=limit, cache=S.SplitCache(tmp_path / "splits.json"))
    sp2.step(m, opt, F.cross_entropy, x, y)
    assert sp2.decision.source == "cache" and sp2.decision.micro_batch == d.micro_batch
    # a different limit is a different key
    sp3 = S.AutoSplitter(batch_size=64, memory_limit=2**40, cache=S.SplitCache(tmp_path / "splits.json"))
    sp3.step(m, opt, F.cross_entropy, x, y)
    assert sp3.decision.source == "probe" and sp3.decision.micro_batch == 64


def test_damaged_cache_file_is_ignored(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    c = S.SplitCache(p)
    assert c.get("k") is None
    c.put("k", {"micro_batch": 8})
    assert json.loads(p.read_text()) == {"k": {"micro_batch": 8}}
    assert S.SplitCache(p).get("k") == {"micro_batch": 8}


def test_last_partial_batch_uses_same_micro_and_own_scale():
    x, y = batch(20)
    m = small_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    sp = S.AutoSplitter(batch_size=16, chunks=4)
    sp.step(m, opt, F.cross_entropy, x[:16], y[:16])
    r = sp.step(m, opt, F.cross_entropy, x[16:], y[16:])
    assert r.chunks == 1 and r.n == 4
    ref = small_model()
    F.cross_entropy(ref(x[16:]), y[16:]).backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max().item() < 1e-12
