"""`vqrae quickstart`: the whole product on a CPU, from nothing to a unified model that answers and draws, scored.

Steps (each an ordinary command you can rerun by hand; configs in configs/shapes-tiny/, or the folder --configs
names: shapes-tiny-p4 trains the same models with 4-px patches, 256 tokens per image, which keep the shapes):
   1. data               render ShapesWorld train/val/test               (`vqrae data shapes`)
   2. encoder            stage 0: a small SigLIP on its captions         (`vqrae train encoder-pretrain`)
   3. tokenizer-stage1   frozen encoder; codebook map + decoder learn    (`vqrae train tokenizer-stage1`)
   4. tokenizer-stage2   encoder unfrozen, with self-distillation        (`vqrae train tokenizer-stage2`)
   5. eval-tokenizer     reconstruction of held-out images               (`vqrae eval reconstruction`)
   6. lm                 the stand-in LLM and its text tokenizer         (`vqrae train lm-pretrain`)
   7. unified-align      projector only, on captions                     (`vqrae train unified-align`)
   8. unified-sft        one model that answers and draws                (`vqrae train unified-sft`)
   9. eval-understanding ShapesWorld VQA on held-out images              (`vqrae eval understanding`)
  10. eval-generation    GenEval-style text-to-image, ShapesWorld prompts (`vqrae eval geneval`)
  11. chat               a scripted chat about a held-out image          (`vqrae chat --demo`)
  12. report             report.md, loss curves, generated grid
Finished steps are recorded in OUT/quickstart.json and reused when the quickstart runs again; a training step that
was interrupted resumes from its last checkpoint; --fresh starts over; --until STEP stops after STEP (a later run
goes on from there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vqrae.train.config import CONFIG_DIR

PROFILES = ("shapes-tiny", "shapes-tiny-p4")  # folders of configs/ with every stage's config
# Step times of a full run of another profile on the idle 2-core machine (README), where they differ from
# Step.expected_s (shapes-tiny's); only for the "time left" estimate.
# p4 tokenizer stages: K = 2048, measured at 680 + 1130 s on a machine that ran the encoder in 490 s, scaled to 638;
# align / SFT / VQA with 2x2-merged features (64 positions an image): 69 / 518 / 16 s there, scaled the same way.
# Stage 0 with the dense objectives, 1,000 steps: 948 s on the 490-s machine. The width-128 LM (1,200 steps),
# align and SFT (500 steps): 346 / 57 / 203 s on a 2-core machine that ran stage 0 in 1,758 s with one thread.
EXPECTED_S = {"shapes-tiny-p4": {"encoder": 1230, "tokenizer-stage1": 885, "tokenizer-stage2": 1471,
                                 "eval-tokenizer": 60, "lm": 350, "unified-align": 60, "unified-sft": 205,
                                 "eval-understanding": 21, "eval-generation": 13}}

# --smoke: the same pipeline at toy sizes, to check that everything is wired (a couple of minutes on 2 cores).
_TOY_UNIFIED = ["batch_size=4", "max_steps=3", "val_num=0", "save_every=0", "max_length=256", "warmup_steps=0"]
SMOKE = {
    "data": {"num": 400},
    "encoder-pretrain": ["max_steps=10", "width=32", "depth=1", "heads=2", "text_depth=1", "batch_size=16",
                         "tokenizer_corpus=200", "vocab_size=150", "val_num=32", "eval_every=0", "save_every=0"],
    "tokenizer-stage1": ["max_steps=6", "codebook_size=64", "codebook_dim=32", "batch_size=8", "val_num=16",
                         "eval_every=0", "save_every=0"],
    "tokenizer-stage2": ["max_steps=4", "batch_size=8", "val_num=16", "eval_every=0", "save_every=0"],
    "lm-pretrain": ["data_num=100", "val_num=10", "hidden_size=64", "num_layers=2", "num_heads=4", "num_kv_heads=2",
                    "intermediate_size=128", "max_length=64", "vocab_size=400", "tokenizer_corpus=100",
                    "max_steps=5", "batch_size=8", "eval_every=0", "save_every=0"],
    "unified-align": [*_TOY_UNIFIED, "data=[{task: describe, data: shapes, num: 8}]"],
    "unified-sft": [*_TOY_UNIFIED, "eval_vqa=0", ("data=[{task: conversation, data: shapes, num: 8}, "
                    "{task: draw, data: shapes, num: 8, followup: 1}, {task: t2i, data: shapes, num: 8}]")],
    "eval": {"test_images": 16, "vqa_images": 4, "prompts_per_tag": 1, "images_per_prompt": 1},
}
FULL_EVAL = {"test_images": 1100, "vqa_images": 100, "prompts_per_tag": 4, "images_per_prompt": 2}
GENERATED_PROMPTS = 12  # labelled tiles in generated.png


@dataclass
class Step:
    name: str
    title: str
    expected_s: float  # full size, measured on an idle 2-core machine (README); only for the "time left" estimate
    run: Callable[[Quickstart], dict]


class Quickstart:
    """The state of one quickstart folder: what is done (OUT/quickstart.json), where everything goes."""

    def __init__(self, out: Path, smoke: bool, configs: str = "shapes-tiny"):
        self.out, self.smoke, self.configs = out, smoke, CONFIG_DIR / configs
        self.expected_s = EXPECTED_S.get(configs, {})
        self.data = out / "shapes64"
        self.eval_sizes = SMOKE["eval"] if smoke else FULL_EVAL
        self.state_path = out / "quickstart.json"
        self.state = {"smoke": smoke, "configs": configs, "steps": {}, "results": {}}
        if self.state_path.is_file():
            saved = json.loads(self.state_path.read_text())
            if saved.get("smoke", False) != smoke:
                raise ValueError(f"{out} holds a {'smoke' if saved.get('smoke') else 'full'} quickstart; use "
                                 "--fresh to start over or another --out")
            if saved.get("configs", "shapes-tiny") != configs:
                raise ValueError(f"{out} holds a quickstart of --configs {saved.get('configs', 'shapes-tiny')}; use "
                                 "--fresh to start over or another --out")
            self.state.update(saved)

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    def expected(self, step: Step) -> float:
        return self.expected_s.get(step.name, step.expected_s)

    def final(self, stage_dir: str) -> Path:
        return self.out / stage_dir / "final"

    def train(self, stage_name: str, folder: str, overrides: list[str]) -> dict:
        from vqrae.train import load_config, train
        from vqrae.train.stages import get_stage

        out = self.out / folder
        cls = get_stage(stage_name)
        extra = SMOKE[stage_name] if self.smoke else []
        config = self.configs / f"{stage_name}.yaml"
        cfg = load_config(cls.config_class, config, [f"output_dir={out}", *overrides, *extra])
        print(f"  vqrae train {stage_name} --config {config} " + " ".join([f"output_dir={out}", *overrides, *extra]))
        result = train(cls(cfg))
        return {"final": str(result.final_dir), "step": result.step}


# -- the steps ------------------------------------------------------------------------------------------------------


def _data(q: Quickstart) -> dict:
    from vqrae.cli.cli import main as vqrae

    num = SMOKE["data"]["num"] if q.smoke else 22000
    cmd = ["data", "shapes", "--out", str(q.data), "--num", str(num), "--size", "64", "--format", "folder"]
    print("  vqrae " + " ".join(cmd))
    if vqrae(cmd) != 0:
        raise RuntimeError("rendering ShapesWorld failed (see above)")
    return {"images": num}


def _paths(q: Quickstart) -> list[str]:
    return [f"data={q.data / 'train'}", f"val_data={q.data / 'val'}"]


def _encoder(q: Quickstart) -> dict:
    return q.train("encoder-pretrain", "encoder", _paths(q))


def _stage1(q: Quickstart) -> dict:
    return q.train("tokenizer-stage1", "tokenizer-stage1", [*_paths(q), f"encoder={q.final('encoder')}"])


def _stage2(q: Quickstart) -> dict:
    return q.train("tokenizer-stage2", "tokenizer-stage2", [*_paths(q), f"tokenizer={q.final('tokenizer-stage1')}"])


def _eval_tokenizer(q: Quickstart) -> dict:
    from vqrae.cli.cli import main as vqrae
    from vqrae.eval.reconstruction import load_reference_encoder, reconstruction_metrics, write_summary
    from vqrae.tokenizer import load_vqrae
    from vqrae.train.stages.common import image_text_dataset

    results = {}
    num = q.eval_sizes["test_images"]
    for name, reference in (("stage1", None), ("stage2", "tokenizer-stage1")):
        vq = load_vqrae(str(q.final(f"tokenizer-{name}")))
        test = image_text_dataset(str(q.data / "test"), num, vq.image_size, "test", 0, kind="image")
        ref = load_reference_encoder(str(q.final(reference))) if reference else None
        m = reconstruction_metrics(vq, test, 64, reference_encoder=ref, grid_path=q.out / f"eval-{name}" / "grid.png")
        write_summary(m, q.out / f"eval-{name}" / "summary.json")
        results[name] = {k: v for k, v in m.items() if k != "notes"}
    sample = min((q.data / "test" / "images").glob("*.png"))
    vqrae(["reconstruct", "--tokenizer", str(q.final("tokenizer-stage2")), "--image", str(sample),
           "--out", str(q.out / "reconstruction.png")])
    return results


def _lm(q: Quickstart) -> dict:
    return q.train("lm-pretrain", "lm", [])


def _align(q: Quickstart) -> dict:
    return q.train("unified-align", "unified-align",
                   [f"llm={q.final('lm')}", f"vqrae={q.final('tokenizer-stage2')}"])


def _sft(q: Quickstart) -> dict:
    return q.train("unified-sft", "unified-sft", [f"init={q.final('unified-align')}"])


def _load_unified(q: Quickstart):
    from vqrae.unified_model import UnifiedModel

    return UnifiedModel.from_pretrained(str(q.final("unified-sft"))).eval()


def _eval_understanding(q: Quickstart) -> dict:
    from vqrae.eval.shapes_quick import shapes_vqa_metrics

    model = _load_unified(q)
    metrics = shapes_vqa_metrics(model, q.eval_sizes["vqa_images"], progress=True)
    # the control: the same questions about the wrong images; what stays right comes from the language prior
    metrics["shuffled_images"] = shapes_vqa_metrics(model, q.eval_sizes["vqa_images"], shuffled_images=True)
    (q.out / "vqa.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _eval_generation(q: Quickstart) -> dict:
    from vqrae.data.geneval import TAGS, build_prompt_set, write_jsonl
    from vqrae.data.shapes import ShapesConfig
    from vqrae.eval.geneval.layout import generate_folder
    from vqrae.eval.geneval.suite import labelled_grid, make_plugins, score_folder

    model = _load_unified(q)
    cfg = ShapesConfig(size=model.processor.image_size)
    per_tag = q.eval_sizes["prompts_per_tag"]
    records = build_prompt_set(cfg.classes, cfg.colors, {t: per_tag for t in TAGS}, seed=0, max_count=cfg.max_objects)
    folder = q.out / "geneval"
    write_jsonl(folder / "prompts.jsonl", records)
    detector, colors, _ = make_plugins("shapes", records)
    generate_folder(model, records, folder, q.eval_sizes["images_per_prompt"], batch_size=8)
    summary = score_folder(folder, detector, colors)
    # one labelled tile per prompt (its first image), right/wrong as the scorer judged it
    results = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    firsts = {}
    for r in results:
        firsts.setdefault(r["folder"], r)
    tiles = [(folder / r["filename"], f"{'ok' if r['correct'] else 'x'} {r['prompt'].removeprefix('a photo of ')}")
             for r in list(firsts.values())[:GENERATED_PROMPTS]]
    labelled_grid(tiles, q.out / "generated.png", tile=128)
    ceiling = q.state["results"].get("eval-tokenizer", {}).get("stage2", {}).get("geneval")
    overall = summary["overall"]
    return {"overall": overall, "tags": {t: v["score"] for t, v in summary["tags"].items()},
            "images": len(results), "cfg_scale": model.sampling_config.cfg_scale, "ceiling": ceiling,
            "fraction_of_ceiling": overall / ceiling if ceiling else None}


def _chat(q: Quickstart) -> dict:
    from vqrae.eval.chat_demo import scripted_chat

    return scripted_chat(_load_unified(q), q.out / "chat")


def _report(q: Quickstart) -> dict:
    from vqrae.eval.report import loss_curves_figure, machine_line

    stages = {"encoder (stage 0)": "encoder", "tokenizer stage 1": "tokenizer-stage1",
              "tokenizer stage 2": "tokenizer-stage2", "language model": "lm", "unified align": "unified-align",
              "unified SFT": "unified-sft"}
    loss_curves_figure({k: q.out / v for k, v in stages.items()}, q.out / "loss_curves.png")
    q.state["machine"] = machine_line()
    q.state["models"] = {"tokenizer": str(q.final("tokenizer-stage2")), "unified": str(q.final("unified-sft"))}
    return {"report": str(q.out / "report.md")}  # written by `run` once this step's own time is recorded


STEPS = [
    Step("data", "render ShapesWorld", 23, _data),
    Step("encoder", "stage 0: SigLIP encoder", 154, _encoder),
    Step("tokenizer-stage1", "tokenizer stage 1", 175, _stage1),
    Step("tokenizer-stage2", "tokenizer stage 2", 184, _stage2),
    Step("eval-tokenizer", "reconstruction of held-out images", 34, _eval_tokenizer),
    Step("lm", "language model", 76, _lm),
    Step("unified-align", "unified model: alignment", 44, _align),
    Step("unified-sft", "unified model: SFT (answer and draw)", 378, _sft),
    Step("eval-understanding", "VQA on held-out images", 5, _eval_understanding),
    Step("eval-generation", "GenEval-style text-to-image", 3, _eval_generation),
    Step("chat", "scripted chat", 1, _chat),
    Step("report", "report.md and figures", 1, _report),
]


# -- the command ----------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train and evaluate the whole model on ShapesWorld, end to end (CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="working folder (default runs/quickstart)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the wiring in a couple of minutes")
    p.add_argument("--fresh", action="store_true", help="delete the working folder's quickstart and start over")
    p.add_argument("--configs", default="shapes-tiny", choices=PROFILES,
                   help="the configs/ folder every stage trains with: shapes-tiny (default; 64 tokens per image, the "
                   "quickest) or shapes-tiny-p4 (patch 4: 256 tokens per image, keeps the shapes; several times "
                   "longer; see the README)")
    p.add_argument("--until", choices=[s.name for s in STEPS], metavar="STEP",
                   help="stop after this step (e.g. eval-tokenizer: only the tokenizer); a later run goes on from there."
                   " Steps: " + ", ".join(s.name for s in STEPS))
    p.set_defaults(func=run)


def _fresh(out: Path) -> None:
    if not out.exists():
        return
    if not (out / "quickstart.json").is_file() and any(out.iterdir()):
        raise ValueError(f"--fresh would delete {out}, which does not look like a quickstart folder (no "
                         "quickstart.json); remove it yourself or choose another --out")
    shutil.rmtree(out)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.fresh:
        _fresh(out)
    out.mkdir(parents=True, exist_ok=True)
    q = Quickstart(out, args.smoke, args.configs)
    steps = STEPS[:[s.name for s in STEPS].index(args.until) + 1] if args.until else STEPS
    ran_s = ran_expected = 0.0
    timings = []
    for i, step in enumerate(steps, 1):
        done = q.state["steps"].get(step.name)
        if done is not None:
            print(f"[{i}/{len(STEPS)}] [skip] {step.name}: done in an earlier run ({done['seconds']:.0f} s)")
            timings.append((step, done["seconds"], "reused"))
            continue
        pending = [s for s in steps[i - 1:] if s.name not in q.state["steps"]]
        # this machine against the one the estimates come from, damped by a 5-minute prior so that one short step
        # does not swing the estimate
        prior = 300 * (0.1 if q.smoke else 1.0)
        pace = (ran_s + prior) / (ran_expected + prior)
        left = pace * sum(q.expected(s) for s in pending) * (0.1 if q.smoke else 1.0)
        print(f"\n[{i}/{len(STEPS)}] {step.name}: {step.title} (about {_clock(left)} left in all)", flush=True)
        t0 = time.perf_counter()
        result = step.run(q)
        seconds = time.perf_counter() - t0
        ran_s += seconds
        ran_expected += q.expected(step) * (0.1 if q.smoke else 1.0)
        q.state["steps"][step.name] = {"title": step.title, "seconds": round(seconds, 1)}
        q.state["results"][step.name] = result
        if step.name == "report":
            from vqrae.eval.report import write_report

            write_report(q.out, q.state)
        q.save()
        timings.append((step, seconds, "ran"))
        print(f"[{i}/{len(STEPS)}] {step.name} done in {seconds:.0f} s")
    _summary(q, timings)
    return 0


def _summary(q: Quickstart, timings: list) -> None:
    res = q.state["results"]
    print(f"\n{'step':<20}{'seconds':>9}  ")
    for step, seconds, how in timings:
        print(f"{step.name:<20}{seconds:>9.0f}  {'' if how == 'ran' else '(' + how + ')'}")
    print(f"{'total':<20}{sum(s for _, s, _ in timings):>9.0f}")
    rec = res.get("eval-tokenizer", {}).get("stage2", {})
    if rec:
        print(f"\ntokenizer (held-out): PSNR {rec['psnr']:.2f}, SSIM {rec['ssim']:.3f}, codebook use "
              f"{rec.get('utilization', 0):.1%}, shape acc {rec.get('shape_accuracy', float('nan')):.1%}")
    vqa = res.get("eval-understanding", {})
    if vqa:
        blind = vqa.get("shuffled_images", {}).get("overall_acc", float("nan"))
        print(f"understanding: ShapesWorld VQA {vqa['overall_acc']:.1%} overall ({vqa['questions']:.0f} questions; "
              f"{blind:.1%} asked about the wrong images)")
    gen = res.get("eval-generation", {})
    if gen:
        print(f"generation: GenEval-style {gen['overall']:.3f} ({gen['images']} images; tokenizer ceiling "
              f"{gen['ceiling'] if gen['ceiling'] is not None else float('nan'):.3f})")
    chat = res.get("chat", {})
    if chat:
        print(f"chat: {chat['answers_correct']}/3 answers right, drew by itself: {chat['drew_by_itself']}")
    tok, model = q.final("tokenizer-stage2"), q.final("unified-sft")
    if "unified-sft" not in q.state["steps"]:
        if "tokenizer-stage2" in q.state["steps"]:
            print(f"\ntokenizer: {tok}\n\ntry:\n  vqrae reconstruct --tokenizer {tok} --image YOUR.png --out rec.png")
        return
    print(f"\nreport: {q.out / 'report.md'}\ntokenizer: {tok}\nunified model: {model}\n\ntry:\n"
          f"  vqrae chat --model {model} --image {q.out / 'chat' / 'image.png'}\n"
          f"  vqrae generate --model {model} --prompt \"a photo of a red circle\" --out {q.out / 'drawings'}\n"
          f"  vqrae reconstruct --tokenizer {tok} --image YOUR.png --out rec.png")
