"""lmms-eval hooks of the ShapesWorld VQA task; the scoring itself lives in `vqrae.eval.lmms.shapes_vqa`."""

from vqrae.eval.lmms import shapes_vqa as _vqa


def process_docs(dataset):
    return _vqa.flatten_vqa(dataset)


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return _vqa.doc_to_text(doc, lmms_eval_specific_kwargs)


def process_results(doc, results):
    record = _vqa.score_record(doc, results[0])
    return {metric: record for metric in _vqa.METRICS}


def overall_acc(records):
    return _vqa.aggregate(records, "overall_acc")


def count_acc(records):
    return _vqa.aggregate(records, "count_acc")


def color_acc(records):
    return _vqa.aggregate(records, "color_acc")


def shape_acc(records):
    return _vqa.aggregate(records, "shape_acc")


def exist_acc(records):
    return _vqa.aggregate(records, "exist_acc")


def exist_precision(records):
    return _vqa.aggregate(records, "exist_precision")


def exist_recall(records):
    return _vqa.aggregate(records, "exist_recall")


def exist_f1(records):
    return _vqa.aggregate(records, "exist_f1")


def exist_yes_ratio(records):
    return _vqa.aggregate(records, "exist_yes_ratio")


def position_acc(records):
    return _vqa.aggregate(records, "position_acc")


def mc_acc(records):
    return _vqa.aggregate(records, "mc_acc")
