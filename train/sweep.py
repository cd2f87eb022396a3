"""Scaling sweeps (`vqrae scale --config FILE [KEY=VALUE ...]`): a sweep of generator sizes, each an ordinary `unified-gen` run.

Every size is a random-init causal LM (Qwen3 / Qwen2 / Llama, built from the config's shape) sharing one text
tokenizer, joined to one frozen VQRAE (`UnifiedModel.from_components`), and trained on the same data by the
training engine in its own process (`python -m vqrae.cli train unified-gen ...`, or the configured `launcher`, e.g.
`torchrun --nproc_per_node 8` with deepspeed=zero2). Then its final validation loss on image tokens and its
GenEval-style overall on the ShapesWorld prompts (or a given prompt file) are recorded, and the sweep is fitted:
loss = a * N^-b + c with a bootstrap interval for b, and loss against compute (see vqrae.eval.scaling).

    OUT/prompts/evaluation_metadata.jsonl   the GenEval-style prompts every size is scored on
    OUT/cache/                              the frozen VQRAE's codes of the training images (shared by the sizes)
    OUT/SIZE/init/                          the random-init unified model the run starts from
    OUT/SIZE/train/                         the unified-gen run (metrics.jsonl, checkpoints/, final/)
    OUT/SIZE/geneval/                       generated images, results.jsonl, summary.json
    OUT/SIZE/result.json                    the run's record, written last: its presence marks the size finished
    OUT/scaling.json scaling.md loss_vs_params.png loss_vs_flops.png score_vs_params.png

Resumable: a finished size (result.json, same settings) is skipped; an interrupted one resumes, training from its
latest checkpoint (the engine's resume=auto) and GenEval from the prompts not yet written. "Same settings" compares
the stage config and overrides, steps, batch, the LLM's shape, template, seed and GenEval settings, with OUT's own
paths written relative (so gathered folders still match), not the text_tokenizer / vqrae paths: a sweep with
another tokenizer needs another output_dir.

`--only SIZE` runs one size (one machine each; gather the SIZE folders into one OUT), `--collect` fits and plots
the finished ones, `--plan` prints parameters, steps, tokens, FLOPs and ZeRO memory per GPU and trains nothing.

Budget: `budget: tokens` trains every size on the same tokens (`tokens`, or the stage config's max_steps);
`budget: compute` gives every size the same FLOPs (`flops`): steps = flops / (6 N D_step). Tokens seen D are
samples x the mean sequence length (prompt + <boi> + codes + <eoi>, no padding) measured on the first
`profile_samples` records of the mixture; FLOPs = 6 N D with N = every LLM weight a token is multiplied by
(non-embedding + the output head; the input table is a lookup). Parameters are the LLM's: the VQRAE is frozen and
the projector is unused by text-to-image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal


class SweepError(ValueError):
    """A sweep that cannot go on as asked (bad input or a failed run): one line in the CLI, exit 2."""


STAGE = "unified-gen"
SIZE_KEYS = {"name", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "head_dim",
             "overrides"}


@dataclasses.dataclass
class GenevalSettings:
    enabled: bool = True
    prompts: str = ""  # a GenEval metadata JSONL; "" = ShapesWorld prompts written to OUT/prompts/
    per_tag: int = 4  # ShapesWorld prompts per task (6 tasks)
    limit: int = 0  # a given prompt file: its first N prompts (0: all)
    num_images: int = 4
    batch_size: int = 16
    seed: int = 0
    cfg_scale: float | None = None  # sampling: None = the model's sampling_config
    temperature: float | None = None
    top_k: int | None = None
    detector: Literal["auto", "shapes", "coco"] = "auto"
    detector_weights: str = ""  # COCO prompts: local Mask2Former / CLIP folders
    clip_weights: str = ""
    device: str = ""  # "" = cuda if available, else cpu

    def __post_init__(self) -> None:
        for key, low in (("per_tag", 1), ("num_images", 1), ("batch_size", 1), ("limit", 0)):
            if getattr(self, key) < low:
                raise ValueError(f"config key 'geneval.{key}': must be >= {low}, got {getattr(self, key)}")


@dataclasses.dataclass
class ScalingConfig:
    output_dir: str = "runs/scaling"
    stage_config: str = "shapes-tiny/unified-gen"  # the unified-gen config every size trains with
    overrides: list[str] = dataclasses.field(default_factory=list)  # its key=value overrides, for every size
    text_tokenizer: str = ""  # folder or hub id of the text tokenizer (with a chat template) every LLM shares
    vqrae: str = ""  # the trained tokenizer folder
    template: str = "auto"
    code_init: Literal["projector", "mean"] = "projector"
    architecture: Literal["qwen2", "qwen3", "llama"] = "qwen3"
    tie_word_embeddings: bool = False
    llm_config: dict = dataclasses.field(default_factory=dict)  # extra LLM config keys (rope_theta, ...)
    sizes: list[dict] = dataclasses.field(default_factory=list)  # {name, hidden_size, num_layers, num_heads, ...}
    budget: Literal["tokens", "compute"] = "tokens"
    tokens: int = 0  # budget tokens: tokens per run (0: the stage config's max_steps)
    flops: float = 0.0  # budget compute: FLOPs per run
    min_steps: int = 10
    processes: int = 1  # processes the launcher starts (global batch = batch_size x grad_accum x processes)
    launcher: str = ""  # e.g. "torchrun --standalone --nproc_per_node 8"; "" = one plain process
    profile_samples: int = 256  # records whose lengths give the tokens per sample
    params_key: Literal["params_non_embedding", "params_total"] = "params_non_embedding"  # N of the law
    bootstrap: int = 1000
    robust: bool = False  # Huber-reweighted fit
    seed: int = 0  # initial weights of every LLM; the bootstrap
    geneval: GenevalSettings = dataclasses.field(default_factory=GenevalSettings)

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("config key 'sizes': list at least one size ({name, hidden_size, num_layers, ...})")
        self.size_specs = [SizeSpec.parse(d, i) for i, d in enumerate(self.sizes)]
        names = [s.name for s in self.size_specs]
        if len(set(names)) != len(names):
            raise ValueError(f"config key 'sizes': names must be unique, got {names}")
        if self.budget == "compute" and self.flops <= 0:
            raise ValueError("config key 'flops': budget compute needs flops > 0 (FLOPs per run)")
        for key, low in (("tokens", 0), ("bootstrap", 0), ("min_steps", 1), ("processes", 1), ("profile_samples", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"config key '{key}': must be >= {low}, got {getattr(self, key)}")
        declared = _launcher_processes(self.launcher)
        if declared is not None and declared != self.processes:
            raise ValueError(f"config key 'launcher' starts {declared} processes but 'processes' is {self.processes}")


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, d: Any, i: int) -> SizeSpec:
        where = f"config key 'sizes' entry {i}"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping, got {d!r}")  # noqa: TRY004 (bad config: ValueError)
        unknown = sorted(set(d) - SIZE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(SIZE_KEYS)})")
        name = str(d.get("name", ""))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"{where}: 'name' must be a folder name (letters, digits, . _ -), got {name!r}")
        ints = {}
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "head_dim"):
            v = d.get(key)
            if v is None and key in ("hidden_size", "num_layers", "num_heads"):
                raise ValueError(f"{where} ({name}): '{key}' is required")
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{where} ({name}): '{key}' must be a positive integer, got {v!r}")
            ints[key] = v
        h, heads = ints["hidden_size"], ints["num_heads"]
        kv = ints["num_kv_heads"] or heads
        if ints["head_dim"] is None and h % heads:
            raise ValueError(f"{where} ({name}): hidden_size {h} must divide by num_heads {heads} (or give head_dim)")
        if heads % kv:
            raise ValueError(f"{where} ({name}): num_heads {heads} must divide by num_kv_heads {kv}")
        overrides = d.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ValueError(f"{where} ({name}): 'overrides' must be a list of 'key=value' strings")
        return cls(name, h, ints["num_layers"], heads, kv, ints["intermediate_size"] or 3 * h,
                   ints["head_dim"] or h // heads, tuple(overrides))


def _launcher_processes(launcher: str) -> int | None:
    """Processes a torchrun / deepspeed line starts (nproc x nnodes), when it says so."""
    words = shlex.split(launcher)
    found = {}
    for i, w in enumerate(words):
        key, _, value = w.partition("=")
        if key in ("--nproc_per_node", "--nproc-per-node", "--num_gpus", "--num-gpus", "--nnodes", "--num_nodes"):
            value = value or (words[i + 1] if i + 1 < len(words) else "")
            if value.isdigit():
                found["nodes" if "node" in key and "per" not in key else "per"] = int(value)
    return found["per"] * found.get("nodes", 1) if "per" in found else None


# ------------------------------------------------------------------------------------------------ building


def llm_config(cfg: ScalingConfig, size: SizeSpec, tok):
    """The transformers config of a size's random LLM over the text tokenizer `tok`."""
    import transformers

    from vqrae.train.stages.lm_pretrain import ARCHITECTURES

    kwargs = dict(vocab_size=len(tok), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
                  num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
                  num_key_value_heads=size.num_kv_heads, max_position_embeddings=4096,
                  tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if cfg.architecture == "qwen2":
        if size.head_dim * size.num_heads != size.hidden_size:
            raise ValueError(f"size {size.name}: qwen2 has head_dim = hidden_size / num_heads; use qwen3 or llama "
                             "for another head_dim")
    else:
        kwargs["head_dim"] = size.head_dim
    config = getattr(transformers, ARCHITECTURES[cfg.architecture][0])(**{**kwargs, **cfg.llm_config})
    config._attn_implementation = "sdpa"
    return config


def llm_counts(llm) -> dict[str, int]:
    """Total, non-embedding and compute (all but the input lookup table) parameters of a causal LM."""
    seen = {id(p): p.numel() for p in llm.parameters()}
    emb, head = llm.get_input_embeddings().weight, llm.get_output_embeddings()
    tied = head is None or head.weight is emb
    embedding = emb.numel() + (0 if tied else head.weight.numel())
    total = sum(seen.values())
    return {"params_total": total, "params_non_embedding": total - embedding,
            "params_compute": total - (0 if tied else emb.numel())}


def meta_counts(config) -> dict[str, int]:
    """`llm_counts` of the causal LM `config` describes, built on the meta device (no memory, no time)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return llm_counts(AutoModelForCausalLM.from_config(config))


def build_init(cfg: ScalingConfig, size: SizeSpec, folder: Path) -> None:
    """The size's random LLM + the VQRAE as a unified model folder (written aside, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vqrae.tokenizer import load_vqrae
    from vqrae.unified_model import UnifiedModel

    tok = AutoTokenizer.from_pretrained(cfg.text_tokenizer)
    torch.manual_seed(cfg.seed)
    llm = AutoModelForCausalLM.from_config(llm_config(cfg, size, tok), dtype=torch.float32)
    model = UnifiedModel.from_components(llm, tok, load_vqrae(cfg.vqrae), template=cfg.template,
                                         code_init=cfg.code_init)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def data_profile(cfg: ScalingConfig, stage_cfg) -> dict[str, float]:
    """Mean tokens per training sample (no padding) and image-code targets per sample, measured with the sweep's
    processor (text tokenizer + template + VQRAE grid; the LLM does not matter) on the mixture's first records."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from vqrae.data.mixture import Mixture, open_source
    from vqrae.data.records import InvalidRecord
    from vqrae.tokenizer import VQRAE, VQRAEConfig
    from vqrae.unified_model import UnifiedCollator, UnifiedModel

    tok = AutoTokenizer.from_pretrained(cfg.text_tokenizer)
    with torch.device("meta"):
        vq = VQRAE(VQRAEConfig.from_pretrained(cfg.vqrae))
    tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=1, num_key_value_heads=1))
    proc = UnifiedModel.from_components(tiny, tok, vq, template=cfg.template, code_init="mean").processor
    c = stage_cfg
    sources = [open_source(s, image_size=proc.image_size, seed=c.seed) for s in c.sources]
    mix = Mixture(sources, [s.weight for s in c.sources], length=cfg.profile_samples, seed=c.seed,
                  group=c.batch_size if c.group_by_source else 0)
    collate = UnifiedCollator(proc, caption_dropout=c.caption_dropout, max_length=c.max_length, seed=c.seed)
    n, lo, hi = proc.config.num_image_tokens, *proc.config.code_range
    lengths, targets, bad = [], [], []
    for i in range(len(mix)):
        rec = mix[i]
        if rec.get("task") in ("t2i", "draw"):  # the length does not depend on the codes: skip the image
            rec = {k: v for k, v in rec.items() if k not in ("pixels", "image", "file_name")} | {"codes": [0] * n}
        try:
            ids, labels = collate._truncate(*collate.encode_record(rec)[:2])
        except InvalidRecord as exc:  # training skips it too
            bad.append(str(exc))
            continue
        lengths.append(len(ids))
        targets.append(sum(lo <= t < hi for t in labels))
    if not lengths:
        raise ValueError(f"{cfg.stage_config}: none of the first {len(mix)} training records is valid ({bad[0]})")
    if bad:
        print(f"[scale] warning: {len(bad)} of the first {len(mix)} training records would be skipped ({bad[0]}); "
              "raise max_length if they are too long", flush=True)
    return {"tokens_per_sample": sum(lengths) / len(lengths), "image_tokens_per_sample": sum(targets) / len(targets),
            "vocab_rows": proc.config.code_offset + proc.config.codebook_size, "samples_measured": len(lengths)}


class _VocabOnly:
    """A text tokenizer's length only: what `llm_config` needs to count parameters (the special ids do not
    change them, and a hub tokenizer cannot be loaded offline)."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


