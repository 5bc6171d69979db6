"""Configuration loading, environment overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from histdata.config import load_config, parse_listen
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


class TestEnvironment:
    def test_misspelt_key_of_a_known_section_is_an_error(self) -> None:
        """HISTDATA_DATABASE_ULR stops start-up, naming the variable and the nearest key."""
        with pytest.raises(ConfigError) as info:
            load_config(environ={"HISTDATA_DATABASE_ULR": "postgresql://h@db/x"})
        message = str(info.value)
        assert "$HISTDATA_DATABASE_ULR: unknown key [database] ulr" in message
        assert "did you mean $HISTDATA_DATABASE_URL?" in message
        assert "\n" not in message

    def test_misspelt_file_key_suggests_the_nearest(self, tmp_path: Path) -> None:
        """An unknown key in the file names the closest valid key."""
        with pytest.raises(ConfigError, match=r"unknown key \[database\] pool_mx \(did you mean"):
            load_config(write(tmp_path, "[database]\npool_mx = 3\n"), environ={})

    def test_unknown_other_variable_is_a_one_line_warning(self) -> None:
        """A HISTDATA_* variable of no section is not fatal: one warning line names it."""
        config = load_config(environ={"HISTDATA_LOGLEVEL": "debug", "HISTDATA_TEST_DSN": "x"})
        (warning,) = config.warnings
        assert warning.startswith("$HISTDATA_LOGLEVEL is neither a config key")
        assert "\n" not in warning

    def test_documented_non_config_variables_are_quiet(self) -> None:
        """The test, bench and config-file variables are neither errors nor warnings."""
        names = ["HISTDATA_CONFIG", "HISTDATA_TEST_DSN", "HISTDATA_TIMESCALE_DSN"]
        names += ["HISTDATA_DRILL_DSN", "HISTDATA_FUZZ_EXAMPLES", "HISTDATA_FUZZ_COUNTS"]
        environ = dict.fromkeys(names, "1") | {"HISTDATA_CONFIG": ""}
        assert load_config(environ=environ).warnings == ()


class TestValues:
    @pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
    def test_non_finite_numbers_are_rejected_in_the_file(self, tmp_path: Path, text: str) -> None:
        """TOML's nan and inf are refused, naming the key."""
        with pytest.raises(ConfigError, match=r"\[live\] batch_age_s in .*finite number"):
            load_config(write(tmp_path, f"[live]\nbatch_age_s = {text}\n"), environ={})

    def test_non_finite_number_from_the_environment(self) -> None:
        """nan given as an override is refused, naming the variable."""
        with pytest.raises(ConfigError, match=r"\$HISTDATA_ROLLUP_INTERVAL_S.*finite number"):
            load_config(environ={"HISTDATA_ROLLUP_INTERVAL_S": "nan"})

    def test_inverted_pool_bounds(self, tmp_path: Path) -> None:
        """pool_min above pool_max is refused, naming both keys and where they came from."""
        path = write(tmp_path, "[database]\npool_min = 10\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={"HISTDATA_DATABASE_POOL_MAX": "4"})
        message = str(info.value)
        assert f"[database] pool_min 10 (in {path}) is above pool_max 4" in message
        assert "(from $HISTDATA_DATABASE_POOL_MAX)" in message

    @pytest.mark.parametrize("text", ["9108", "localhost:", "host:99999", ":9108"])
    def test_bad_metrics_listen(self, tmp_path: Path, text: str) -> None:
        """[metrics] listen must be host:port."""
        with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
            load_config(write(tmp_path, f'[metrics]\nlisten = "{text}"\n'), environ={})

    def test_metrics_listen_off_by_default_and_parsed(self, tmp_path: Path) -> None:
        """[metrics] listen is empty (off) by default; IPv6 brackets are accepted."""
        assert load_config(environ={}).metrics.listen == ""
        config = load_config(write(tmp_path, '[metrics]\nlisten = "[::1]:9108"\n'), environ={})
        assert parse_listen(config.metrics.listen) == ("::1", 9108)


class TestRelativePaths:
    def test_relative_to_the_config_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """data_dir and socket in a file, or defaulted, are relative to the file's folder."""
        folder = tmp_path / "etc"
        folder.mkdir()
        path = folder / "histdata.toml"
        path.write_text('[service]\ndata_dir = "./state"\n')
        monkeypatch.chdir(tmp_path)
        config = load_config(path, environ={})
        assert Path(config.service.data_dir) == folder / "state"
        assert Path(config.query.socket) == folder / "var" / "histdata.sock"
        relative = load_config(Path("etc/histdata.toml"), environ={})
        assert (tmp_path / relative.service.data_dir).resolve() == folder / "state"

    def test_environment_and_no_file_use_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An override, or the defaults without a file, stay relative to the working dir."""
        folder = tmp_path / "etc"
        folder.mkdir()
        path = write(folder, "")
        monkeypatch.chdir(tmp_path)
        config = load_config(path, environ={"HISTDATA_SERVICE_DATA_DIR": "./here"})
        assert config.service.data_dir == "./here"
        assert load_config(environ={}).service.data_dir == "./var"

    def test_absolute_paths_are_kept(self, tmp_path: Path) -> None:
        """An absolute data_dir is used as written."""
        path = write(tmp_path, '[service]\ndata_dir = "/srv/histdata"\n')
        assert load_config(path, environ={}).service.data_dir == "/srv/histdata"
