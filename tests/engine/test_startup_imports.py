"""What a training run imports before its first step: the slow optional packages (TensorBoard, scipy, matplotlib)
are imported when first used (end of the first epoch, HD95 / volume resizing, progress.png), not at start-up."""

from __future__ import annotations

import subprocess
import sys


def test_training_entry_points_leave_slow_packages_unimported():
    code = (
        "import sys\n"
        "import mambaseg.cli.train, mambaseg.engine.trainer, mambaseg.engine.run_logger\n"
        "import mambaseg.metrics, mambaseg.data\n"
        "slow = ('tensorboard', 'scipy', 'matplotlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in slow}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"
