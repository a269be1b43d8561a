"""Progress on stderr: a bar on a terminal, a line per 10% of the work otherwise."""
import logging

from mal import progress


def test_without_a_terminal_a_line_per_tenth(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_on_terminal", lambda: False)
    bar = progress.progress(37, desc="labeling", unit="box")
    for _ in range(37):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("labeling:  11% (4/37 box)")
    assert lines[-1].startswith("labeling: 100% (37/37 box)")
    resumed = progress.progress(10, desc="x", unit="img", initial=7)  # a resumed job starts part-way
    resumed.update(3)
    assert capsys.readouterr().err.splitlines() == ["x: 100% (10/10 img) in 0 s"]


def test_on_a_terminal_log_lines_go_above_the_bar(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_on_terminal", lambda: True)
    root = logging.getLogger()
    handler = logging.StreamHandler()  # the CLI's handler: stderr, as it is when the bar starts
    root.addHandler(handler)
    try:
        bar = progress.progress(4, desc="labeling", unit="box")
        bar.update(1)
        logging.getLogger("mal").warning("skipping image: a.png")
        bar.update(3)
        bar.close()
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    line = next(l for l in err.replace("\r", "\n").splitlines() if "skipping image" in l)
    assert line == "skipping image: a.png"  # a line of its own, not written into the bar


def test_disabled_prints_nothing(capsys):
    bar = progress.progress(5, desc="x", unit="img", enabled=False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""


def test_lightning_log_lines_are_printed_once(capfd, monkeypatch):
    """The CLI's root handler and the ``lightning`` package's own one both saw each record."""
    import lightning  # noqa: F401  (its handler)

    from mal.runtime import quiet_lightning
    root = logging.getLogger()
    handler = logging.StreamHandler()
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)  # as under the CLI
    monkeypatch.setattr(logging.getLogger("lightning"), "handlers", list(logging.getLogger("lightning").handlers))
    root.addHandler(handler)
    try:
        quiet_lightning()
        logging.getLogger("lightning.pytorch").info("GPU available: False")
    finally:
        root.removeHandler(handler)
    assert capfd.readouterr().err.count("GPU available: False") == 1
