"""The scikit-learn digits set and the two small models the learned-method tests train on it
(AdaRound, AQuant and N2UQ share them so their figures are comparable)."""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def digits():
    """(train x, train y, test x, test y): 1200 / 597 images (N, 1, 8, 8) in [0, 1], seeded split."""
    from lowbit.data import digits as load

    x, y = load()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1200]], y[perm[:1200]], x[perm[1200:]], y[perm[1200:]]


DATA = digits()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 96), nn.Linear(96, 64), nn.Linear(64, 10)
        self.act = nn.ReLU()  # a module ReLU and a functional one: relu detection sees both

    def forward(self, x):
        x = self.act(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return (self.bn2(self.conv2(out)) + x).relu()


class ResNetLet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b1 = Block(c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.b2 = Block(2 * c)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.b1(torch.relu(self.bn(self.stem(x))))
        x = self.b2(F.relu(self.down(x)))
        return self.fc(x.mean((2, 3)))


def train(model, epochs, seed=0):
    torch.manual_seed(seed)
    Xtr, ytr, _, _ = DATA
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def loader(n=512, bs=64, start=0):
    Xtr, ytr = DATA[0], DATA[1]
    return [(Xtr[i : i + bs], ytr[i : i + bs]) for i in range(start, start + n, bs)]


def accuracy(model):
    _, _, Xte, yte = DATA
    with torch.no_grad():
        return float((model(Xte).argmax(1) == yte).float().mean()) * 100


@functools.cache
def trained_mlp() -> MLP:
    """The MLP trained once per session (15 epochs, seed 0). Shared, not copied: quantize and
    finetune leave their input model untouched."""
    torch.manual_seed(0)
    return train(MLP(), 15)


@functools.cache
def trained_cnn() -> ResNetLet:
    """The ResNetLet trained once per session (14 epochs, seed 0)."""
    torch.manual_seed(0)
    return train(ResNetLet(), 14)
