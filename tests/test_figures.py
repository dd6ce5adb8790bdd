"""The figure scripts (scripts/figures) redraw every committed figure of results/ from the committed CSVs, byte for
byte, in one paper style: whole-layer ticks, colour-blind-safe colours and markers distinct per series, colour-blind-
safe colormaps (signed values centred at 0), every axis labelled, text readable at a paper's width, the Pareto
front and each method's best setting labelled; a CSV without a column is refused, naming the file and the column."""

from __future__ import annotations

import re
import shutil
import sys
from importlib import import_module
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import CenteredNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # scripts/ is no installed package

from probes.plots import alignment_per_layer, neurons_per_layer  # noqa: E402
from probes.plots.style import DIVERGING, PALETTE, SEQUENTIAL, TEXT_WIDTH  # noqa: E402
from scripts.figures import SCRIPTS  # noqa: E402
from scripts.figures.files import FORMATS, RESULTS, main, write  # noqa: E402
from steer.summary import KEY_WIDTH, pareto, setting_summary, short_labels  # noqa: E402

COLOURS = {colour.lower() for colour in PALETTE}


@pytest.fixture(scope="module")
def scripts() -> dict[str, dict[str, Figure]]:
    """script -> {figure path without suffix: Figure}, drawn from the committed CSVs."""
    return {name: import_module(f"scripts.figures.{name}").draw(RESULTS) for name in SCRIPTS}


@pytest.fixture(scope="module")
def written(scripts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    for figures in scripts.values():
        write(figures, out)
    return out


@pytest.fixture(scope="module")
def drawn(scripts, written) -> dict[str, Figure]:
    """'<script>: <figure>' -> the Figure, laid out as when it was saved."""
    return {f"{name}: {stem}": figure for name, figures in scripts.items() for stem, figure in figures.items()}


def figure_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.suffix in FORMATS)


