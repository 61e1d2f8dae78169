from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from edgekit import SettingsError, SettingsManager, diff_patch, merge_patch


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = "1"
    threshold: float = 0.5


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_rows: int = Field(default=1000, gt=0)
    mode: Literal["fast", "safe"] = "safe"
    enabled: bool = True
    datasets: list[str] = ["default"]
    model: Model | None = None
    tags: Annotated[dict[str, str], Field(default_factory=dict)]
    storage_key: SecretStr = SecretStr("")


def manager(environ=None, prefix="APP_") -> SettingsManager[Settings]:
    result = SettingsManager(Settings, env_prefix=prefix)
    result.load(environ or {})
    return result


def test_defaults_then_environment():
    current = manager(
        {
            "APP_BATCH_ROWS": "250",
            "APP_ENABLED": "false",
            "APP_DATASETS": '["a", "b"]',
            "APP_MODEL": '{"name": "sensor-ae"}',
            "APP_TAGS": '{"site": "Köln"}',
            "OTHER": "ignored",
        }
    ).current
    assert current.batch_rows == 250
    assert current.enabled is False
    assert current.datasets == ["a", "b"]
    assert current.model == Model(name="sensor-ae")
    assert current.tags == {"site": "Köln"}
    assert current.mode == "safe"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"APP_BATCH_ROWS": "many"}, r"APP_BATCH_ROWS: Input should be a valid integer.*'many'"),
        ({"APP_BATCH_ROWS": "0"}, "APP_BATCH_ROWS: Input should be greater than 0"),
        ({"APP_MODE": "turbo"}, "APP_MODE"),
        ({"APP_DATASETS": "[a, b"}, "APP_DATASETS: not valid JSON"),
        ({"APP_MODEL": '{"version": "2"}'}, r"APP_MODEL\.name: Field required"),
        ({"APP_BACH_ROWS": "5"}, "APP_BACH_ROWS: no such setting"),
    ],
)
def test_environment_errors_name_the_variable(environ, message):
    with pytest.raises(SettingsError, match=message):
        manager(environ)


def test_without_prefix_unrelated_environment_is_ignored():
    current = manager({"PATH": "/usr/bin", "BATCH_ROWS": "7"}, prefix="").current
    assert current.batch_rows == 7


def test_current_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = SettingsManager(Settings).current


def test_full_desired_document_overrides_env_and_ignores_dollar_keys():
    settings = manager({"APP_BATCH_ROWS": "250", "APP_MODE": "fast"})
    update = settings.apply_desired(
        {"batch_rows": 10, "$version": 4, "$metadata": {"x": 1}, "model": {"name": "m", "$x": 1}}, full=True
    )
    assert update.accepted
    assert update.changed
    assert update.version == 4
    assert settings.current.batch_rows == 10
    assert settings.current.mode == "fast"  # from the environment, not overridden
    assert settings.current.model == Model(name="m")
    assert update.reported["status"] == "accepted"
    assert update.reported["version"] == 4
    assert update.reported["effective"]["batch_rows"] == 10


def test_bad_patch_is_rejected_with_reason_and_last_good_kept():
    settings = manager()
    settings.apply_desired({"batch_rows": 10, "$version": 2}, full=True)
    update = settings.apply_desired({"batch_rows": -1, "mode": "fast", "$version": 3})
    assert not update.accepted
    assert not update.changed
    assert update.reported == {"status": "rejected", "reason": update.reason, "version": 3}
    assert update.reason is not None
    assert "batch_rows: Input should be greater than 0 (got -1)" in update.reason
    assert settings.current.batch_rows == 10
    assert settings.current.mode == "safe"  # nothing of a rejected patch is applied

    # The hub still holds batch_rows=-1: an unrelated patch is still rejected...
    still = settings.apply_desired({"enabled": False, "$version": 4})
    assert not still.accepted
    assert settings.current.enabled is True
    # ...until one fixes it.
    fixed = settings.apply_desired({"batch_rows": 20, "$version": 5})
    assert fixed.accepted
    assert (settings.current.batch_rows, settings.current.mode, settings.current.enabled) == (
        20,
        "fast",
        False,
    )
    assert fixed.reported["reason"] is None


