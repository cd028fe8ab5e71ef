from __future__ import annotations

import json
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from liverscan.core.config import Config
from liverscan.faces.cli import app

runner = CliRunner()


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from typer.testing import CliRunner; from liverscan.faces.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['prepare', '--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "liverscan", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "liverscan" in out.stdout


def test_config_prints_defaults_as_yaml():
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0
    assert yaml.safe_load(r.stdout) == Config().to_dict()
    r = runner.invoke(app, ["config", "--set", "train.epochs=5"])
    assert yaml.safe_load(r.stdout)["train"]["epochs"] == 5


def test_unknown_config_key_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["config", "--set", "train.nope=1"])
    assert r.exit_code == 1
    assert "unknown configuration key(s): train.nope" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: 3\n")
    r = runner.invoke(app, ["config", "--config", str(bad)])
    assert r.exit_code == 1 and "model.depth" in r.stderr


def test_prepare_cli_end_to_end(two_source_dataset, tmp_path):
    ds = two_source_dataset
    out = tmp_path / "prep"
    r = runner.invoke(
        app,
        ["prepare", f"A={ds['a']}", f"B={ds['csv']}", "--out", str(out), "--split-ratios", "60/20/20", "--seed", "3"],
    )
    assert r.exit_code == 0, r.output
    assert "Images per class and split" in r.stdout and "Class weights" in r.stdout
    assert "near-duplicates" in r.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["train_ratio"] == 60 and saved["data"]["seed"] == 3
    assert [s["name"] for s in saved["data"]["sources"]] == ["A", "B"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 79
    # rerun without --overwrite refuses, with it succeeds
    r = runner.invoke(app, ["prepare", str(ds["a"]), "--out", str(out)])
    assert r.exit_code == 1 and "--overwrite" in r.stderr
    r = runner.invoke(app, ["prepare", str(ds["a"]), "--out", str(out), "--overwrite", "-q"])
    assert r.exit_code == 0 and r.stdout == ""


def test_prepare_cli_unmapped_and_map_option(tmp_path):
    from conftest import noise_image

    root = tmp_path / "d"
    for i, cat in enumerate(("Normal", "Lesion")):
        (root / cat).mkdir(parents=True)
        for k in range(4):
            noise_image(100 * i + k).save(root / cat / f"{k}.png")
    r = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "unmapped source categories: 'Lesion'" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one message (may wrap)
    r = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o"), "--map", "lesion=tumor", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["classes"] == ["normal", "tumor"]


def test_prepare_cli_csv_columns(tmp_path):
    from conftest import noise_image

    (tmp_path / "x").mkdir()
    lines = ["img,dx,pid"]
    for k in range(8):
        noise_image(k).save(tmp_path / "x" / f"{k}.png")
        lines.append(f"x/{k}.png,{'normal' if k % 2 else 'fatty'},p{k // 2}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["prepare", str(tmp_path / "t.csv"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "path column" in r.stderr
    r = runner.invoke(
        app,
        [
            "prepare",
            str(tmp_path / "t.csv"),
            "-o",
            str(tmp_path / "o"),
            "--path-column",
            "img",
            "--label-column",
            "dx",
            "--group-column",
            "pid",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output


def test_every_command_help_has_an_example():
    from liverscan.faces.cli import app as cli_app

    names = [c.name for c in cli_app.registered_commands]
    assert {"config", "prepare", "train", "evaluate", "report", "predict", "export", "app"} <= set(names)
    for name in names:
        r = runner.invoke(cli_app, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        assert "Example" in r.stdout, name


def _one_line_error(r, fragment: str) -> None:
    assert r.exit_code != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_bad_options_are_one_line_errors(tmp_path):
    src = tmp_path / "src"
    (src / "normal").mkdir(parents=True)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  epochs: [1, 2\n")
    _one_line_error(
        runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "p"), "--split-ratios", "0/0/0"]),
        "data.train_ratio must be",
    )
    _one_line_error(
        runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "p"), "--split-ratios", "a/b"]), "three numbers"
    )
    _one_line_error(runner.invoke(app, ["config", "--set", "train.learning_rate=-1"]), "train.learning_rate")
    _one_line_error(runner.invoke(app, ["config", "--set", "train.epochs=many"]), "train.epochs")
    _one_line_error(runner.invoke(app, ["config", "--set", "data.classes=[a, b"]), "not valid YAML")
    _one_line_error(runner.invoke(app, ["config", "--config", str(bad_yaml)]), "not valid YAML at line")
    _one_line_error(runner.invoke(app, ["config", "--config", str(tmp_path)]), "is a directory")
    _one_line_error(
        runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--set", "eval.bootstrap=-1"]), "eval.bootstrap"
    )
    assert not (tmp_path / "p").exists()


def test_error_messages_show_brackets_literally(tmp_path):
    r = runner.invoke(app, ["evaluate", str(tmp_path / "case[i]01" / "[/sub]")])
    _one_line_error(r, "case[i]01/[/sub]")


def test_help_names_the_extras_to_install():
    """Rich markup must not swallow the [extra] of an install hint."""
    import re

    for command, extra in (("predict", "liverscan[ray]"), ("export", "liverscan[onnx]")):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        flat = re.sub(r"[\s│]+", " ", text)
        assert extra in flat, (command, extra)


def test_renamed_options_keep_their_old_spelling_hidden_and_say_what_replaced_it(tmp_path):
    """--operating-point (evaluate: a spec; predict: a switch), --split, --resume/--address of predict and
    --format of export were homonyms; their new names are shown, the old ones still work with a note."""
    import re

    for command, new, old in (
        ("evaluate", "--fit-operating-point", "--operating-point"),
        ("predict", "--use-operating-point", "--operating-point"),
        ("predict", "--resume-shards", "--resume"),
        ("predict", "--ray-address", "--address"),
        ("prepare", "--split-ratios", "--split"),
        ("export", "--runtime", "--format"),
    ):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert new in text and not re.search(rf"{re.escape(old)}(?![\w-])", text), (command, old)
    src = tmp_path / "src"
    (src / "normal").mkdir(parents=True)
    r = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "p"), "--split", "a/b"])
    assert "--split is now --split-ratios" in r.stderr and "three numbers" in r.stderr
    r = runner.invoke(app, ["predict", "examples/images", "--operating-point"])
    assert "--operating-point is now --use-operating-point" in r.stderr
    assert "liverscan evaluate RUN --fit-operating-point" in r.stderr  # the old switch took effect
