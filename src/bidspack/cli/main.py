"""The ``bidspack`` command group."""

from __future__ import annotations

import click

from bidspack import __version__
from bidspack.cli.cmd_aggregate import aggregate_cmd
from bidspack.cli.cmd_demo import demo_cmd
from bidspack.cli.cmd_export import export_cmd
from bidspack.cli.cmd_hashdiff import duplicates_cmd, hashdiff_cmd
from bidspack.cli.cmd_package import package_cmd
from bidspack.cli.cmd_recover import recover_cmd
from bidspack.cli.cmd_release import init_cmd, release_cmd
from bidspack.cli.cmd_rename import rename_cmd
from bidspack.cli.cmd_validate import validate_cmd
from bidspack.cli.cmd_verify import log_cmd, verify_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bidspack")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of clean error messages.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """bidspack: turn microscopy submissions into validated BIDS microscopy datasets."""
    ctx.obj = {"debug": debug}


cli.add_command(package_cmd)
cli.add_command(aggregate_cmd)
cli.add_command(validate_cmd)
cli.add_command(demo_cmd)
cli.add_command(recover_cmd)
cli.add_command(rename_cmd)
cli.add_command(hashdiff_cmd)
cli.add_command(duplicates_cmd)
cli.add_command(verify_cmd)
cli.add_command(log_cmd)
cli.add_command(init_cmd)
cli.add_command(release_cmd)
cli.add_command(export_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bidspack")
