"""The training report: report.png from metrics.jsonl."""

import json
import pathlib

import pytest

from byol_jax import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_metrics(workdir, records):
    with open(workdir / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def test_report_is_a_png(tmp_path):
    records = [
        {
            "step": step,
            "loss": 4.0 - step / 50,
            "learning_rate": 0.1 * step,
            "tau": 0.99 + step / 1e4,
            "probe_accuracy": step / 100,
            "projection_std": 0.08,
            **({"knn_accuracy": step / 120} if step % 20 == 0 else {}),
        }
        for step in range(10, 101, 10)
    ]
    records.append({"step": 100, "eval_probe_accuracy": 0.7})
    records.append({"step": 50, "loss": 3.0})  # a resumed run re-logging a step
    _write_metrics(tmp_path, records)
    path = report.write_report(str(tmp_path))
    assert path == str(tmp_path / "report.png")
    data = pathlib.Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000

    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    assert report._series(records, "loss")[1][4] == 3.0  # the later record of step 50 wins


def test_report_without_optional_metrics_and_empty_log(tmp_path):
    _write_metrics(tmp_path, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    path = pathlib.Path(report.write_report(str(tmp_path)))
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    _write_metrics(tmp_path, [{"step": 1, "images_per_sec": 3.0}])
    with pytest.raises(ValueError):
        report.write_report(str(tmp_path))
