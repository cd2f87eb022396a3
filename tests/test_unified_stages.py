"""The unified model's training stages (unified-align / -sft / -gen) on tiny models and ShapesWorld at 32 px:
each stage's loss falls, only the intended parameters change, the export loads and records its history, LoRA
exports merge to a plain folder, the code/feature caches are used, and the loss is weighted by targets."""

from __future__ import annotations

import json

import pytest
import torch

from vqrae.train import load_config, train
from vqrae.train.stages import get_stage
from vqrae.unified_model import UnifiedCollator, UnifiedModel
from vqrae.unified_model.loss import token_loss, weighted_count
from vqrae.unified_model.testing import save_tiny_parts, tiny_unified_model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny LLM + text tokenizer folder (with a chat template) and a tiny VQRAE folder (32 px, 4x4 codes)."""
    root = tmp_path_factory.mktemp("parts")
    save_tiny_parts(root)
    return root


def run_stage(name, out, *overrides, data="[{task: describe, data: shapes, num: 8}]"):
    cls = get_stage(name)
    cfg = load_config(cls.config_class, None, [
        f"output_dir={out}", f"data={data}", "batch_size=4", "max_steps=8", "log_every=1", "val_num=4",
        "warmup_steps=0", "schedule=constant", "max_length=256", "save_every=0", *overrides])
    stage = cls(cfg)
    result = train(stage)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    return stage, result, losses


def weights(model: UnifiedModel, part: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in getattr(model, part).state_dict().items()}


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module")
def aligned(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("align")
    stage, result, losses = run_stage("unified-align", out, f"llm={parts / 'llm'}", f"vqrae={parts / 'vqrae'}",
                                      "lr=3e-3")
    return stage, result, losses, out


def _start_model(stage):
    """The model a stage started from: built again the way the engine builds it (seeded, then build_model), which
    includes the projector's calibration on the data and the code rows derived from it."""
    from vqrae.train.engine import seed_everything

    seed_everything(stage.config.seed)
    return type(stage)(stage.config).build_model()


def test_align_trains_the_projector_only_and_its_loss_falls(parts, aligned):
    stage, result, losses, out = aligned
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    start = _start_model(stage)
    # the build calibrated the fresh projector: its outputs start at the text rows' spread
    text = start.llm.get_input_embeddings().weight[: start.config.code_offset].detach()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        slots = start.encode_images(torch.rand(4, 3, 32, 32, generator=g))
    radius = float((text - text.mean(0)).norm(dim=-1).mean())
    assert 0.5 < float(slots.norm(dim=-1).mean()) / radius < 2
    final = UnifiedModel.from_pretrained(result.final_dir)
    assert changed(weights(start, "projector"), weights(final, "projector"))
    assert not changed(weights(start, "llm"), weights(final, "llm"))
    assert not changed(weights(start, "vqrae"), weights(final, "vqrae"))
    assert final.training_history[-1]["stage"] == "unified-align"
    assert final.training_history[-1]["tasks"] == ["describe"]
    # continuous features of the frozen VQRAE were computed once, into the cache beside the run
    assert list((out.parent / "cache").glob("features-*")) or list((out / ".." / "cache").glob("features-*"))


def test_sft_trains_llm_and_projector_on_a_mixture_and_keeps_the_history(aligned, tmp_path):
    _, align_result, _, _ = aligned
    data = ("[{task: conversation, data: shapes, num: 8, weight: 2}, {task: draw, data: shapes, num: 8, context: 1}, "
            "{task: t2i, data: shapes, num: 8}]")
    _, result, losses = run_stage("unified-sft", tmp_path / "sft", f"init={align_result.final_dir}",
                                      "lr=3e-3", "reinit_codes=true", "caption_dropout=0.2", data=data)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    start = UnifiedModel.from_pretrained(align_result.final_dir)
    final = UnifiedModel.from_pretrained(result.final_dir)
    assert changed(weights(start, "llm"), weights(final, "llm"))
    assert changed(weights(start, "projector"), weights(final, "projector"))
    assert not changed(weights(start, "vqrae"), weights(final, "vqrae"))
    assert [h["stage"] for h in final.training_history] == ["unified-align", "unified-sft"]
    assert final.training_history[-1]["tasks"] == ["conversation", "draw", "t2i"]
    records = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("image_loss", 0) > 0 for r in records) and any(r.get("text_loss", 0) > 0 for r in records)
    # every source got cached values: codes for drawing sources, features for conversations
    cache = tmp_path / "cache"
    assert list(cache.glob("codes-*")) and list(cache.glob("features-*"))


