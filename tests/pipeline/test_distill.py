"""Knowledge distillation: the teacher is another preset's train entry, planned, keyed and built with the student."""
import json

import pytest
import torch

from pipeline import config
from pipeline.config import ConfigError
from pipeline.graph import Plan
from pipeline.store import Store
from pipeline.train import distill_loss

from tests.conftest import TINY, entry


def student(tmp_path, name="student", **train):
    """configs/tiny.yaml with seed 1 and these train keys, as a preset file of its own."""
    lines = "".join(f"  {k}: {v}\n" for k, v in {"seed": 1, **train}.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.read_text() + lines)
    return config.load(path)


def test_distill_loss_is_a_kl_divergence_scaled_by_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert float(distill_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, t, 1.0)) > 0
    # the same softened distributions at twice the temperature: the term grows by T^2 alone
    assert float(distill_loss(2 * s, 2 * t, 2.0)) == pytest.approx(4 * float(distill_loss(s, t, 1.0)), rel=1e-5)


def test_the_teacher_enters_the_students_key(tmp_path):
    store = Store(tmp_path / "store")
    plain = Plan.make(student(tmp_path), store)
    taught = Plan.make(student(tmp_path, teacher=TINY), store)
    assert taught.keys["data"] == plain.keys["data"] and taught.keys["train"] != plain.keys["train"]
    assert taught.presets["train.teacher"].keys["train"] == Plan.make(config.load(TINY), store).keys["train"]
    # the distillation keys count only with a teacher: without one, every existing entry keeps its key
    assert Plan.make(student(tmp_path, distill_weight=0.9), store).keys == plain.keys
    assert Plan.make(student(tmp_path, teacher=TINY, distill_weight=0.9), store).keys["train"] != taught.keys["train"]
    # the teacher's content, not its file name, is what counts; it trains with the student's threads
    other = tmp_path / "other_teacher.yaml"
    other.write_text(TINY.read_text().replace("epochs: 2", "epochs: 3"))
    assert Plan.make(student(tmp_path, teacher=other), store).keys["train"] != taught.keys["train"]
    threaded = Plan.make(student(tmp_path, teacher=TINY, threads=1), store)
    assert threaded.presets["train.teacher"].cfg["train.threads"] == 1


def test_a_bad_teacher_is_named_before_any_work(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"train.teacher: .*nope.yaml: no such file \(allowed: a preset"):
        Plan.make(student(tmp_path, teacher=tmp_path / "nope.yaml"), store)
    (tmp_path / "broken.yaml").write_text("train: [epochs\n")
    with pytest.raises(ConfigError, match=r"train.teacher: .*broken.yaml: .*broken.yaml: line \d+: not valid YAML"):
        Plan.make(student(tmp_path, teacher=tmp_path / "broken.yaml"), store)
    with pytest.raises(ConfigError, match=r"train.teacher: .*differs in data.image_size 16 against 8"):
        Plan.make(student(tmp_path, teacher="configs/default.yaml"), store)
    loop = student(tmp_path, name="loop", teacher=tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match=r"train.teacher: .*loop.yaml: leads back to itself"):
        Plan.make(loop, store)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("summary.json"))


@pytest.mark.mnist
def test_a_student_trains_its_teacher_first_and_learns_from_it(tiny_pipeline, tmp_path):
    root = tmp_path / "store"
    cfg = student(tmp_path, teacher=TINY, distill_weight=0.9)
    plan = tiny_pipeline("train", cfg, root=root)
    teacher = plan.presets["train.teacher"]
    assert teacher.store.has("train", teacher.keys["train"])      # built on the way, under its own key
    summary = json.loads((entry(plan, "train") / "summary.json").read_text())
    assert summary["inputs"]["train.teacher"] == teacher.keys["train"]
    assert 0.3 < summary["test_accuracy_int"] <= 1.0
    plain = tiny_pipeline("train", student(tmp_path, name="plain"), root=root)
    a = torch.load(entry(plan, "train") / "model.pt")["model"]
    b = torch.load(entry(plain, "train") / "model.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)            # the teacher changed what it learned
