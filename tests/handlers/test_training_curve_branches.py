"""TrainingCurvePlotter draws a prefixed metric (teacher_branch_accuracy) as a variant of the one it prefixes."""

import matplotlib

matplotlib.use("Agg")

from monai_rd.handlers import TrainingCurvePlotter  # noqa: E402


def test_prefixed_metric_is_drawn_dashed_in_its_base_metrics_colour(tmp_path, monkeypatch):
    """Catches the teacher branch's line hidden under the student's (same style) when the two coincide, or paired
    with the wrong metric (teacher_branch_accuracy is a variant of accuracy, not of auc)."""
    import matplotlib.axes

    plotter = TrainingCurvePlotter(str(tmp_path / "curve.png"))
    plotter.metrics = {"teacher_branch_accuracy": [0.2, 0.5], "accuracy": [0.2, 0.3], "auc": [0.5, 0.6]}
    plotter.metric_epochs = [1, 2]
    assert plotter._base_metric("teacher_branch_accuracy") == "accuracy" and plotter._base_metric("auc") is None
    drawn = {}
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        lines = original(self, *args, **kwargs)
        drawn[kwargs.get("label")] = lines[0]
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plotter.plot()
    assert (tmp_path / "curve.png").stat().st_size > 0
    branch, student = drawn["teacher_branch_accuracy"], drawn["accuracy"]
    assert branch.get_linestyle() == "--" and student.get_linestyle() == "-"
    assert branch.get_color() == student.get_color() != drawn["auc"].get_color()
