"""Every user error of the CLI: its exit code by the convention (vipwire.cli.exits), a
one-line message naming what to fix, and no traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vipwire.cli import exits
from vipwire.cli.bench import SCENARIO_NAMES
from vipwire.cli.main import build_parser, main, parsers


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr of ``vipwire ARGV``, in process."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["up", "--nodes", "0"], "--nodes"),
        (["up", "--clusters", "0", "--smoke"], "--clusters"),
        (["up", "--services", "-1"], "--services"),
        (["up", "--timeout", "-1"], "--timeout"),
        (["up", "--kubeconfig", "/nonexistent"], "/nonexistent"),
        (["up", "--demo"], "--kubeconfig"),
        (["config", "reference", "--update", "/nonexistent.md"], "/nonexistent.md"),
        (["ipam", "show", "garbage"], "CLUSTER/NS/NAME"),
        (["ipam", "release", "web"], "CLUSTER/NS/NAME"),
        (["ipam", "status", "--timeout", "-1"], "--timeout"),
        (["lb", "status", "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag or file: exit 2, one line that names it."""
    code, err = run(argv, capsys)
    assert code == exits.USAGE, err
    assert named in one_line(err)


def test_a_kubeconfig_without_the_context_exits_2_naming_the_contexts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A context the kubeconfig does not have: exit 2, the contexts it has are listed."""
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\ncontexts:\n- name: prod\n  context: {}\n")
    code, err = run(["up", "--kubeconfig", str(path), "--context", "staging"], capsys)
    assert code == exits.USAGE
    line = one_line(err)
    assert "'staging'" in line and "prod" in line and "--context" in line
    code, err = run(["up", "--kubeconfig", str(path)], capsys)
    assert code == exits.USAGE and "current-context" in one_line(err)


@pytest.mark.parametrize("command", ["ipam status", "ipam show 198.51.100.1", "lb status"])
def test_nats_unreachable_exits_3(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No NATS at the address: exit 3, one line naming the address."""
    argv = [*command.split(), "--nats", "nats://127.0.0.1:1", "--timeout", "1"]
    code, err = run(argv, capsys)
    assert code == exits.UNREACHABLE
    assert "127.0.0.1:1" in one_line(err)


def test_replay_nats_unreachable_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """replay, too, exits 3 when NATS cannot be reached."""
    code, err = run(["replay", "--nats", "nats://127.0.0.1:1"], capsys)
    assert code == exits.UNREACHABLE
    assert "127.0.0.1:1" in one_line(err)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`vipwire --version` prints the version and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("vipwire ")


def test_every_command_has_an_example_and_every_argument_help() -> None:
    """Every (sub)command's --help has an example; every argument has help text."""
    for parser in parsers(build_parser()):
        assert parser.epilog and "example" in parser.epilog.lower(), parser.prog
        assert "Exit codes" in parser.format_help(), parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest}"


def test_bench_help_lists_the_real_scenarios() -> None:
    """`bench --scenario`'s help names exactly the scenarios that exist."""
    from vipwire.bench import SCENARIOS

    assert sorted(SCENARIOS) == list(SCENARIO_NAMES)
