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


def _aggregation(metric):
    def aggregate(records):
        return _vqa.aggregate(records, metric)

    aggregate.__name__ = aggregate.__qualname__ = metric
    return aggregate


# One aggregation function per metric, named as the yaml's `!function utils.<metric>` entries expect.
for _metric in _vqa.METRICS:
    globals()[_metric] = _aggregation(_metric)
