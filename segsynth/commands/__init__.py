"""CLI sub-commands contributed by method modules.

Each module listed in ``COMMAND_MODULES`` defines ``add_parser(subparsers)`` which adds one or more
sub-commands and sets ``func`` (a callable taking the parsed args and returning an exit code).
"""

COMMAND_MODULES: list[str] = [
    "segsynth.commands.transforms",
    "segsynth.commands.genseg",
    "segsynth.commands.brainspade",
    "segsynth.commands.audit",
    "segsynth.commands.report",
    "segsynth.commands.split_folder",
]
