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


def test_help_loads_only_what_it_shows():
    # start-up time (benchmarks/startup.py): --help needs neither the configuration schema, YAML, numpy, Rich nor
    # the run-directory contract; each command loads them when it runs
    code = (
        "import sys; from liverscan.faces.cli import main; sys.argv = ['liverscan', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = ('yaml', 'numpy', 'rich', 'typer.rich_utils', 'liverscan.core.config', 'liverscan.core.artifacts')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "print(loaded, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "[]", out.stderr
    assert "predict" in out.stdout


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
    assert r.exit_code == 2  # a usage error
    assert "unknown configuration key(s): train.nope" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: 3\n")
    r = runner.invoke(app, ["config", "--config", str(bad)])
    assert r.exit_code == 2 and "model.depth" in r.stderr


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


def _all_helps() -> dict[str, str]:
    """The --help text of the app and of every command and sub-command, at a wide terminal."""
    import typer

    group = typer.main.get_command(app)
    texts = {"": runner.invoke(app, ["--help"], terminal_width=200).output}

    def walk(cmd, path: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            texts[" ".join([*path, name])] = runner.invoke(app, [*path, name, "--help"], terminal_width=200).output
            walk(sub, [*path, name])

    walk(group, [])
    return texts


def test_help_is_plain_text_with_examples_kept_line_by_line():
    """Help is Click's plain text: no Rich markup or escapes shown literally, and each example on a line of its own."""
    import re

    texts = _all_helps()
    assert {"predict", "train", "federate server"} <= set(texts)
    for name, text in texts.items():
        assert "Usage: liverscan" in text, name
        assert not re.search(r"\[/?(bold|dim|yellow|red)[^\]]*\]|\[/\]|\\\[", text), (name, text)
        assert "<list[" not in text.split("Options:")[-1], (name, text)  # option values are named, not typed lists
    for name in ("predict", "train", "federate server"):
        block = texts[name].split("Example")[1].split("\n\n")[1]  # the paragraph after "Example(s) ...:"
        examples = block.splitlines()
        assert len(examples) >= 2 and all(line.startswith("    ") and "liverscan " in line for line in examples), block
    assert "    find /archive -name '*.png' | liverscan predict - --format jsonl\n" in texts["predict"]


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


# -- exit codes: one table, every command ------------------------------------------------------------------------

EXAMPLE = "examples/images/Normal/xu-92.jpg"
#: for every command, a usage error found after parsing (the value is checked by liverscan, not by Click)
USAGE_ERRORS = {
    "config": (["config", "--set", "train.nope=1"], "train.nope"),
    "prepare": (["prepare", "somewhere"], "--out DIR"),
    "train": (["train", "--epochs", "3"], "--data PREPARED_DIR"),
    "evaluate": (["evaluate", "somewhere", "--set", "eval.split=sideways"], "eval.split"),
    "report": (["report", "a", "b"], "give one run directory"),
    "predict": (["predict", EXAMPLE, "--engine", "spark"], "--engine must be local or ray"),
    "export": (["export", "somewhere", "--runtime", "coreml"], "unknown export format"),
    "app": (["app", "--port", "0"], "--port"),
}


def test_every_command_exits_2_for_a_usage_error():
    """Click's convention, the same for a value Click checks (--batch-size 0, --port 0) and one liverscan checks
    after parsing (--set keys, --engine, a missing --out): never the code of a partial failure (4) or of a
    model or data error (1)."""
    from liverscan.faces import EXIT_USAGE

    assert set(USAGE_ERRORS) == {c.name for c in app.registered_commands}, "a command without a usage-error check"
    cases = [*USAGE_ERRORS.values(), (["predict", EXAMPLE, "--batch-size", "0"], "--batch-size")]
    cases += [(["predict", EXAMPLE, "--runtime", "fast"], "unknown runtime"), (["train", "--bogus"], "--bogus")]
    for args, fragment in cases:
        r = runner.invoke(app, args, terminal_width=200)
        assert r.exit_code == EXIT_USAGE, (args, r.exit_code, r.output)
        assert fragment in " ".join(r.output.split()) and "Traceback" not in r.output, (args, r.output)


def test_predict_exit_codes_tell_a_partial_failure_from_an_error(tmp_path):
    """All predicted: 0; some files failed (records say why): 4; nothing could be done (no model): 1."""
    import shutil

    from liverscan.faces import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED

    shutil.copy(EXAMPLE, tmp_path / "good.jpg")
    assert runner.invoke(app, ["predict", str(tmp_path / "good.jpg"), "-q"]).exit_code == EXIT_OK
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    r = runner.invoke(app, ["predict", str(tmp_path), "-o", str(tmp_path / "out.csv"), "-q"])
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    assert "1 of 2 images predicted" in r.stderr and "broken.jpg" in r.stderr
    r = runner.invoke(app, ["predict", str(tmp_path / "good.jpg"), "--model", str(tmp_path / "nothing")])
    assert r.exit_code == EXIT_ERROR, r.output


def test_readme_exit_code_table_is_the_codes_in_the_code():
    """The README's one table of exit codes lists exactly the constants (and the stop codes 128 + signal)."""
    import re
    import signal
    from pathlib import Path

    from liverscan import faces
    from liverscan.faces.cli import Stopped, _signal_code

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\|\s*\d", line)]
    table = {}
    for row in rows:
        codes, meaning = [cell.strip() for cell in row.strip("|").split("|", 1)]
        for code in re.findall(r"\d+", codes):
            table[int(code)] = meaning
    expected = {
        faces.EXIT_OK: "done",
        faces.EXIT_ERROR: "error",
        faces.EXIT_USAGE: "usage error",
        faces.EXIT_SOME_FAILED: "some files failed",
    }
    stops = {
        _signal_code(KeyboardInterrupt()): "Ctrl+C",
        _signal_code(Stopped(signal.SIGTERM)): "SIGTERM",
        _signal_code(Stopped(signal.SIGHUP)): "SIGHUP",
    }
    assert set(table) == set(expected) | set(stops), table
    for code, words in {**expected, **stops}.items():
        assert words in table[code], (code, table[code])
    assert 3 not in table and "3 is left to `examples/reproduce.py`" in section  # reproduce.py's "nothing reproduced"


def test_help_shows_flags_as_plain_flags():
    """A flag takes no value: --version, --quiet, --overwrite, --help show no '<bool>' type beside them."""
    for args in ([], ["predict"], ["train"], ["prepare"]):
        text = runner.invoke(app, [*args, "--help"], terminal_width=200).output
        assert "<bool>" not in text and "--help" in text, (args, text)
        assert "<int" in text or "<text>" in text or "<path>" in text or not args  # option values keep their type
    text = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "--version" in text and "Show the version and exit." in text
    assert runner.invoke(app, ["--version"]).exit_code == 0
