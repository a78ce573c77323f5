"""Multipoint on fmnist-resnet (quick task, seed 0), W2A32 per channel, 5 % extra rows.

Measured (benchmarks/multipoint_accuracy.py --quick, seed 0): nearest 27.9 %, random placement
36.2 %, +1 bit on the chosen channels 67.4 %, multipoint 72.7 % (FP 91.3 %). fmnist-resnet's
training is not bit-identical across CPUs, and with another machine's weights (sha256
aa68f1f8b7ed) nearest is 59.45 %, random 66.95 %, multipoint 72.45 % (FP 91.6 %). The floors are
shares of the gap from nearest to FP, which hold for both: the claims are the ordering of issue 8,
not the exact figures.
"""

import pytest
import torch

import lowbit

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture
def one_thread():
    """Results do not depend on threads; on a busy 2-core machine one thread is ~8x faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    lowbit.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    lowbit.set_num_threads(0)  # back to the default


def test_fmnist_resnet_multipoint_w2(one_thread, load_task):
    task = load_task("fmnist-resnet", seed=0, quick=True)
    kw = dict(w_bits=2, a_bits=None, granularity="channel", seed=0, progress=False, **task.quantize_kwargs)

    def acc(method, **cfg):
        q = lowbit.quantize(task.model, task.calib_loader, method, config=cfg or None, **kw)
        return task.evaluate(q)["metric"], q

    fp = task.evaluate(task.model)["metric"]
    near, _ = acc("nearest")
    mp, q = acc("multipoint", overhead=0.05)
    rnd, _ = acc("multipoint", overhead=0.05, placement="random")
    meta = lowbit.report(q).meta["multipoint"]
    assert meta["summary"] == "W2 + 5.0 % points = 2.09 effective bits", meta
    gap = fp - near  # measured: 63.4 and 32.2 points; multipoint closes 71 % and 40 % of it
    assert mp >= near + 0.3 * gap and mp >= rnd + 0.1 * gap, (fp, near, rnd, mp)
