"""docs/configuration.md lists every option exactly as archiver.config.OPTIONS defines it.

If this fails after changing an option, replace the table in docs/configuration.md with the
output of: python tests/test_docs.py
"""

from __future__ import annotations

from pathlib import Path

from archiver.config import OPTIONS, load_settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def commands_text(commands: frozenset[str]) -> str:
    """Which commands have the flag, as docs/configuration.md says it."""
    from archiver.options import STORED

    if commands == STORED:
        return "every command but demo, simulate"
    return ", ".join(sorted(commands))


def options_table() -> str:
    rows = [
        "| TOML key | Environment | Flag | Flag on | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        flag = f"`{o.flag}`" if o.flag else "— (secret)"
        on = commands_text(o.commands) if o.flag else ""
        default = "" if o.default is None else f"`{o.default}`"
        rows.append(f"| `{o.name}` | `{o.env}` | {flag} | {on} | {default} | {o.help} |")
    return "\n".join(rows)


def test_configuration_reference_matches_the_code() -> None:
    assert options_table() in DOC.read_text(), "docs/configuration.md is out of date: " + __doc__


def test_the_example_config_file_loads(tmp_path: Path) -> None:
    text = DOC.read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "config.toml"
    path.write_text(example)
    settings = load_settings(env={}, config_file=path)
    assert settings.daemon.metrics_listen == ("127.0.0.1", 9101)


if __name__ == "__main__":
    print(options_table())


def test_operations_lists_every_metric_and_the_alerts() -> None:
    """Every metric the worker serves is in docs/operations.md's table, and the alert list
    names the ones an operator pages on."""
    from archiver.metrics import METRICS

    text = (DOC.parent / "operations.md").read_text()
    table = text.split("## Metrics", 1)[1].split("## What to alert on", 1)[0]
    missing = [row.name for row in METRICS if f"`{row.name}" not in table]
    assert not missing, f"docs/operations.md's metrics table lacks {missing}"
    alerts = text.split("## What to alert on", 1)[1].split("## Exit codes", 1)[0]
    for name in ("source_retention_at_risk", "failures_total", "stuck_calls_now", "skipped_items"):
        assert name in alerts
