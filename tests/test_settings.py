"""Settings: one definition, arguments over KTASKS_* variables over defaults, strict checking."""

from __future__ import annotations

import pytest

from ktasks import App, ConfigurationError
from ktasks.settings import KAFKA_PASSTHROUGH, SETTINGS, Settings


def test_defaults():
    s = Settings(environ={})
    for name, setting in SETTINGS.items():
        assert getattr(s, name) == setting.default
    assert s.partitions == 6 and s.eager is False and s.retry_tiers_ms == [1000, 10000, 60000, 600000]


def test_mutable_defaults_are_not_shared():
    a, b = Settings(environ={}), Settings(environ={})
    a.retry_tiers_ms.append(1)
    assert b.retry_tiers_ms == SETTINGS["retry_tiers_ms"].default == [1000, 10000, 60000, 600000]


def test_every_setting_is_documented_and_typed():
    for name, setting in SETTINGS.items():
        assert setting.doc.strip() and setting.group, name
        assert setting.env_var == "KTASKS_" + name.upper()
        if setting.default is not None:
            setting.coerce(setting.default, "default")  # the default passes its own check


def test_unknown_settings_are_rejected_naming_the_key():
    with pytest.raises(ConfigurationError, match="unknown setting 'partitons'"):
        Settings(partitons=3)
    with pytest.raises(ConfigurationError, match="unknown setting 'a'.*'b'"):
        Settings(a=1, b=2)
    with pytest.raises(ConfigurationError, match="unknown setting 'lingerms'"):
        App("x", lingerms=5)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("partitions", "3", None),  # strings from arguments are parsed like environment values
        ("partitions", 2.5, "must be int, got float"),
        ("partitions", True, "must be int, got bool"),
        ("partitions", -1, "must not be negative"),
        ("eager", "maybe", "must be bool"),
        ("linger_ms", None, "must not be None"),
        ("kafka_options", ["x"], "must be dict"),
        ("retry_tiers_ms", {"a": 1}, "must be list"),
        ("compression_type", "brotli", "must be one of"),
        ("assignor", "fastest", "must be one of"),
        ("bootstrap_servers", 9092, "must be str"),
    ],
)
def test_wrong_types_and_values_are_rejected_naming_the_key(key, value, fragment):
    if fragment is None:
        assert getattr(Settings({key: value}, environ={}), key) == 3
        return
    with pytest.raises(ConfigurationError) as info:
        Settings({key: value}, environ={})
    assert f"setting {key!r}" in str(info.value) and fragment in str(info.value)


def test_environment_variables_apply_and_arguments_win(monkeypatch):
    env = {
        "KTASKS_PARTITIONS": "12",
        "KTASKS_EAGER": "yes",
        "KTASKS_LINGER_MS": "0",
        "KTASKS_SEND_TIMEOUT_MS": "2500",
        "KTASKS_RETRY_TIERS_MS": "[500, 5000]",
        "KTASKS_KAFKA_OPTIONS": '{"retry_backoff_ms": 250}',
        "KTASKS_COMPRESSION_TYPE": "gzip",
        "KTASKS_GROUP_INSTANCE_ID": "worker-1",
        "KTASKS_DEFAULT_TOPIC": "from-env",
        "KTASKS_RETRY_JITTER": "off",
    }
    s = Settings(environ=env)
    assert (s.partitions, s.eager, s.linger_ms, s.send_timeout_ms) == (12, True, 0, 2500)
    assert s.retry_tiers_ms == [500, 5000] and s.kafka_options == {"retry_backoff_ms": 250}
    assert s.compression_type == "gzip" and s.default_topic == "from-env" and s.retry_jitter is False
    assert s.group_instance_id == "worker-1"
    assert Settings(environ=env, partitions=2).partitions == 2

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = App("envapp", partitions=4)
    assert app.settings.partitions == 4 and app.settings.eager is True
    assert app.default_topic == "from-env"
    assert app.producer.config()["retry_backoff_ms"] == 250


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("KTASKS_PARTITIONS", "many", "setting 'partitions' (environment KTASKS_PARTITIONS) must be int"),
        ("KTASKS_EAGER", "2", "setting 'eager' (environment KTASKS_EAGER) must be bool"),
        ("KTASKS_KAFKA_OPTIONS", "{not json", "setting 'kafka_options' (environment KTASKS_KAFKA_OPTIONS)"),
        ("KTASKS_MAX_STARTS", "none", "setting 'max_starts' (environment KTASKS_MAX_STARTS) must be int"),
    ],
)
def test_bad_environment_values_name_the_variable(var, value, fragment):
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Settings(environ={var: value})


def test_kafka_options_keys_are_checked_against_kafka_python():
    with pytest.raises(ConfigurationError, match="kafka_options: 'request_timeout' is not a kafka-python setting"):
        Settings(kafka_options={"request_timeout": 1000}, environ={})
    s = Settings(kafka_options={"request_timeout_ms": 20000, "fetch_max_bytes": 1}, environ={})
    assert s.kafka_common()["request_timeout_ms"] == 20000
    with pytest.raises(ConfigurationError, match="kafka_options"):
        Settings(environ={"KTASKS_KAFKA_OPTIONS": '{"no_such_option": 1}'})


def test_security_settings_pass_through_to_kafka_python():
    s = Settings(bootstrap_servers="a:1,b:2", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                 sasl_plain_username="u", sasl_plain_password="secret", ssl_cafile="/ca.pem", environ={})
    common = s.kafka_common()
    assert common["bootstrap_servers"] == ["a:1", "b:2"]
    assert common["security_protocol"] == "SASL_SSL" and common["sasl_plain_password"] == "secret"
    assert common["ssl_cafile"] == "/ca.pem" and "ssl_keyfile" not in common
    assert set(KAFKA_PASSTHROUGH) <= set(SETTINGS)
    assert "secret" not in repr(s)


def test_settings_are_immutable_and_replace_validates():
    s = Settings(environ={})
    with pytest.raises(AttributeError):
        s.partitions = 3  # type: ignore[misc]
    t = s.replace(partitions=9)
    assert (s.partitions, t.partitions) == (6, 9)
    with pytest.raises(ConfigurationError, match="partitions"):
        s.replace(partitions="x")
    with pytest.raises(AttributeError):
        s.no_such_setting  # noqa: B018
