"""Probing spatial relations and hallucinations: closed-set scoring of a JSONL suite, metrics, JSON + HTML report.

    from cobra_app import load
    from cobra_app.probe import run_suite, write_report
    run = run_suite(load("assets/demo-model"), "assets/probes/spatial.jsonl")
    print(run.accuracies())                     # {"left of": 0.9, ..., "overall": 0.93}
    html_path = write_report(run, "runs/probe/spatial")  # report.html + results.json there

The suite format is documented in `cobra_app.probe.suite`; the scoring protocol in `cobra_app.probe.scoring`.
"""

from cobra_app.probe.metrics import BinaryMetrics, auc_roc, binary_metrics
from cobra_app.probe.report import render_html, write_json, write_report
from cobra_app.probe.runner import CaseResult, ProbeRun, compute_metrics, run_suite
from cobra_app.probe.scoring import (
    TRUE_FALSE_PROMPT,
    answer_probs,
    answers_for,
    closed_set_prompt,
    encode_image,
    predict,
    score_prompt,
)
from cobra_app.probe.suite import BadLine, ProbeCase, Suite, SuiteError, load_suite

__all__ = [
    "TRUE_FALSE_PROMPT", "BadLine", "BinaryMetrics", "CaseResult", "ProbeCase", "ProbeRun", "Suite", "SuiteError",
    "answer_probs", "answers_for", "auc_roc", "binary_metrics", "closed_set_prompt", "compute_metrics", "encode_image",
    "load_suite", "predict", "render_html", "run_suite", "score_prompt", "write_json", "write_report",
]
