"""The TOML configuration: defaults, secrets from the environment, clear errors."""

import pytest

from streams.contract.config import ConfigError, Secret, load_config, parse_config

GOOD = """
reconcile_interval = 60

[kafka]
bootstrap_servers = "127.0.0.1:9092"

[sites.a]
api_url = "http://127.0.0.1:8001/api/"
token_env = "USYNC_TOKEN_A"
broker_url = "ws://127.0.0.1:15674/ws"
register = true

[sites.b]
api_url = "http://127.0.0.1:8002/api/"
token_env = "USYNC_TOKEN_B"
broker_url = "stomp://127.0.0.1:61613"
rates = { requests_per_second = 50, concurrency = 4 }

[[sites.b.subscriptions]]
login = "5d1c0e6f7a8b4c9daa0b1c2d3e4f5a6b"
vhost = "6e2d1f7a8b9c4d0eb1c2d3e4f5a6b7c8"
queues = ["subscription_x_offering_y_offering_user"]

[[links]]
name = "a-from-b"
target = { site = "a", offering = "9E8D7C6B-5A4F-4321-8765-FEDCBA987654" }
source = { site = "b", offering = "0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01" }
"""
WITH_STATES = GOOD + """
[[links]]
name = "a-from-b-all"
target = { site = "a", offering = "9e8d7c6b5a4f43218765fedcba987654" }
source = { site = "b", offering = "1f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01" }
target_states = ["ok", "requested", "Error creating"]
"""
ENV = {"USYNC_TOKEN_A": "token-a-secret", "USYNC_TOKEN_B": "token-b-secret"}


def test_a_good_file_decodes_with_defaults_and_normalised_uuids():
    config = parse_config(GOOD, ENV)
    link = config.links[0]
    assert link.target.offering == "9e8d7c6b5a4f43218765fedcba987654"
    assert link.reconcile is True
    assert link.target_states == ["OK", "Creating", "Requested"]
    assert config.sites["b"].rates.requests_per_second == 50
    assert config.sites["a"].rates.requests_per_second == 20
    assert config.kafka.events_topic == "waldur.offering-users.events"
    assert config.reconcile_interval == 60


def test_tokens_come_from_the_environment_and_never_show_themselves():
    config = parse_config(GOOD, ENV)
    token = config.site_token("a")
    assert token.reveal() == "token-a-secret"
    assert "token-a-secret" not in repr(token) + str(token) + repr(config)
    assert token == Secret("token-a-secret")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (('api_url = "http://127.0.0.1:8001/api/"', "api_url = 12"), r"\$\.sites\.a\.api_url"),
        (('register = true', 'register = "yes"'), r"\$\.sites\.a\.register"),
        (('reconcile_interval = 60', 'reconcile_interval = -1'), r"\$\.reconcile_interval"),
        (('register = true', 'register = true\ncolour = "blue"'), "colour"),
        (('name = "a-from-b"', 'name = "a from b"'), r"\$\.links\[0\]\.name"),
        (('bootstrap_servers = "127.0.0.1:9092"', 'bootstrap_servers = "x"\nrequest_timeout = 5'),
         r"\$\.kafka\.request_timeout"),  # below the 10 s session timeout
        (('bootstrap_servers = "127.0.0.1:9092"', 'bootstrap_servers = "x"\nrecovery_delay = -1'),
         r"\$\.kafka\.recovery_delay"),
    ],
)
def test_type_errors_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(GOOD.replace(*change), ENV)


def test_cross_field_problems_are_all_reported_at_once():
    bad = GOOD.replace('target = { site = "a"', 'target = { site = "nowhere"').replace(
        'broker_url = "ws://', 'broker_url = "http://')
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, {"USYNC_TOKEN_A": "x"})
    message = str(caught.value)
    assert "$.links[0].target.site: unknown site 'nowhere'" in message
    assert "$.sites.a.broker_url" in message
    assert "$.sites.b.token_env: environment variable USYNC_TOKEN_B is not set" in message


def test_malformed_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[sites\n", ENV)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "nope.toml", ENV)


def test_target_states_are_normalised_to_waldur_display_names():
    config = parse_config(WITH_STATES, ENV)
    assert config.links[1].target_states == ["OK", "Requested", "Error creating"]


def test_one_broker_means_one_replica_and_the_brokers_min_isr():
    kafka = parse_config(GOOD, ENV).kafka
    assert (kafka.replication_factor, kafka.min_insync_replicas, kafka.replica_configs) == (1, None, {})


def test_a_cluster_means_three_replicas_and_two_in_sync_on_every_topic():
    from streams.adapters.kafka.topics import topic_specs

    cluster = GOOD.replace('"127.0.0.1:9092"', '"127.0.0.1:9094,127.0.0.1:9096,127.0.0.1:9098"')
    config = parse_config(cluster, ENV)
    assert (config.kafka.replication_factor, config.kafka.min_insync_replicas) == (3, 2)
    specs = topic_specs(config, worker=True)
    assert len(specs) == 9  # events, DLQ, outcomes, listings, checkpoints, user index, by-link, corrections, budget
    for spec in specs:
        assert spec.replication_factor == 3 and spec.topic_configs["min.insync.replicas"] == "2", spec.name


def test_replicas_are_configurable_and_min_isr_cannot_exceed_them():
    text = GOOD.replace('[kafka]\n', '[kafka]\nreplication_factor = 2\n')
    assert parse_config(text, ENV).kafka.min_insync_replicas == 1
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        parse_config(GOOD.replace('[kafka]\n', '[kafka]\nreplication_factor = 2\nmin_insync_replicas = 3\n'), ENV)
