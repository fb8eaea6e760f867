"""The ``bidspack`` command group: verbs listed in workflow order, not alphabetically."""

from __future__ import annotations

import click

from bidspack import __version__
from bidspack.cli.cmd_aggregate import aggregate_cmd
from bidspack.cli.cmd_demo import demo_cmd
from bidspack.cli.cmd_derive import derive_cmd
from bidspack.cli.cmd_draft_spec import draft_spec_cmd
from bidspack.cli.cmd_export import export_cmd
from bidspack.cli.cmd_hashdiff import duplicates_cmd, hashdiff_cmd
from bidspack.cli.cmd_inspect import inspect_cmd
from bidspack.cli.cmd_package import package_cmd
from bidspack.cli.cmd_recover import recover_cmd
from bidspack.cli.cmd_release import init_cmd, release_cmd
from bidspack.cli.cmd_rename import rename_cmd
from bidspack.cli.cmd_report import report_cmd, view_cmd
from bidspack.cli.cmd_sample import sample_cmd
from bidspack.cli.cmd_validate import validate_cmd
from bidspack.cli.cmd_verify import log_cmd, verify_cmd

#: The verbs in the order a curator meets them (``bidspack --help`` lists them so);
#: a verb not named here is listed after these, alphabetically.
WORKFLOW_ORDER = (
    "demo",
    "draft-spec",
    "inspect",
    "package",
    "validate",
    "report",
    "view",
    "hashdiff",
    "duplicates",
    "rename-subject",
    "recover",
    "verify",
    "log",
    "init",
    "release",
    "export",
    "aggregate",
    "sample",
    "derive",
)

#: One-line descriptions for verbs whose module sets no ``short_help`` (click would
#: cut their first sentence at the column width).
SHORT_HELP = {
    "draft-spec": "Draft a packaging spec from a submission's files.",
    "hashdiff": "Compare two folders or stacks by pixel hash (reports).",
    "duplicates": "Group pixel-identical images below a folder.",
}


class WorkflowGroup(click.Group):
    """A group that lists its commands in :data:`WORKFLOW_ORDER`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(self.commands, key=lambda n: (rank.get(n, len(rank)), n))


@click.group(cls=WorkflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bidspack")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of clean error messages.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """bidspack: turn microscopy submissions into validated BIDS microscopy datasets.

    \b
    Workflow:
      bidspack demo OUT                 the example, packaged and validated
      bidspack draft-spec SUB -o spec.toml
      bidspack package SUB DS --spec spec.toml --dry-run
      bidspack package SUB DS --spec spec.toml
      bidspack validate DS
      bidspack release DS 1.0.0

    The example spec is examples/lightsheet-spec.toml (explained in
    examples/README.md); 'bidspack demo OUT' writes it beside its submission.
    'bidspack VERB --help' tells more about each verb.
    """
    ctx.obj = {"debug": debug}


cli.add_command(demo_cmd)
cli.add_command(draft_spec_cmd)
cli.add_command(inspect_cmd)
cli.add_command(package_cmd)
cli.add_command(validate_cmd)
cli.add_command(report_cmd)
cli.add_command(view_cmd)
cli.add_command(hashdiff_cmd)
cli.add_command(duplicates_cmd)
cli.add_command(rename_cmd)
cli.add_command(recover_cmd)
cli.add_command(verify_cmd)
cli.add_command(log_cmd)
cli.add_command(init_cmd)
cli.add_command(release_cmd)
cli.add_command(export_cmd)
cli.add_command(aggregate_cmd)
cli.add_command(sample_cmd)
cli.add_command(derive_cmd)
for _name, _text in SHORT_HELP.items():
    if _name in cli.commands and not cli.commands[_name].short_help:
        cli.commands[_name].short_help = _text


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bidspack")
