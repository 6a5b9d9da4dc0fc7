"""Where the project's own configs are, for tests: the top-level conf/ folder."""

from helpers.commands import REPO

CONF_DIR = REPO / "conf"
