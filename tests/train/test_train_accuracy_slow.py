"""The embedded default reaches its documented accuracy: ResNet-20 on digits, 1500 steps, >= 97 % test accuracy."""
import json

import pytest

from rnlib.train.cli import main


@pytest.mark.slow
def test_resnet20_digits_reaches_97_percent(tmp_path):
    assert main(["--model", "resnet20", "--data", "digits", "--steps", "1500", "--devices", "1", "--quiet",
                 "--log-every", "100", "--out", str(tmp_path)]) == 0
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["steps"] == 1500
    assert final["test_accuracy"] >= 0.97, final
