"""The fmnist-resnet weights are trained once per cache and every later load returns them."""

import torch

from lowbit.zoo import _fmnist_resnet as fr


def test_trains_once_and_loads_the_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    calls = []

    def fake_train(progress=True):
        calls.append(1)
        torch.manual_seed(len(calls))  # a second training would give other weights
        return fr.FmnistResNet(), {"test_accuracy": 1.0}

    monkeypatch.setattr(fr, "train", fake_train)
    a = fr.fmnist_resnet(progress=False)
    b = fr.fmnist_resnet(progress=False)
    assert len(calls) == 1 and fr.weights_file().exists()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not a.training
