import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True)


def test_models_lists_registry_with_counts():
    r = run("models", "--count", "nfnet-f0", "nf-resnet-nano")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("nfnet-f0"))
    assert "192/256" in line and "71.49" in line and "12384.2" in line


def test_unknown_model_is_a_one_line_error():
    r = run("models", "nfnet-f99")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "nfnet-f99" in r.stderr


def test_cli_report_rejects_an_unknown_scale(capsys):
    from study.cli import main
    assert main(["report", "--scale", "huge", "--no-signal"]) == 2
    assert "scale: unknown 'huge'" in capsys.readouterr().err


# --- headless Chromium --------------------------------------------------------------------------
