"""Runs one train stage from a JSON spec in a subprocess (the kill-and-resume test).

``python -m tests.stages.train_worker spec.json`` where the spec holds ``config`` (a
``TrainStageConfig`` dump), ``extract`` (a ``StageRef`` dump), ``work_root``, ``pause_after_epoch``
and ``pause``: seconds to sleep once that epoch's checkpoint is written, so that the test
can kill the process at a known point of the run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(spec_path: str) -> None:
    import torch

    # The same thread count as the test process: float sums must happen in the same order.
    torch.set_num_threads(1)
    import stages.train.stage as train_stage
    from stages.framework import StageRef, run_stage

    spec = json.loads(Path(spec_path).read_text())
    loop_train = train_stage.train

    def train_with_pause(*args: Any, **kwargs: Any) -> Any:
        def on_epoch(record: dict[str, Any]) -> None:
            if record["epoch"] == spec["pause_after_epoch"]:
                time.sleep(float(spec["pause"]))

        kwargs["on_epoch"] = on_epoch
        return loop_train(*args, **kwargs)

    train_stage.train = train_with_pause
    config = train_stage.TrainStageConfig.model_validate(spec["config"])
    extract = StageRef.model_validate(spec["extract"])
    run_stage(train_stage.STAGE, config, {"extract": extract}, Path(spec["work_root"]))


if __name__ == "__main__":
    main(sys.argv[1])