# ------------------------------------------------------------------------------------------------- the sweep


class Sweep:
    """One sweep: the config resolved (stage config per size, steps, prompts) and what runs each size."""

    def __init__(self, cfg: ScalingConfig):
        from vqrae.train import load_config
        from vqrae.train.stages import get_stage

        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.stage_cls = get_stage(STAGE)
        self.user_cache = any(o.split("=", 1)[0].strip() == "cache_dir" for o in cfg.overrides)
        self.load = lambda overrides: load_config(self.stage_cls.config_class, cfg.stage_config, overrides)
        self._profile: dict | None = None

    def overrides(self, size: SizeSpec, steps: int | None = None) -> list[str]:
        """The size's stage overrides; paths relative to OUT are what the plan compares (folders move)."""
        run = self.out / size.name
        extra = [f"init={run / 'init'}", "llm=", "vqrae=", f"output_dir={run / 'train'}"]
        if not self.user_cache:
            extra.append(f"cache_dir={self.out / 'cache'}")
        return [*self.cfg.overrides, *size.overrides, *extra, *([f"max_steps={steps}"] if steps else [])]

    def stage_config(self, size: SizeSpec, steps: int | None = None):
        return self.load(self.overrides(size, steps))

    def profile(self) -> dict:
        if self._profile is None:
            self._profile = data_profile(self.cfg, self.stage_config(self.cfg.size_specs[0]))
        return self._profile

    def steps(self, size: SizeSpec, params_compute: int) -> tuple[int, int]:
        """(optimizer steps, global batch) under the budget."""
        sc = self.stage_config(size)
        batch = sc.batch_size * sc.grad_accum * self.cfg.processes
        per_step = batch * self.profile()["tokens_per_sample"]
        if self.cfg.budget == "compute":
            return max(self.cfg.min_steps, round(self.cfg.flops / (6 * params_compute * per_step))), batch
        if self.cfg.tokens:
            return max(self.cfg.min_steps, round(self.cfg.tokens / per_step)), batch
        return sc.max_steps, batch

    def plan(self, size: SizeSpec, steps: int, batch: int) -> dict:
        """What the result depends on: a finished size whose plan differs is run again."""
        out = str(self.out)
        overrides = [o.replace(out, "OUT") for o in self.overrides(size, steps)]
        g = self.cfg.geneval
        return {"stage_config": self.cfg.stage_config, "overrides": overrides, "steps": steps, "global_batch": batch,
                "architecture": self.cfg.architecture, "size": dataclasses.asdict(size) | {"overrides": None},
                "llm_config": self.cfg.llm_config, "tie_word_embeddings": self.cfg.tie_word_embeddings,
                "template": self.cfg.template, "code_init": self.cfg.code_init, "seed": self.cfg.seed,
                "geneval": dataclasses.asdict(g) | {"device": None} if g.enabled else None}

    def prompts(self) -> list[dict]:
        from vqrae.data.geneval import TAG_COUNTS, build_prompt_set, read_geneval_metadata, write_jsonl
        from vqrae.data.shapes import ShapesConfig

        g = self.cfg.geneval
        if g.prompts:
            records = read_geneval_metadata(g.prompts)
            return records[: g.limit] if g.limit else records
        shapes = ShapesConfig()
        records = build_prompt_set(shapes.classes, shapes.colors, {t: g.per_tag for t in TAG_COUNTS}, g.seed,
                                   shapes.max_objects)
        path = self.out / "prompts" / "evaluation_metadata.jsonl"
        if not path.is_file() or read_geneval_metadata(path) != records:
            write_jsonl(path, records)
        return records

    # -------------------------------------------------------------------------------------------- one size

    def run_size(self, size: SizeSpec) -> dict:
        from vqrae.eval.scaling import read_run

        run = self.out / size.name
        init = run / "init"
        if not (init / "config.json").is_file():
            print(f"[scale] {size.name}: building the random-init model in {init}", flush=True)
            build_init(self.cfg, size, init)
        counts = self.init_counts(size, init)
        steps, batch = self.steps(size, counts["params_compute"])
        plan = self.plan(size, steps, batch)
        done = read_run(run)
        if done is not None and done.get("plan") == plan:
            print(f"[scale] {size.name}: finished earlier, skipped ({run / 'result.json'})", flush=True)
            return done
        if done is not None:
            print(f"[scale] {size.name}: settings changed since it finished: training on, scoring again", flush=True)
            (run / "result.json").unlink()
            shutil.rmtree(run / "geneval", ignore_errors=True)
        seconds = self.train(size, steps)
        geneval = self.geneval(size, run) if self.cfg.geneval.enabled else None
        from vqrae.eval.scaling import run_record

        prof = self.profile()
        record = run_record(run / "train", name=size.name, counts=counts, steps=steps, global_batch=batch,
                            tokens_per_sample=prof["tokens_per_sample"],
                            image_tokens_per_sample=prof["image_tokens_per_sample"], geneval=geneval)
        record.update(architecture=self.cfg.architecture, num_layers=size.num_layers, hidden_size=size.hidden_size,
                      num_heads=size.num_heads, num_kv_heads=size.num_kv_heads,
                      intermediate_size=size.intermediate_size, head_dim=size.head_dim, plan=plan,
                      train_seconds_this_call=seconds)
        tmp = run / ".result.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, run / "result.json")
        print(f"[scale] {size.name}: val loss {record['val_loss']:.4f}"
              + (f", GenEval {geneval['overall']:.4f}" if geneval else ""), flush=True)
        return record

    def init_counts(self, size: SizeSpec, init: Path) -> dict[str, int]:
        """Parameter counts of the LLM in `init` (on the meta device); ValueError if it has another shape."""
        from vqrae.unified_model import UnifiedConfig

        text = UnifiedConfig.from_pretrained(init).text_config
        want = {"model_type": self.cfg.architecture, "hidden_size": size.hidden_size,
                "num_hidden_layers": size.num_layers, "num_attention_heads": size.num_heads,
                "num_key_value_heads": size.num_kv_heads, "intermediate_size": size.intermediate_size}
        for key, value in want.items():
            if getattr(text, key) != value:
                raise ValueError(f"size {size.name}: {init} was built with {key} {getattr(text, key)}, the config "
                                 f"says {value}; delete that folder or choose another output_dir")
        return meta_counts(text)

    def train(self, size: SizeSpec, steps: int) -> float | None:
        """The engine's run in its own process; nothing when final/ is there at the planned step."""
        train = self.out / size.name / "train"
        latest = train / "checkpoints" / "latest"
        state = train / "checkpoints" / latest.read_text().strip() / "trainer_state.json" if latest.is_file() else None
        done = json.loads(state.read_text()).get("step", 0) if state and state.is_file() else 0
        if done > steps:
            raise SweepError(f"size {size.name}: {train} has trained {done} steps, more than the {steps} planned now; "
                           "choose another output_dir")
        if done == steps and (train / "final" / "config.json").is_file():
            return None
        if self.cfg.launcher:
            script = shutil.which("vqrae") or str(Path(sys.executable).with_name("vqrae"))
            if not os.path.isfile(script):
                raise SweepError("launcher: no `vqrae` console script next to python or on PATH (pip install vqrae)")
            cmd = [*shlex.split(self.cfg.launcher), script]
        else:
            cmd = [sys.executable, "-m", "vqrae.cli"]
        cmd += ["train", STAGE, "--config", self.cfg.stage_config, *self.overrides(size, steps)]
        print(f"[scale] {size.name}: training {steps} steps: {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            raise SweepError(f"size {size.name}: training exited with {rc} (its log is above); the same command "
                           "resumes it")
        return round(time.perf_counter() - t0, 1)

    def geneval(self, size: SizeSpec, run: Path) -> dict:
        import torch

        from vqrae.eval.geneval.layout import generate_folder
        from vqrae.eval.geneval.suite import make_plugins, score_folder
        from vqrae.unified_model import UnifiedModel

        g = self.cfg.geneval
        records = self.prompts()
        device = g.device or ("cuda" if torch.cuda.is_available() else "cpu")
        detector, colors, kind = make_plugins(g.detector, records, g.detector_weights or None,
                                              g.clip_weights or None, device)
        model = UnifiedModel.from_pretrained(run / "train" / "final", device=device,
                                             dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
        sampling = {k: v for k, v in (("cfg_scale", g.cfg_scale), ("temperature", g.temperature),
                                      ("top_k", g.top_k)) if v is not None}
        print(f"[scale] {size.name}: GenEval-style scoring on {len(records)} prompts x {g.num_images} images",
              flush=True)
        generate_folder(model, records, run / "geneval", g.num_images, g.batch_size, g.seed, sampling, progress=False)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        s = score_folder(run / "geneval", detector, colors, progress=False, title=f"GenEval-style, {size.name}")
        return {"overall": s["overall"], "tags": {t: v["score"] for t, v in s["tags"].items()},
                "images": s["images"], "detector": kind}

    # ----------------------------------------------------------------------------------------------- report

    def collect(self) -> dict | None:
        from vqrae.eval.scaling import read_run, table_markdown, write_report

        runs, missing = [], []
        for size in self.cfg.size_specs:
            record = read_run(self.out / size.name)
            (runs.append(record) if record is not None else missing.append(size.name))
        if missing:
            print(f"[scale] not finished (left out): {', '.join(missing)}")
        if not runs:
            raise SweepError(f"no finished runs under {self.out} (a finished size has SIZE/result.json)")
        report = write_report(runs, self.out, params_key=self.cfg.params_key, bootstrap=self.cfg.bootstrap,
                              seed=self.cfg.seed, robust=self.cfg.robust)
        print("\n" + table_markdown(report))
        print(f"wrote {', '.join(report['files'])}")
        return report

    def print_plan(self) -> None:
        """Per size: parameters, steps, tokens, FLOPs and ZeRO-1/2 memory per GPU (eval/model_size.py's
        accounting on the meta device; the frozen VQRAE and the projector from the stage config's own model)."""
        from vqrae.eval.model_size import GIB, model_size, zero_memory
        from vqrae.eval.scaling import _count

        try:
            base = model_size(self.cfg.stage_config, STAGE, [*self.cfg.overrides, "init=",
                                                              f"llm={self.cfg.text_tokenizer}", f"vqrae={self.cfg.vqrae}"])
        except (OSError, ValueError) as exc:  # model_size names its own keys: say which of ours they were
            raise ValueError(f"--plan sizes {self.cfg.stage_config} with llm=text_tokenizer "
                             f"({self.cfg.text_tokenizer}) and vqrae ({self.cfg.vqrae}): {exc}") from None
        base_llm = next(p for p in base.parts if p.name == "llm")
        try:
            prof = self.profile()
        except (OSError, ValueError) as exc:  # a hub tokenizer offline, a tokenizer not trained yet
            prof = None
            print(f"[scale] steps and tokens unknown here ({str(exc).splitlines()[0]})")
        print(f"{'size':<12}{'layers':>7}{'hidden':>7}{'non-emb':>9}{'total':>9}{'steps':>8}{'tokens':>9}"
              f"{'FLOPs':>10}{'zero1 GiB':>11}{'zero2 GiB':>11}   (per GPU, {self.cfg.processes} processes)")
        vocab = _VocabOnly(base.facts["vocab_size"])  # text + the added specials + the codes
        for size in self.cfg.size_specs:
            c = meta_counts(llm_config(self.cfg, size, vocab))
            steps = tokens = flops = None
            if prof:
                steps, batch = self.steps(size, c["params_compute"])
                tokens = steps * batch * prof["tokens_per_sample"]
                flops = 6 * c["params_compute"] * tokens
            mem = zero_memory(base.total - base_llm.params + c["params_total"], c["params_total"], base.buffers,
                              self.cfg.processes)
            print(f"{size.name:<12}{size.num_layers:>7}{size.hidden_size:>7}{_count(c['params_non_embedding']):>9}"
                  f"{_count(c['params_total']):>9}{steps or '-':>8}{_count(tokens) if tokens else '-':>9}"
                  f"{f'{flops:.3g}' if flops else '-':>10}{mem['zero1']['total'] / GIB:>11.2f}"
                  f"{mem['zero2']['total'] / GIB:>11.2f}")
        print("memory: bf16 weights and grads, fp32 AdamW, the frozen VQRAE whole on every GPU; activations and the "
              "logits come on top")


# ------------------------------------------------------------------------------------------------------- CLI
