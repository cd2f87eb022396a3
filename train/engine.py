"""The training engine: one loop for every stage, plain PyTorch in one process or DeepSpeed in one or many.

    from vqrae.train import train
    from vqrae.train.stages import get_stage
    result = train(get_stage("tokenizer-stage1")(config))   # -> TrainResult(output_dir, final_dir, step, ...)

Per optimizer step: `grad_accum` micro-batches (forward via `Stage.loss`, backward), the loss and metrics averaged
over micro-batches and processes (weighted by their targets when the stage counts them: `Stage.target_count`), a non-finite loss or gradient norm stops the run (before the update and before
any save), the update, then logging, evaluation and checkpointing in that order. Output folder:

    config.yaml  metrics.jsonl  loss.png  checkpoints/step-XXXXXXXX/  checkpoints/latest  final/
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .backends import DeepSpeedBackend, PlainBackend, fill_ds_config, load_ds_config
from .checkpoint import CheckpointManager, load_rng, read_json, rng_state, save_rng, set_rng_state, write_json
from .config import TrainConfig, config_to_dict, save_config
from .data import check_dataset, micro_batches
from .metrics import MetricsLog, plot_loss_curve
from .stage import Stage, check_param_groups
from .zero3 import partitioned_init

logger = logging.getLogger(__name__)

# Keys that may differ between a run and its resume without changing what is computed.
_RESUME_SAFE_KEYS = {"max_steps", "resume", "output_dir", "log_every", "eval_every", "save_every", "keep_last",
                     "num_workers"}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was saved for that step."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    final_dir: Path | None = None
    checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged training record


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def cudnn_attention(enabled: bool):
    """torch's cuDNN attention switch (a process-wide flag) set to `enabled` inside the block and put back as it was
    when the block ends, normally or by an exception."""
    previous = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(previous)


def train(stage: Stage) -> TrainResult:
    """Train `stage` to `config.max_steps`, resuming per `config.resume`; export the final weights to final/."""
    return Engine(stage).run()


class Engine:
    def __init__(self, stage: Stage):
        self.stage = stage
        self.cfg: TrainConfig = stage.config
        self.out = Path(self.cfg.output_dir)

    # ------------------------------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        cfg = self.cfg
        world_env = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if cfg.deepspeed is None and world_env > 1:
            raise ValueError(f"{world_env} processes were launched but deepspeed is null: set deepspeed=zero1 "
                             "(or zero2, zero3, ...) to train on several processes")
        self.dist = distributed.init_deepspeed_distributed() if cfg.deepspeed else distributed.DistInfo()
        self.device = self._device()
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if not cfg.cudnn_attention:  # see TrainConfig.cudnn_attention; only CUDA kernels read the flag
            self._scope.enter_context(cudnn_attention(False))  # restored when run() ends
        if self.bf16 and self.device.type == "cpu":
            logger.warning("bf16 on the CPU is many times slower than fp32 here; precision=auto picks fp32")
        stage = self.stage
        stage.device, stage.float_dtype = self.device, torch.bfloat16 if self.bf16 and cfg.deepspeed else None
        self.ckpts = CheckpointManager(self.out / "checkpoints", cfg.keep_last, self.dist.is_main, distributed.barrier)
        self.resume_from = self._resume_checkpoint()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.ckpts.remove_partial()
            save_config(cfg, self.out / "config.yaml")
        distributed.barrier()

    def _ds_config(self) -> dict | None:
        """The filled DeepSpeed config the backend will run with (None without DeepSpeed)."""
        if not self.cfg.deepspeed:
            return None
        return fill_ds_config(*load_ds_config(self.cfg.deepspeed), self.cfg, self.bf16)

    def _device(self) -> torch.device:
        if self.cfg.deepspeed:
            from deepspeed.accelerator import get_accelerator

            name = get_accelerator().device_name()
            if self.cfg.device not in ("auto", name):
                raise ValueError(f"config key 'device' is {self.cfg.device} but DeepSpeed runs on {name} "
                                 "(its accelerator follows DS_ACCELERATOR / the visible GPUs)")
            return torch.device(name, self.dist.local_rank) if name != "cpu" else torch.device("cpu")
        if self.cfg.device == "cuda" or (self.cfg.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ValueError("config key 'device' is cuda but no CUDA device is available")
            return torch.device("cuda", self.dist.local_rank)
        return torch.device("cpu")

    def _resume_checkpoint(self) -> Path | None:
        resume, latest = self.cfg.resume, self.ckpts.latest()
        if resume == "auto":
            return latest
        if resume == "never":
            if latest is not None:
                raise ValueError(f"resume=never but {self.out} already holds checkpoints (latest: {latest.name}); "
                                 "resume=auto continues that run, or choose another output_dir")
            return None
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"resume={resume} is not a checkpoint folder (no trainer_state.json in it)")
        return path

    # ------------------------------------------------------------------------------------------- the run

    def run(self) -> TrainResult:
        # Process-wide switches the run needs (cuDNN attention) are set inside this scope and restored when the run
        # ends, normally or not: a library call leaves the process as it found it.
        with contextlib.ExitStack() as self._scope:
            return self._run()

    def _run(self) -> TrainResult:
        self._setup()
        cfg, stage, dist = self.cfg, self.stage, self.dist
        # The model is built only now, after seeding: `seed` fixes the initial weights, and every process draws the
        # same ones (torch's initial seed differs per process). Stages build nothing random in __init__.
        seed_everything(cfg.seed)
        # A stage that loads a large pretrained model asks for it to be built partitioned under ZeRO-3 (transformers
        # inside deepspeed.zero.Init), instead of whole on every process before DeepSpeed splits it.
        with partitioned_init(self._ds_config() if stage.partitioned_init else None):
            module = stage.build_model()
        groups = stage.param_groups(module)
        check_param_groups(module, groups)
        self.group_names = [str(g.get("name", f"group{i}")) for i, g in enumerate(groups)]
        backend_cls = DeepSpeedBackend if cfg.deepspeed else PlainBackend
        self.backend = backend = backend_cls(module, groups, cfg, self.device, self.bf16)
        dataset = stage.train_dataset()
        per_epoch = check_dataset(dataset, cfg.batch_size, dist.world_size)
        seed_everything(cfg.seed + 7919 * dist.rank)  # dropout & co. differ between processes

        step, last_ckpt = 0, None
        if self.resume_from is not None:
            step = self._load(self.resume_from)
            last_ckpt = self.resume_from
        n_params = sum(p.numel() for p in module.parameters())
        n_train = sum(p.numel() for g in groups for p in g["params"])
        logger.info("stage %s: %s, %.2fM parameters (%.2fM trainable), %d processes, %d samples (%d micro-batches "
                    "per epoch and process), steps %d -> %d", stage.name, type(backend).__name__, n_params / 1e6,
                    n_train / 1e6, dist.world_size, len(dataset), per_epoch, step, cfg.max_steps)

        log = MetricsLog(self.out / "metrics.jsonl", resume_step=step) if dist.is_main else None
        batches = micro_batches(dataset, cfg.batch_size, stage.collate, start=step * cfg.grad_accum,
                                rank=dist.rank, world_size=dist.world_size, seed=cfg.seed, num_workers=cfg.num_workers,
                                shuffle=stage.shuffle_data)
        global_batch = cfg.batch_size * cfg.grad_accum * dist.world_size
        bar = tqdm(total=cfg.max_steps, initial=step, desc=stage.name or "train", disable=not dist.is_main,
                   dynamic_ncols=True)
        window: dict[str, float] = defaultdict(float)
        window_steps, window_start, last_record = 0, time.perf_counter(), {}
        run_start, run_first_step = window_start, step
        try:
            while step < cfg.max_steps:
                lrs = backend.lrs()  # the lrs this update uses
                values = self._train_step(batches, step)
                step += 1
                for k, v in values.items():
                    window[k] += v
                window_steps += 1
                rate = global_batch * (step - run_first_step) / (time.perf_counter() - run_start)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{lrs[0]:.3g}", samples_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    last_record = {"step": step, **{k: v / window_steps for k, v in window.items()},
                                   **self._lr_record(lrs), "samples_per_s": global_batch * window_steps / elapsed}
                    if log:
                        log.write(last_record)
                    window.clear()
                    window_steps, window_start = 0, time.perf_counter()
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                    self._evaluate(step, log)
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                    last_ckpt = self._save(step)
        finally:
            bar.close()

        final = self._export(last_ckpt)
        if dist.is_main and log is not None:
            plot_loss_curve(log.path, self.out / "loss.png", title=stage.name)
            logger.info("done: step %d, final weights in %s, metrics in %s", step, final, log.path)
        return TrainResult(self.out, step, final if dist.is_main else None, last_ckpt, last_record)

    def _train_step(self, batches, step: int) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches. Returns the loss and metrics averaged over
        micro-batches and processes, and the gradient norm."""
        cfg, backend = self.cfg, self.backend
        backend.model.train()
        sums: dict[str, torch.Tensor] = {}
        micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
        scales = self._micro_batch_scales(micro_batches)
        for micro, batch in enumerate(micro_batches):
            batch = self.stage.to_device(batch)
            with backend.autocast():
                loss, metrics = self.stage.loss(backend.model, batch, step)
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
                raise ValueError(f"stage {self.stage.name}: loss() must return a scalar tensor, got {loss!r:.80}")
            if scales is not None:
                loss = loss * scales[micro]
            backend.backward(loss)
            for k, v in {"loss": loss, **metrics}.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                sums[k] = sums.get(k, 0.0) + v.to(self.device)
            if micro < cfg.grad_accum - 1:
                backend.step(boundary=False)
        keys = sorted(sums)  # the same order in every process
        totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]))
        values = dict(zip(keys, (totals / (cfg.grad_accum * self.dist.world_size)).tolist()))
        if not math.isfinite(values["loss"]):
            self._diverged(step + 1, f"loss is {values['loss']}", values)
        grad_norm = backend.step(boundary=True)
        if grad_norm is not None:
            if not math.isfinite(grad_norm):
                self._diverged(step + 1, f"gradient norm is {grad_norm}", values)
            values["grad_norm"] = grad_norm
        return values

    def _micro_batch_scales(self, micro_batches: list) -> list[float] | None:
        """Per-micro-batch loss factors that make the step's loss the mean over all its targets (every micro-batch
        of every process), not the mean of per-micro-batch means: a micro-batch of 3 answer tokens must not weigh
        as much as one of 500 image codes. Backends average over micro-batches and processes, so micro-batch i's
        mean loss is scaled by n_i * grad_accum * world_size / N. None when the stage does not count targets."""
        counts = [self.stage.target_count(b) for b in micro_batches]
        if any(c is None for c in counts):
            return None
        total = float(sum(counts))
        if self.dist.world_size > 1:  # one device sync per step, only where there is something to add up
            total = float(distributed.all_reduce_sum(torch.tensor(total, dtype=torch.float64, device=self.device)))
        if total <= 0:
            return None
        k = self.cfg.grad_accum * self.dist.world_size
        return [c * k / total for c in counts]

    def _diverged(self, step: int, what: str, values: dict[str, float]) -> None:
        latest = self.ckpts.latest()
        if self.dist.is_main:
            MetricsLog.append(self.out / "metrics.jsonl", {"step": step, **values, "diverged": True})
        raise TrainingDiverged(
            f"{what} at step {step}; stopped without updating or saving anything. Last good checkpoint: "
            f"{latest if latest else 'none'} (lower the lr, raise warmup_steps, or check the data)"
        )

    def _lr_record(self, lrs: list[float]) -> dict[str, float]:
        """`lr` (the first group's) and, when groups differ, `lr/NAME` per group name (`param_groups`'
        `/decay` and `/no_decay` halves share one entry)."""
        record = {"lr": lrs[0]}
        if len({*lrs}) > 1:
            for name, lr in zip(self.group_names, lrs):
                record.setdefault(f"lr/{name.removesuffix('/decay').removesuffix('/no_decay')}", lr)
        return record

    def _evaluate(self, step: int, log: MetricsLog | None) -> None:
        model = self.backend.model
        saved = rng_state()  # evaluation must not shift the training's random streams (exact resume)
        model.eval()
        try:
            with torch.no_grad():
                results = self.stage.evaluate(model, step)
        finally:
            model.train()
            set_rng_state(saved)
        if results and self.dist.is_main:
            logger.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
            if log:
                log.write({"step": step, **{f"eval/{k}": v for k, v in results.items()}})

    # ---------------------------------------------------------------------------------- checkpoints, export

    def _save(self, step: int) -> Path:
        dist = self.dist

        def write(folder: Path) -> None:
            self.backend.save(folder)
            save_rng(folder, dist.rank)
            if dist.is_main:
                write_json(folder / "trainer_state.json", {
                    "step": step, "samples_seen": step * self.cfg.batch_size * self.cfg.grad_accum * dist.world_size,
                    "world_size": dist.world_size, "stage": self.stage.name, "config": config_to_dict(self.cfg),
                    "time": time.time(),
                })

        path = self.ckpts.save(step, write)
        logger.info("saved checkpoint %s", path)
        return path

    def _load(self, folder: Path) -> int:
        state = read_json(folder / "trainer_state.json")
        cfg, dist = self.cfg, self.dist
        if state.get("stage") != self.stage.name:
            raise ValueError(f"checkpoint {folder} was written by stage '{state.get('stage')}', not "
                             f"'{self.stage.name}': choose another output_dir (a later stage starts from an earlier "
                             "one's final/ folder, named in its config)")
        changed = sorted(k for k, v in state.get("config", {}).items()
                         if k not in _RESUME_SAFE_KEYS and config_to_dict(cfg).get(k) != v)
        if changed:
            logger.warning("resuming with changed settings (%s): the run will not match an uninterrupted one",
                           ", ".join(changed))
        self.backend.load(folder)
        if state.get("world_size") == dist.world_size:
            load_rng(folder, dist.rank)
        else:
            logger.warning("checkpoint was written by %s processes, this run has %d: RNG streams start afresh",
                           state.get("world_size"), dist.world_size)
        step = int(state["step"])
        per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
        if state.get("samples_seen", step * per_step) != step * per_step:
            logger.warning("batch layout changed since the checkpoint: the data order will differ")
        logger.info("resuming from %s (step %d)", folder, step)
        return step

    def _export(self, checkpoint: Path | None) -> Path:
        """Full fp32 weights through Stage.export into final/ (written aside, then renamed into place)."""
        final, tmp = self.out / "final", self.out / ".tmp-final"
        state_dict = self.backend.full_state_dict(checkpoint)
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.stage.export(self.backend.module, state_dict, tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        distributed.barrier()
        return final
