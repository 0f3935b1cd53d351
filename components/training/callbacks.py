"""One Trainer callback for every memforge training stage: forwards numeric logs, times steps, spots divergence."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.errors import MemforgeError

OnLog = Callable[[dict[str, float], int], None]


@dataclass
class TrainingLog:
    """What the callback saw: every numeric log entry (with its step), step durations, non-finite steps."""

    entries: list[dict[str, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)

    def check_finite(
        self, training_loss: float, *, who: str, learning_rate_key: str, learning_rate: float, output_dir: str
    ) -> None:
        """Raise ``MemforgeError`` when a logged loss or gradient norm, or the run's mean loss, is not finite; the
        trained model is then not saved and ``output_dir`` stays as it was."""
        if not self.diverged and math.isfinite(training_loss):
            return
        where = f"at step {self.diverged[0]}" if self.diverged else "on average"
        raise MemforgeError(
            f"{who}: training diverged (loss or gradient norm not finite {where}); lower {learning_rate_key} (now "
            f"{learning_rate}) or check the data; {output_dir} was left as it was"
        )


def log_forwarder(on_log: OnLog | None, log: TrainingLog) -> Any:
    """A ``TrainerCallback`` recording into ``log`` and handing each numeric log to ``on_log(logs, step)``."""
    from transformers import TrainerCallback

    class ForwardLogs(TrainerCallback):
        started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            log.step_seconds.append(time.perf_counter() - self.started)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
            numeric = {
                key: float(value)
                for key, value in (logs or {}).items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
            if not numeric:
                return
            step = int(state.global_step)
            log.entries.append({"step": float(step), **numeric})
            if any(not math.isfinite(numeric[key]) for key in ("loss", "grad_norm") if key in numeric):
                log.diverged.append(step)
            if on_log is not None:
                on_log(numeric, step)

    return ForwardLogs()