def test_gen_trains_on_image_tokens_only(aligned, tmp_path):
    _, align_result, _, _ = aligned
    stage, result, losses = run_stage("unified-gen", tmp_path / "gen", f"init={align_result.final_dir}",
                                      "lr=3e-3", "gradient_checkpointing=true", "attn_implementation=sdpa",
                                      data="[{task: t2i, data: shapes, num: 8}]")
    assert stage.model.llm.is_gradient_checkpointing  # the switch reached the LLM (activations recomputed)
    assert stage.model.llm.config._attn_implementation == "sdpa"
    assert stage.config.text_weight == 0 and stage.config.caption_dropout == pytest.approx(0.1)
    assert stage.config.adam_eps == pytest.approx(1e-15) and stage.config.schedule == "constant"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    start = UnifiedModel.from_pretrained(align_result.final_dir)
    final = UnifiedModel.from_pretrained(result.final_dir)
    assert not changed(weights(start, "projector"), weights(final, "projector"))
    assert changed(weights(start, "llm"), weights(final, "llm"))


def test_lora_sft_trains_adapters_and_new_rows_and_merges_to_a_plain_folder(aligned, tmp_path):
    from vqrae.unified_model.lora import load_lora, merge_lora

    _, align_result, _, _ = aligned
    _, result, losses = run_stage("unified-sft", tmp_path / "lora", f"init={align_result.final_dir}",
                                      "lr=1e-2", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0",
                                      data="[{task: t2i, data: shapes, num: 8}]")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    merged = merge_lora(load_lora(result.final_dir))
    start = UnifiedModel.from_pretrained(align_result.final_dir)
    emb0, emb1 = (m.llm.get_input_embeddings().weight for m in (start, merged))
    lo = start.config.code_offset
    assert torch.equal(emb0[: start.config.image_token_id], emb1[: start.config.image_token_id])  # text rows
    assert not torch.equal(emb0[lo:], emb1[lo:])  # code rows trained
    assert changed(weights(start, "llm"), weights(merged, "llm"))  # adapters merged into the base weights


