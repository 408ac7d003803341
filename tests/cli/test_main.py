import subprocess
import sys

from dopd.cli.main import main


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: dopd" in capsys.readouterr().out


def test_console_script_reports_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dopd.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("dopd ")


def test_unknown_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dopd.cli.main", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
