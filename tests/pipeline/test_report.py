"""Report stage: one tiny run through the real stages, its page checked as files and rendered in Chromium."""
import contextlib
import io
from types import SimpleNamespace
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from pipeline import report
from pipeline.graph import Plan


pytestmark = [pytest.mark.mnist, pytest.mark.riscv]  # the report shows the firmware and emulate stages


@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        plan = tiny_pipeline("report")
    link = plan.store.runs / plan.cfg.name / "report"
    return plan, link, printed.getvalue()


def summary(plan: Plan, stage: str) -> dict:
    return json.loads((plan.store.path(stage, plan.keys[stage]) / "summary.json").read_text())


class Links(HTMLParser):
    """Every src and href attribute of a page."""

    def __init__(self):
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href"):
                getattr(self, k).append(v)


def test_page_and_figures_are_local_files(tiny_run):
    plan, link, _ = tiny_run
    html = (link / "report.html").read_text()
    assert "://" not in html and "url(" not in html  # no network address anywhere, CSS included
    links = Links()
    links.feed(html)
    assert all(h.startswith("#") for h in links.href), links.href
    assert sorted(links.src) == sorted(summary(plan, "report")["figures"])
    assert {"training.png", "confusion.png", "misclassified.png", "weight_codes.png",
            "memory.png"} <= set(links.src)
    for src in links.src:
        assert "/" not in src and (link / src).is_file(), src
        with Image.open(link / src) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 200, (src, im.size)
            im.load()  # decodes every pixel: a truncated file fails here


def test_page_shows_the_run(tiny_run):
    plan, link, _ = tiny_run
    html = (link / "report.html").read_text()
    verify = summary(plan, "verify")
    acc = verify["accuracy"]["torch"]
    rep = summary(plan, "report")
    assert rep["test_accuracy_int"] == acc
    assert rep["misclassified"] == round((1 - acc) * verify["images"])
    assert f"{100 * acc:.2f}%" in html
    for stage in plan.upstream("report"):  # the key of every stage of this run, the report's own included
        assert f"<td class=\"text\">{stage}</td><td class=\"text\">{plan.keys[stage]}</td>" in html, stage
    assert "image_size: 8" in html and "widths: [16, 16]" in html and "formats: [4bitsym]" in html
    assert rep["chip_stages"] == ["firmware", "emulate"] and "cycles.mean" in html and "flash_used" in html


def test_code_entropy_of_the_export_matches_training(tiny_run):
    plan, _, _ = tiny_run
    from pipeline.stages.export import model
    usage = report.code_usage(model(plan.store.path("export", plan.keys["export"])))
    trained = summary(plan, "train")["entropy_bits"]
    for u in usage:
        assert sum(u["counts"]) == u["weights"] and 0 < u["entropy"] <= u["capacity"]
        assert u["entropy"] == pytest.approx(trained[u["name"]], abs=1e-9), u["name"]


def test_doit_prints_where_the_page_is(tiny_run, capsys):
    plan, link, printed = tiny_run
    line = f"[report] open {(link / 'report.html').absolute()}"
    assert printed.rstrip().endswith(line)
    assert plan.up_to_date("report")  # next time it is up to date, and still says where the page is
    assert capsys.readouterr().out.strip() == line


@pytest.mark.chromium
def test_page_renders_in_chromium(tiny_run, tmp_path):
    chromium = shutil.which("chromium")
    plan, link, _ = tiny_run
    page = (link / "report.html").absolute()  # through runs/tiny/: the page shows the config name
    r = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                        "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # uncaught errors, CSP violations and failed loads all log here
    n = len(summary(plan, "report")["figures"])
    assert f'data-state="ok">page loaded: all {n} figures shown</p>' in r.stdout, r.stdout[-2000:]
    assert 'id="config-name">tiny</div>' in r.stdout
    assert f"{100 * summary(plan, 'verify')['accuracy']['torch']:.2f}%" in r.stdout


def test_firmware_figures_shown_when_the_run_has_them(tiny_run, tmp_path):
    """The chip section and the store keys from given firmware and emulate summaries."""
    plan, _, _ = tiny_run
    fake = {"firmware": ("e" * 24, {"flash_used": 14321, "flash_limit": 16384, "ram_used": 987,
                                    "ram_limit": 2048}),
            "emulate": ("f" * 24, {"inputs": {"firmware": "e" * 24}, "images": 40,
                                   "instructions": {"mean": 123456, "min": 123400, "max": 123500},
                                   "cycles": {"mean": 234567}})}
    inputs = {n: plan.store.path(n, plan.keys[n]) for n in plan.stage("report").inputs}
    for name, (key, figures) in fake.items():
        inputs[name] = tmp_path / name / key
        inputs[name].mkdir(parents=True)
        (inputs[name] / "summary.json").write_text(json.dumps({"stage": name, "key": key, **figures}))
    chip = report.chip_figures(inputs)
    assert list(chip) == ["firmware", "emulate"]
    html = report.chip_section(chip)
    for text in ("instructions.mean", "123456", "cycles.mean", "234567", "flash_used", "14321"):
        assert text in html, text
    ctx = SimpleNamespace(stage=plan.stage("report"), key="a" * 24, inputs=inputs,
                          input_keys={n: p.name for n, p in inputs.items()})
    keys = report.store_keys(ctx)
    assert keys == {**{n: plan.keys[n] for n in plan.upstream("report")}, "firmware": "e" * 24, "emulate": "f" * 24,
                    "report": "a" * 24}
    assert list(keys)[-1] == "report"
    export = json.loads((inputs["export"] / "summary.json").read_text())
    _, files = report.memory_section(export, chip["firmware"], tmp_path)
    assert files == ["memory.png"] and (tmp_path / "memory.png").is_file()


def test_training_text_names_the_kept_epoch_when_it_is_not_the_last(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_acc": v, "lr": 1e-3,
                "clip": {"fc1": 1.0}, "entropy": {"fc1": 2.0}, "seconds": 1.0} for e, v in ((1, 0.5), (2, 0.9), (3, 0.7))]
    chosen, _ = report.training_section(history, tmp_path, kept=2)
    assert "best 90.00% after epoch 2; the model is epoch 2's, chosen on validation" in chosen
    assert "the model is epoch" not in report.training_section(history, tmp_path, kept=3)[0]


def test_memory_figure_cuts_a_streamed_layer_output_instead_of_collapsing(tmp_path):
    import warnings

    from pipeline import report_figures

    rows = [{"layer": "conv1", "kind": "conv", "format": "fp130", "weights": 576, "bits_per_weight": 4,
             "flash_bytes": 512, "activation_bytes": 12544},
            {"layer": "fc1", "kind": "fc", "format": "2bitsym", "weights": 16384, "bits_per_weight": 2,
             "flash_bytes": 4096, "activation_bytes": 64}]
    totals = {"flash_bytes": 5000, "peak_ram_bytes": 1094, "target": "ch32v003", "target_flash_bytes": 16384,
              "target_ram_bytes": 2048}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib's "constrained_layout not applied" for a bar far off the axis
        report_figures.memory_budget(rows, totals, {"ram_used": 1984}, tmp_path / "memory.png")
    html, _ = report.memory_section({**totals, "layers": rows}, {}, tmp_path)
    assert "a layer output marked streamed is larger than those buffers" in html
