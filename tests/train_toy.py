"""A toy training stage for the engine's tests: regress y = tanh(x A) B + noise with a small MLP.

It exercises what real stages use: dropout (a random stream that must resume exactly), a frozen sub-module and a
buffer (which the export must carry), two parameter groups with their own lr, an eval hook that draws from the
global RNG on purpose (the engine must isolate it), and test switches that crash a run or make its loss NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from vqrae.train import Stage, TrainConfig, param_groups


@dataclass
class ToyConfig(TrainConfig):
    in_dim: int = 8
    hidden: int = 32
    out_dim: int = 4
    dropout: float = 0.1
    samples: int = 64
    head_lr_scale: float = 0.5  # the output layer's lr relative to lr (a second parameter group)
    crash_at: int = 0  # raise while computing this (1-based) step: a run killed mid-way
    nan_at: int = 0  # return a NaN loss at this (1-based) step


class SimulatedCrash(Exception):
    pass


class ToyData(Dataset):
    def __init__(self, n: int, in_dim: int, out_dim: int, seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, in_dim, generator=g)
        a, b = torch.randn(in_dim, 16, generator=g), torch.randn(16, out_dim, generator=g) / 4
        self.y = torch.tanh(self.x @ a) @ b + 0.01 * torch.randn(n, out_dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.frozen = nn.Linear(cfg.in_dim, cfg.in_dim)  # stands in for a frozen encoder
        self.frozen.requires_grad_(False)
        self.body = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, cfg.out_dim)
        self.register_buffer("scale", torch.full((cfg.out_dim,), 1.5))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.head(self.body(self.frozen(x) + x)) * self.scale
        return nn.functional.mse_loss(pred, y), (pred - y).abs().mean()


class ToyStage(Stage):
    name = "toy"
    config_class = ToyConfig

    def build_model(self) -> nn.Module:
        return ToyModel(self.config)

    def param_groups(self, module: ToyModel):
        cfg = self.config
        return (param_groups(module.body, cfg.lr, cfg.weight_decay, name="body")
                + param_groups(module.head, cfg.lr * cfg.head_lr_scale, cfg.weight_decay, name="head"))

    def train_dataset(self) -> Dataset:
        return ToyData(self.config.samples, self.config.in_dim, self.config.out_dim)

    def loss(self, model, batch, step):
        if step + 1 == self.config.crash_at:
            raise SimulatedCrash(f"simulated crash at step {step + 1}")
        loss, mae = model(batch["x"], batch["y"])
        if step + 1 == self.config.nan_at:
            loss = loss * float("nan")
        return loss, {"mae": mae}

    def evaluate(self, model, step):
        torch.rand(3)  # draws from the global RNG on purpose
        data = ToyData(32, self.config.in_dim, self.config.out_dim, seed=99)
        batch = self.to_device({"x": data.x, "y": data.y})
        loss, _ = model(batch["x"], batch["y"])
        return {"mse": float(loss)}
