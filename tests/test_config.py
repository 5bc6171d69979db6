"""Configuration loading, environment overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from histdata.config import load_config
from histdata.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


class TestLoad:
    def test_shipped_example_is_valid(self) -> None:
        """The config.toml at the repository root loads without error."""
        config = load_config(ROOT / "config.toml", environ={})
        assert config.kraken.symbols
        assert config.source.endswith("config.toml")

    def test_values_are_typed_and_frozen(self, tmp_path: Path) -> None:
        """Values come back with their declared types and cannot be changed."""
        config = load_config(
            write(tmp_path, '[kraken]\nsymbols = ["XBTUSD"]\nrest_burst = 3\n'), environ={}
        )
        assert config.kraken.symbols == ("XBTUSD",)
        assert config.kraken.rest_burst == 3
        with pytest.raises(AttributeError):
            config.kraken.rest_burst = 4  # type: ignore[misc]

    def test_environment_overrides_file(self, tmp_path: Path) -> None:
        """HISTDATA_<SECTION>_<KEY> wins over the file, with lists as commas or TOML arrays."""
        path = write(tmp_path, "[live]\nbatch_size = 10\n")
        config = load_config(
            path,
            environ={
                "HISTDATA_LIVE_BATCH_SIZE": "20",
                "HISTDATA_KRAKEN_SYMBOLS": "BTC/USD, ETH/USD",
                "HISTDATA_GAPFILL_ENABLED": "false",
                "HISTDATA_DATABASE_URL": "postgresql://h@db/x",
            },
        )
        assert config.live.batch_size == 20
        assert config.kraken.symbols == ("BTC/USD", "ETH/USD")
        assert config.gapfill.enabled is False
        assert config.database.url == "postgresql://h@db/x"

    def test_config_env_variable_picks_the_file(self, tmp_path: Path) -> None:
        """HISTDATA_CONFIG names the file when -c is not given."""
        path = write(tmp_path, "[rollup]\ninterval_s = 9\n")
        assert load_config(environ={"HISTDATA_CONFIG": str(path)}).rollup.interval_s == 9.0


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[live]\nbatchsize = 1\n", r"unknown key \[live\] batchsize.*allowed: batch_size"),
            ("[nope]\n", r"unknown section \[nope\]"),
            ('[live]\nbatch_size = "many"\n', r"\[live\] batch_size in .*expected an integer"),
            ('[live]\noverflow = "lose"\n', r"\[live\] overflow.*'lose' is not allowed.*'spill'"),
            ("[live]\nbatch_size = 0\n", r"\[live\] batch_size.*must be > 0"),
            ("[kraken]\nsymbols = 5\n", r"\[kraken\] symbols.*list of strings"),
            ("[live\n", r"not valid TOML"),
        ],
    )
    def test_one_line_naming_key_file_and_allowed(
        self, tmp_path: Path, text: str, expected: str
    ) -> None:
        """Each mistake is one line naming the key, the file and what is allowed."""
        with pytest.raises(ConfigError, match=expected) as info:
            load_config(write(tmp_path, text), environ={})
        assert "\n" not in str(info.value)
        assert "config.toml" in str(info.value)

    def test_bad_environment_value_names_the_variable(self) -> None:
        """A bad override names the environment variable it came from."""
        with pytest.raises(ConfigError, match=r"HISTDATA_LIVE_BATCH_AGE_S.*not a number"):
            load_config(environ={"HISTDATA_LIVE_BATCH_AGE_S": "soon"}, path=None)

    def test_missing_explicit_file_is_an_error(self, tmp_path: Path) -> None:
        """An explicitly named file that does not exist stops start-up."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "absent.toml", environ={})

    def test_no_password_key_exists(self, tmp_path: Path) -> None:
        """There is no password setting: credentials come from libpq's own sources."""
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(write(tmp_path, '[database]\npassword = "x"\n'), environ={})