def test_bad_configs_fail_with_one_line(parts, tmp_path):
    cls = get_stage("unified-sft")
    for overrides, match in [
        ([f"llm={parts / 'llm'}", f"init={parts}"], "exactly one"),
        ([f"llm={parts / 'llm'}"], "vqrae"),
        ([f"init={parts}", "data=[{task: sing, data: shapes, num: 4}]"], "task"),
        ([f"init={parts}", "data=[{task: t2i, data: shapes}]"], "num must be > 0"),
        ([f"init={parts}", "data=[{task: t2i, data: shapes, num: 4, colour: red}]"], "unknown data source key"),
        ([f"init={parts}", "data=[{task: t2i, data: shapes, num: 4}]", "lora.r=-1"], "r"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_config(cls.config_class, None, [f"output_dir={tmp_path}", *overrides])


def test_caption_dropout_rate_is_per_sample_and_the_same_in_every_worker():
    um = tiny_unified_model(seed=0)
    a, b = UnifiedCollator(um.processor, caption_dropout=0.25, seed=3), UnifiedCollator(um.processor,
                                                                                     caption_dropout=0.25, seed=3)
    drops = [a.drops_caption({"sample_id": i}) for i in range(4000)]
    assert 0.22 < sum(drops) / len(drops) < 0.28
    # another copy (a DataLoader worker, a resumed run) decides the same for the same samples, in any order
    assert [b.drops_caption({"sample_id": i}) for i in reversed(range(4000))] == drops[::-1]
    # and a dropped record is trained on the sampler's unconditional prompt
    i = drops.index(True)
    rec = {"caption": "a red circle", "codes": list(range(um.config.num_image_tokens)), "sample_id": i}
    ids = a([rec])["input_ids"][0].tolist()
    assert ids[: len(um.processor.t2i_prompt_ids("", uncond=True))] == um.processor.t2i_prompt_ids("", uncond=True)


def test_loss_is_the_mean_over_all_targets_whatever_the_micro_batches():
    """Two micro-batches of very different target counts, scaled as the engine scales them, give the loss (and so
    the gradient) of one batch holding both: a 3-token answer does not weigh as much as 16 image codes."""
    um = tiny_unified_model(seed=0)
    coll = UnifiedCollator(um.processor)
    short = coll([{"messages": [{"role": "user", "content": "how many shapes are there?"},
                                {"role": "assistant", "content": "two"}]}])
    long = coll([{"caption": "a red circle", "codes": list(range(16))}])
    both = coll([short_rec for short_rec in [
        {"messages": [{"role": "user", "content": "how many shapes are there?"},
                      {"role": "assistant", "content": "two"}]},
        {"caption": "a red circle", "codes": list(range(16))}]])
    kw = {"text_weight": 1.0, "image_weight": 0.5}
    counts = [weighted_count(b["labels"], um.config.code_range, **kw) for b in (short, long)]
    total = sum(counts)
    with torch.no_grad():
        parts = [float(um(**{k: v for k, v in b.items() if k != "skipped"}, **kw).loss) for b in (short, long)]
        joint = float(um(**{k: v for k, v in both.items() if k != "skipped"}, **kw).loss)
    # the engine scales micro-batch i by n_i * grad_accum / N and the backend averages over grad_accum
    assert sum(p * n / total for p, n in zip(parts, counts)) == pytest.approx(joint, rel=1e-5)
    assert sum(parts) / 2 != pytest.approx(joint, rel=1e-3)  # the plain mean of means is wrong here


def test_token_loss_scores_codes_against_code_rows_only():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn(1, 5, 8)
    labels = torch.tensor([[-100, 3, 15, 16, -100]])  # text 3, codes 15 and 16 (code range [12, 20))
    out = token_loss(hidden, labels, head, (12, 20))
    logits = head(hidden[0, :-1])
    ce_text = torch.nn.functional.cross_entropy(logits[0:1, :12], torch.tensor([3]))
    ce_codes = torch.nn.functional.cross_entropy(logits[1:3, 12:], torch.tensor([3, 4]), reduction="sum")
    assert float(out.loss) == pytest.approx(float((ce_text + ce_codes) / 3), rel=1e-5)
    assert out.text_tokens == 1 and out.image_tokens == 2
    # a non-Linear head (ZeRO-3, peft wrappers) is called whole and sliced: the same numbers
    wrapped = torch.nn.Sequential(head)
    assert float(token_loss(hidden, labels, wrapped, (12, 20)).loss) == pytest.approx(float(out.loss), rel=1e-6)


def test_export_init_unified_writes_the_folder_the_stages_start_from(parts, tmp_path, capsys):
    from vqrae.cli import main

    out = tmp_path / "init"
    torch.manual_seed(0)  # the projector's initial weights (and so the code rows) are random
    assert main(["export", "init-unified", "--llm", str(parts / "llm"), "--vqrae", str(parts / "vqrae"),
                 "--out", str(out), "--dtype", "float32"]) == 0
    assert "init=" in capsys.readouterr().out
    torch.manual_seed(0)
    built = UnifiedModel.from_llm(str(parts / "llm"), str(parts / "vqrae"), dtype=torch.float32)
    loaded = UnifiedModel.from_pretrained(out)
    for part in ("llm", "projector", "vqrae"):
        assert not changed(weights(built, part), weights(loaded, part))
    _, result, _ = run_stage("unified-align", tmp_path / "align", f"init={out}", "max_steps=2")
    assert UnifiedModel.from_pretrained(result.final_dir).training_history[0]["stage"] == "unified-align"
    # a second export over it is refused (one line, exit 2)
    assert main(["export", "init-unified", "--llm", str(parts / "llm"), "--vqrae", str(parts / "vqrae"),
                 "--out", str(out)]) == 2


def test_ablate_understanding_input_runs_both_arms_and_writes_a_table(parts, tmp_path, capsys):
    from vqrae.cli import main

    out = tmp_path / "ablate"
    common = ["batch_size=4", "max_steps=2", "val_num=0", "save_every=0", "max_length=256", "warmup_steps=0",
              "data=[{task: describe, data: shapes, num: 8}]", "align:data=[{task: describe, data: shapes, num: 8}]",
              "sft:data=[{task: conversation, data: shapes, num: 8}]"]
    assert main(["ablate", "understanding-input", "--llm", str(parts / "llm"), "--vqrae", str(parts / "vqrae"),
                 "--out", str(out), "--vqa-images", "2", *common]) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [r["image input"] for r in rows] == ["features", "codes"]
    assert all(0.0 <= r["overall_acc"] <= 1.0 and r["questions"] > 0 for r in rows)
    assert UnifiedModel.from_pretrained(out / "codes" / "sft" / "final").config.image_input == "codes"
    assert UnifiedModel.from_pretrained(out / "features" / "sft" / "final").config.image_input == "features"
    assert "| codes |" in capsys.readouterr().out


def test_chat_demo_runs_the_scripted_conversation_and_checks_it(aligned, tmp_path, capsys):
    from vqrae.cli import main

    _, result, _, _ = aligned
    assert main(["chat", "--model", str(result.final_dir), "--demo", "--out-dir", str(tmp_path / "demo")]) == 0
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [t["kind"] for t in demo["turns"]] == ["count", "color", "shape", "draw", "drawing color"] or \
        [t["kind"] for t in demo["turns"]][:4] == ["count", "color", "shape", "draw"]
    assert all(isinstance(t["correct"], bool) for t in demo["turns"])
    assert demo["answers_correct"] == sum(t["correct"] for t in demo["turns"][:3])
    # what the model said is checked against the ground truth, not taken on trust
    for t in demo["turns"][:3]:
        from vqrae.eval.lmms.shapes_vqa import is_correct

        assert t["correct"] == is_correct(t["kind"], t["truth"], t["answer"])
    assert "Scripted chat" in (tmp_path / "demo" / "transcript.md").read_text()
    assert "/3 answers right" in capsys.readouterr().out


def test_conversation_turns_are_subsampled_with_the_image_kept_first():
    from vqrae.data.mixture import SourceSpec, keep_turns, open_source

    full = open_source(SourceSpec(task="conversation", data="shapes", num=4), image_size=32)
    short = open_source(SourceSpec(task="conversation", data="shapes", num=4, turns=2), image_size=32)
    for i in range(4):
        a, b = full[i]["conversations"], short[i]["conversations"]
        assert len(b) == 4 and [t["from"] for t in b] == ["human", "gpt", "human", "gpt"]
        assert b[0]["value"].startswith("<image>\n") and "<image>" not in b[2]["value"]
        # the kept pairs are pairs of the full conversation, starting at pair i
        questions = [t["value"].replace("<image>\n", "") for t in a[::2]]
        assert b[0]["value"].replace("<image>\n", "") == questions[i % len(questions)]
        assert b[1]["value"] == a[2 * (i % len(questions)) + 1]["value"]
    assert keep_turns(full[0]["conversations"], 99, 0) == full[0]["conversations"]


def test_draw_records_can_follow_a_conversation_about_an_image():
    """In a chat the drawing request comes after questions about an image: half the draw records (context=2) are
    that conversation, the image read as features, then the request answered with <boi> codes <eoi>."""
    from vqrae.data.mixture import SourceSpec, open_source

    um = tiny_unified_model(seed=0)
    coll = UnifiedCollator(um.processor)
    ds = open_source(SourceSpec(task="draw", data="shapes", num=4, context=2), image_size=32)
    with_context, without = ds[0], ds[1]
    assert len(with_context["context"]) == 4 and "context" not in without
    c = um.config
    for item, images in ((with_context, 1), (without, 0)):
        rec = dict(item, codes=list(range(c.num_image_tokens)))
        ids, labels, imgs, gen = coll.encode_record(rec)
        assert len(imgs) == images and not gen
        assert ids.count(c.image_token_id) == images * c.num_image_features
        boi = ids.index(c.boi_token_id)
        assert labels[boi] == c.boi_token_id  # the model learns to open the image itself
        assert ids[boi + 1 : boi + 1 + c.num_image_tokens] == [c.code_offset + k for k in range(c.num_image_tokens)]
        assert all(ids.index(c.image_token_id) < boi for _ in range(images))
    batch = coll([dict(with_context, codes=list(range(c.num_image_tokens)))])
    assert batch["pixel_values"].shape[0] == 1 and "gen_pixel_values" not in batch


def test_bench_cache_times_both_arms_and_writes_the_ratio(aligned, tmp_path, capsys):
    from vqrae.cli import main

    _, result, _, _ = aligned
    out = tmp_path / "cache.json"
    assert main(["bench", "cache", "--model", str(result.final_dir), "--task", "t2i", "--batch-size", "2",
                 "--rounds", "2", "--num", "8", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["step_s"]["cached"] > 0 and r["step_s"]["recomputed"] > 0 and r["speedup"] > 0
    assert list((tmp_path / "c").glob("codes-*"))  # the cached arm really read a cache
    assert "with the cache" in capsys.readouterr().out


def test_describe_source_can_answer_with_the_fullest_caption():
    """`caption: fullest` answers a describe record with the item's longest caption (every object's colour, shape
    and place), `primary` with its first; a bad value is a one-line error naming the source."""
    from vqrae.data.mixture import SourceSpec, open_source

    primary = open_source(SourceSpec(task="describe", data="shapes", num=6), image_size=32)
    fullest = open_source(SourceSpec(task="describe", data="shapes", num=6, caption="fullest"), image_size=32)
    longer = 0
    for i in range(6):
        caps = primary[i]["record"]["captions"]
        assert primary[i]["caption"] == caps[0] and fullest[i]["caption"] == max(caps, key=len)
        assert all(o["color"] in fullest[i]["caption"] for o in fullest[i]["record"]["objects"])
        longer += len(fullest[i]["caption"]) > len(primary[i]["caption"])
    assert longer > 0
    with pytest.raises(ValueError, match="shapes:describe: caption must be"):
        SourceSpec(task="describe", data="shapes", num=6, caption="longest")
