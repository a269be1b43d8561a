"""Progress on stderr: a tqdm bar on a terminal; otherwise (a redirected log, CI) one line per
``EVERY`` of the work, so logs stay short. One helper for every progress report mal prints: labeling,
training (a Lightning callback) and phase 2's evaluation."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

EVERY = 0.1  # without a terminal: a line per 10% of the work


def _on_terminal() -> bool:
    return sys.stderr.isatty()


class LineProgress:
    """The part of tqdm's interface mal uses (``update``, ``write``, ``close``), printing a line
    ``desc: 40% (400/1000 box) in 12 s`` each time another ``EVERY`` of ``total`` is done."""

    def __init__(self, total: int, *, desc: str, unit: str, initial: int = 0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._t0 = time.monotonic()
        self._next, self._finished = self._step_after(initial), False

    def _step_after(self, n: int) -> int:
        """The count at which the next line is due (the next multiple of EVERY * total above n)."""
        chunk = max(1, round(self.total * EVERY))
        return (n // chunk + 1) * chunk

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more units done; ``note`` (e.g. the loss) ends the line if one is printed."""
        self.n += n
        if self.total and self.n >= min(self._next, self.total) and not self._finished:
            self._next, self._finished = self._step_after(self.n), self.n >= self.total
            self.write(f"{self.desc}: {100 * self.n / self.total:3.0f}% ({self.n}/{self.total} {self.unit}) "
                       f"in {time.monotonic() - self._t0:.0f} s{note}")

    @staticmethod
    def write(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Bar(tqdm):
    """A tqdm bar that, while open, routes log records (e.g. a skipped image) above itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()

    def close(self) -> None:
        super().close()
        if self._redirect is not None:
            self._redirect, redirect = None, self._redirect
            redirect.__exit__(None, None, None)


def progress(total: int, *, desc: str, unit: str, initial: int = 0, enabled: bool = True):
    """A progress reporter over ``total`` units: tqdm on a terminal, :class:`LineProgress` otherwise,
    a silent tqdm when not ``enabled``. Log records appear above the bar while it is open."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if not _on_terminal():
        return LineProgress(total, desc=desc, unit=unit, initial=initial)
    return _Bar(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)


def lightning_progress():
    """The Lightning callback for training progress: its tqdm bar on a terminal, else one line per
    ``EVERY`` of the run's steps (with the loss)."""
    import lightning as L

    if _on_terminal():
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        class _Bar(L.pytorch.callbacks.TQDMProgressBar):
            def init_train_tqdm(self) -> Tqdm:  # Lightning's documented hook; its own bar goes to stdout
                return Tqdm(desc=self.train_description, position=2 * self.process_position,
                            disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stderr,
                            smoothing=0, bar_format=self.BAR_FORMAT)

        return _Bar()

    class _Lines(L.pytorch.callbacks.ProgressBar):
        def __init__(self):
            super().__init__()
            self._enabled, self._lines = True, None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer, pl_module) -> None:
            if self._enabled and trainer.is_global_zero:
                self._lines = LineProgress(int(trainer.estimated_stepping_batches), desc="training",
                                           unit="steps", initial=trainer.global_step)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._lines is not None:
                loss = trainer.callback_metrics.get("loss")
                self._lines.update(trainer.global_step - self._lines.n,
                                   f", loss {float(loss):.3f}" if loss is not None else "")

    return _Lines()
