"""Long jobs show progress in their log: a tqdm bar (count, rate, ETA) and one log line per epoch
or shard, never a log line inside a bar."""

from __future__ import annotations

import logging
import re
import sys

import numpy as np

from conftest import SCHEDULER, TINY_UNET, train_ddpm


def test_training_logs_one_line_per_epoch_and_a_bar(tmp_path, monkeypatch):
    log_file = tmp_path / "job.log"
    stream = open(log_file, "w")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    monkeypatch.setattr(sys, "stderr", stream)  # what diffattr.jobs.job does inside a workflow job
    try:
        images = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
        cfg = {"steps": 12, "batch_size": 8, "lr": 1e-3, "checkpoint_fractions": [1.0], "resume_every": 6, "log_every": 6}
        train_ddpm(images, TINY_UNET, SCHEDULER, cfg, 0, [str(tmp_path / "m.safetensors")], str(tmp_path / "log.csv"),
              str(tmp_path / "resume"))
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        stream.close()
    text = log_file.read_text()
    # 12 steps × 8 images / 20 images: epochs end after steps 3, 5, 8, 10; the fifth, partial, with the run
    epochs = re.findall(r"epoch (\d+)/(\d+) \(step (\d+)/12\)", text)
    assert [(int(e), int(n), int(s)) for e, n, s in epochs] == [(1, 5, 3), (2, 5, 5), (3, 5, 8), (4, 5, 10), (5, 5, 12)]
    assert re.search(r"train: 100%\|#+\| 12/12 \[[0-9:]+<00:00, +[0-9.]+(step/s|s/step)\]", text)  # count, ETA, rate
    for line in text.splitlines():  # every log line starts a line of its own
        assert "INFO" not in line or line.lstrip("\r").startswith("INFO")
