"""Configuration: profiles, TOML files, flags, and one clear error per mistake."""
import pytest

from beastnet.serve.config import PROFILES, ConfigError, apply_live, load_config


def test_defaults_are_the_production_profile():
    cfg = load_config()
    assert cfg.profile == "production" and cfg.keystore == "beastnet-keys.db"
    assert cfg.batch == 32 and cfg.cpu_steering


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_validates(name):
    assert load_config(profile=name).profile == name


def test_precedence_profile_file_flags(tmp_path):
    path = tmp_path / "beastnet.toml"
    path.write_text('profile = "stress-udp-direct"\n[server]\nbatch = 48\nudp_port = 9100\n')
    cfg = load_config(str(path), overrides={"udp_port": 9200, "http_port": None})
    assert cfg.profile == "stress-udp-direct"
    assert cfg.batch == 48 and cfg.udp_port == 9200          # file over profile, flag over file
    assert cfg.recv_buffer_bytes == 64 * 1024 * 1024         # from the profile
    assert load_config(str(path), profile="dev").profile == "dev"   # flag names the profile


@pytest.mark.parametrize("text,message", [
    ("batch = 0", "batch must be 1..1024"),
    ("udp_port = 70000", "udp_port must be 0..65535"),
    ('batch = "big"', "batch must be int"),
    ("nonsense = 1", "unknown setting 'nonsense'"),
    ('feed = "magic"', "feed must be one of exchanges, replay, sim"),
    ('feed = "replay"', "feed 'replay' needs feed_path"),
    ('http_prefix = "v1"', "http_prefix must start and end with '/'"),
    ('admin_host = "0.0.0.0"', "admin_host 0.0.0.0 is not a loopback address"),
    ('admin_token = "short"', "admin token must be at least 16"),
    ("admin_port = -1", "admin_port must be 0..65535"),
    ("this is not toml", "config file"),
    ('cors_origins = ["app.example"]', "cors_origins"),
])
def test_bad_values_give_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)


def test_unknown_profile_and_missing_file():
    with pytest.raises(ConfigError, match="unknown profile 'turbo'.*production"):
        load_config(profile="turbo")
    with pytest.raises(ConfigError, match="No such file"):
        load_config("/nonexistent/beastnet.toml")


def test_live_parameters_of_a_profile_switch():
    cfg = load_config(profile="production")
    changes = apply_live(cfg, "dev")
    assert changes == {"log_level": "debug"}
    assert apply_live(cfg, "stress-udp-direct") == {"feed_rounds_per_s": 1.0}
    with pytest.raises(ConfigError):
        apply_live(cfg, "nope")
