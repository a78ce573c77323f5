"""AdaRound on the bundled fmnist-resnet (skipped until the zoo is built).

Shortened schedules keep these within a few minutes on 2 cores; the full-schedule figures
(10000 iterations per layer, 3 seeds) come from benchmarks/adaround_fmnist.py.
"""

import pytest

import lowbit

pytestmark = [pytest.mark.real, pytest.mark.slow]


def run(task, method, w_bits, a_bits=None, num_samples=512, config=None):
    return lowbit.quantize(task.model, task.calib_loader, method, w_bits=w_bits, a_bits=a_bits,
                           num_samples=num_samples, progress=False, config=config, **task.quantize_kwargs)


def test_fmnist_resnet_w2_layer_mode(load_task):
    task = load_task("fmnist-resnet")
    fp = task.evaluate(task.model)["metric"]
    near = task.evaluate(run(task, "nearest", 2))["metric"]
    q = run(task, "adaround", 2, config={"iters": 1000})
    ada = task.evaluate(q)["metric"]
    assert ada >= fp - 3.0 and ada >= near + 10.0, (fp, near, ada)
    for row in q.lowbit_report.layers:
        if row.extra:
            assert row.extra["recon_adaround"] < row.extra["recon_nearest"], (row.name, row.extra)


def test_fmnist_resnet_w2a4_block_qdrop(load_task):
    # W2A4, where nearest collapses; at W4A4 nearest is already within a point of FP and could not
    # tell a working block reconstruction from a broken one. How far nearest falls depends on the
    # trained weights, which differ by CPU (fmnist-resnet's training is not bit-identical across
    # them): about 25 % with one machine's, 59.1 % with another's (block reconstruction 85.3 %,
    # FP 91.3 %). So the floor is a share of the gap to FP: the reconstruction closes half of it.
    task = load_task("fmnist-resnet")
    fp = task.evaluate(task.model)["metric"]
    near = task.evaluate(run(task, "nearest", 2, 4, num_samples=256))["metric"]
    q = run(task, "adaround", 2, 4, num_samples=256, config={"mode": "block", "iters": 100})
    ada = task.evaluate(q)["metric"]
    assert ada >= near + 0.5 * (fp - near), (fp, near, ada)
    modes = {r.name: r.extra.get("adaround_mode") for r in q.lowbit_report.layers if r.extra}
    assert modes["layer1.0.conv1"] == "block" and modes["layer3.1.conv2"] == "block", modes