def test_unknown_desired_key_rejected_without_echoing_its_value():
    settings = manager()
    update = settings.apply_desired({"storage_kee": "AccountKey=very-secret"})
    assert not update.accepted
    assert update.reason is not None
    assert "storage_kee: Extra inputs are not permitted" in update.reason
    assert "very-secret" not in update.reason


def test_nested_patch_merges_and_null_deletes():
    settings = manager({"APP_MODEL": '{"name": "env-model", "threshold": 0.9}'})
    settings.apply_desired({"model": {"name": "sensor-ae", "version": "3"}, "batch_rows": 5}, full=True)
    assert settings.current.model == Model(name="sensor-ae", version="3", threshold=0.9)

    settings.apply_desired({"model": {"version": "4"}})
    assert settings.current.model == Model(name="sensor-ae", version="4", threshold=0.9)

    # None deletes the desired key: the value falls back to the environment, then the default.
    update = settings.apply_desired({"model": {"name": None}, "batch_rows": None})
    assert update.accepted
    assert settings.current.model == Model(name="env-model", version="4", threshold=0.9)
    assert settings.current.batch_rows == 1000


def test_unchanged_settings_are_not_a_change():
    settings = manager()
    assert not settings.apply_desired({"batch_rows": 1000, "$version": 2}).changed
    assert settings.apply_desired({"batch_rows": 1001, "$version": 3}).changed


def test_effective_values_are_reported_as_a_replacing_patch_and_hide_secrets():
    settings = manager({"APP_STORAGE_KEY": "s3cret"})
    first = settings.reported_section()
    assert first["effective"]["storage_key"] == "**********"
    assert "s3cret" not in repr(first)
    settings.apply_desired({"tags": {"a": "1", "b": "2"}})
    update = settings.apply_desired({"tags": {"a": None}})
    # Only the difference is patched, with None removing the stale key from reported properties.
    assert update.reported["effective"] == {"tags": {"a": None}}


async def test_listeners_sync_and_async_are_published():
    settings = manager()
    seen: list[int] = []

    async def on_async(new: Settings) -> None:
        seen.append(new.batch_rows)

    settings.subscribe(lambda new: seen.append(-new.batch_rows))
    settings.subscribe(on_async)
    settings.apply_desired({"batch_rows": 3})
    await settings.publish()
    assert seen == [-3, 3]


def test_merge_and_diff_patch_are_inverse():
    old = {"a": 1, "b": {"c": 2, "d": [1]}, "e": "x"}
    new = {"a": 1, "b": {"c": 3}, "f": 5}
    patch = diff_patch(old, new)
    assert patch == {"b": {"c": 3, "d": None}, "e": None, "f": 5}
    assert merge_patch(old, patch) == new
    assert old == {"a": 1, "b": {"c": 2, "d": [1]}, "e": "x"}  # inputs untouched


class Aliased(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    upload: dict[str, int] = Field(default_factory=dict, alias="uploadProperties")
    order: str = Field(default="OldestFirst", alias="uploadOrder")


def test_aliased_fields_read_from_env_by_name_and_patched_by_alias():
    settings = SettingsManager(Aliased, env_prefix="UP_")
    settings.load({"UP_UPLOAD": '{"a": 1, "b": 2}', "UP_ORDER": "NewestFirst"})
    assert settings.current.upload == {"a": 1, "b": 2}
    update = settings.apply_desired({"uploadProperties": {"b": 3}})
    # The patch merges onto the environment's document: "a" kept, "b" replaced, the env's order kept.
    assert update.accepted, update.reason
    assert settings.current.upload == {"a": 1, "b": 3}
    assert settings.current.order == "NewestFirst"