def panels(figure: Figure) -> list:
    return [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def check_axes(name: str, figure: Figure) -> None:
    """Every axis showing tick labels is labelled; a layer axis ticks whole layers only; colour bars are labelled."""
    for ax in panels(figure):
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            low, high = sorted(axis.get_view_interval())
            ticks = {tick.get_loc(): tick.label1 for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high}
            shown = [text.get_text() for text in ticks.values() if text.get_visible() and text.get_text()]
            assert label.strip() or not shown, f"{name}: an axis with tick labels {shown} has no label"
            if label.startswith("layer"):
                assert ticks and all(float(loc).is_integer() for loc in ticks), f"{name}: layer ticks {list(ticks)}"
                assert shown and all(re.fullmatch(r"\d+", text) for text in shown), f"{name}: layer labels {shown}"
    for bar in (ax for ax in figure.axes if ax.get_label() == "<colorbar>"):
        assert (bar.get_ylabel() or bar.get_xlabel()).strip(), f"{name}: a colour bar has no label"


def series(ax) -> list[tuple[str, str, str]]:
    """(label, colour, marker or linestyle) of every labelled line and scatter of ``ax``."""
    found = [
        (line.get_label(), to_hex(line.get_color()), f"{line.get_marker()}{line.get_linestyle()}")
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    ]
    found += [
        (points.get_label(), to_hex(points.get_facecolor()[0]), points.get_paths()[0].vertices.round(3).tobytes())
        for points in ax.collections
        if not points.get_label().startswith("_")
    ]
    return found


def test_every_committed_figure_is_drawn_by_a_script_and_every_drawn_one_is_committed(written):
    assert figure_files(written) == figure_files(RESULTS)
    assert {Path(name).suffix for name in figure_files(RESULTS)} == set(FORMATS)


def test_the_scripts_reproduce_the_committed_figures_byte_for_byte(written):
    for name in figure_files(written):
        assert (written / name).read_bytes() == (RESULTS / name).read_bytes(), f"results/{name}: run make figures"


def test_every_script_is_run_by_make_figures_and_by_the_runner():
    folder = ROOT / "scripts" / "figures"
    assert {path.stem for path in folder.glob("*.py") if "\ndef draw(" in path.read_text()} == set(SCRIPTS)
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^figures:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert recipe.split() == [word for name in SCRIPTS for word in ("$(BIN)/python", "-m", f"scripts.figures.{name}")]
    assert "figures" in re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()


def test_every_figure_has_labelled_axes_whole_layer_ticks_and_readable_text(drawn):
    for name, figure in drawn.items():
        check_axes(name, figure)
        assert figure.get_figwidth() <= TEXT_WIDTH, f"{name}: wider than a page's text ({figure.get_figwidth()} in)"
        sizes = [text.get_fontsize() for text in figure.findobj(Text) if text.get_visible() and text.get_text()]
        assert min(sizes) >= 5, f"{name}: text of {min(sizes)} pt"
    assert any(ax.get_xlabel().startswith("layer") for figure in drawn.values() for ax in figure.axes)


def test_every_series_has_a_palette_colour_and_a_style_no_other_series_of_its_panel_has(drawn):
    checked = 0
    for name, figure in drawn.items():
        for ax in panels(figure):
            found = series(ax)
            assert {colour for _, colour, _ in found} <= COLOURS, f"{name}: colours outside the palette"
            assert len({(colour, style) for _, colour, style in found}) == len(found), f"{name}: two series look alike"
            checked += len(found)
    assert checked > 20


def test_more_series_than_colours_stay_apart_by_marker_or_hatch():
    languages = [f"l{i:02d}" for i in range(14)]
    table = pd.DataFrame(
        [(layer, lang, "mexa", 0.1 * layer) for layer in range(7) for lang in languages],
        columns=["layer", "language", "metric", "value"],
    )
    figure = alignment_per_layer(table)
    lines = series(figure.axes[0])
    assert len(lines) == 14 and len({(colour, style) for _, colour, style in lines}) == 14
    counts = pd.DataFrame(
        [(layer, lang, 3) for layer in range(1, 7) for lang in languages[:10]],
        columns=["layer", "language", "n_neurons"],
    )
    figure = neurons_per_layer(counts)
    bars = {(to_hex(bar.patches[0].get_facecolor()), bar.patches[0].get_hatch()) for bar in figure.axes[0].containers}
    assert len(bars) == 10 and {colour for colour, _ in bars} == COLOURS
    for name, each in (("alignment_per_layer", alignment_per_layer(table)), ("neurons_per_layer", figure)):
        each.draw_without_rendering()
        check_axes(name, each)


def test_heatmaps_use_colour_blind_safe_colormaps_and_centre_signed_values_at_zero(drawn):
    kinds = set()
    for name, figure in drawn.items():
        for image in (image for ax in figure.axes for image in ax.get_images()):
            kind = image.get_cmap().name
            assert kind in (SEQUENTIAL, DIVERGING), f"{name}: colormap {kind}"
            if kind == SEQUENTIAL:
                assert image.get_array().min() >= 0 and image.norm.vmin == 0, f"{name}: a signed sequential map"
            else:
                assert isinstance(image.norm, CenteredNorm) and image.norm.vcenter == 0, f"{name}: not centred at 0"
            kinds.add(kind)
    assert kinds == {SEQUENTIAL, DIVERGING}


def test_the_pareto_plot_labels_the_front_and_each_methods_best_setting(drawn):
    (ax,) = panels(drawn["steering_pareto: steering_ntrex/pareto"])
    summary = setting_summary(pd.read_csv(RESULTS / "steering_ntrex" / "evaluation.csv"))
    summary = summary.assign(cost=100 * summary["cost"], label=short_labels(summary))
    points = list(summary.itertuples())
    front = [
        p
        for p in points
        if not any(q.cost <= p.cost and q.gain >= p.gain and (q.cost, q.gain) != (p.cost, p.gain) for q in points)
    ]
    best = [p for p in points if p.gain == summary[summary["method"] == p.method]["gain"].max()]
    notes = {int(number): note.xy for note in ax.texts for number in note.get_text().split(",")}
    texts = [text.get_text() for text in ax.figure.legends[0].get_texts()]
    entries = [re.fullmatch(r"(\d+)  (.+)", text, re.DOTALL).groups() for text in texts]
    key = {" ".join(label.split()): number for number, label in entries}
    wanted = {p.label: (p.cost, p.gain) for p in front + best}
    assert len(front) >= 3 and set(key) == set(wanted) and len(set(summary["label"])) == len(summary)
    assert sorted(notes) == list(range(1, len(wanted) + 1)) and sorted(map(int, key.values())) == sorted(notes)
    for label, xy in wanted.items():
        assert notes[int(key[label])] == pytest.approx(xy), label
    assert all(len(line) <= KEY_WIDTH for text in texts for line in text.split("\n")), "the key fits its column"


def test_pareto_points_on_one_spot_share_one_note_and_the_key_names_each():
    rows = []
    for method, gain, cost in (("a", 0.1, 0.5), ("b", 0.1, 0.5), ("c", 0.1, 0.5), ("d", 0.3, 2.0)):
        rows += [
            (method, "only", "deu", 5, "mexa_mean_after", 0.2, 0.2 + gain, gain),
            (method, "only", "deu", 5, "loss_target", 4.0, 4.0 * (1 + cost), 4.0 * cost),
        ]
    evaluation = pd.DataFrame(rows, columns=["method", "setting", "language", "layer", "metric", "off", "on", "delta"])
    (ax,) = panels(pareto(evaluation))
    assert sorted(note.get_text() for note in ax.texts) == ["1,2,3", "4"]
    (key,) = ax.figure.legends
    assert [text.get_text() for text in key.get_texts()] == ["1  a", "2  b", "3  c", "4  d"]


@pytest.mark.parametrize(
    "script, csv, column",
    [
        ("steering_before_after", "steering_ntrex/evaluation.csv", "on"),
        ("steering_pareto", "steering_ntrex/evaluation.csv", "delta"),
        ("bf16_alignment", "bf16_alignment.csv", "difference"),
        ("lape_ablation", "lape_ablation_paper8.csv", "loss_after"),
        ("moe_routing", "moe_routing/loss.csv", "loss"),
    ],
)
def test_a_csv_without_a_column_is_refused_naming_the_file_and_the_column(tmp_path, monkeypatch, script, csv, column):
    shutil.copytree(RESULTS, tmp_path, ignore=shutil.ignore_patterns("*.png", "*.pdf", "*.md"), dirs_exist_ok=True)
    pd.read_csv(tmp_path / csv).drop(columns=column).to_csv(tmp_path / csv, index=False)
    monkeypatch.setattr(sys, "argv", [script, "--results", str(tmp_path)])
    with pytest.raises(SystemExit) as refused:
        main([import_module(f"scripts.figures.{script}").draw], "")
    assert f"{tmp_path / csv}: missing column '{column}'" in str(refused.value.code)
    assert figure_files(tmp_path) == [], "nothing is drawn from a bad table"
