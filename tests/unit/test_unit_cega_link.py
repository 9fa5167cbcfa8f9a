"""lega.cega_link: the broker definitions that link a node to Central EGA, both ways,
and the password in Central EGA's URI, which goes only where it must."""

import json
import os
import re

import pytest

from lega import broker, cega_link
from lega.cega_link import FEDERATED, LEGACY, LinkError, definitions, main, parse_uris

PASSWORD = "Pa55-only-in-the-file"
URI = (f"amqps://node1:{PASSWORD}@cega.example.org:5671/node1?cacertfile=/etc/cega-ca.pem"
       "&verify=verify_peer&server_name_indication=cega.example.org")

# The keys RabbitMQ documents (federation reference, dynamic shovel guide, definitions)
DEFINITIONS_KEYS = {"rabbit_version", "rabbitmq_version", "product_name", "product_version",
                    "users", "vhosts", "permissions", "topic_permissions", "parameters",
                    "global_parameters", "policies", "queues", "exchanges", "bindings"}
UPSTREAM_KEYS = {"uri", "prefetch-count", "reconnect-delay", "ack-mode", "trust-user-id",
                 "queue", "consumer-tag"}
SHOVEL_KEYS = {"src-uri", "src-protocol", "src-queue", "src-queue-args", "src-exchange",
               "src-exchange-key", "src-prefetch-count", "src-delete-after", "dest-uri",
               "dest-protocol", "dest-queue", "dest-queue-args", "dest-exchange",
               "dest-exchange-key", "dest-publish-properties", "dest-add-forward-headers",
               "dest-add-timestamp-header", "reconnect-delay", "ack-mode"}
POLICY_KEYS = {"vhost", "name", "pattern", "apply-to", "definition", "priority"}


def check_definitions(defs, vhost="/"):
    """What RabbitMQ's definitions import expects of these parts, and links that hold
    together: every policy names an upstream that is defined."""
    assert defs == json.loads(json.dumps(defs))  # plain JSON
    assert set(defs) <= DEFINITIONS_KEYS
    names = [(p["component"], p["name"]) for p in defs["parameters"]]
    assert len(names) == len(set(names)), "a parameter defined twice"
    for parameter in defs["parameters"]:
        assert set(parameter) == {"component", "vhost", "name", "value"}
        assert parameter["vhost"] == vhost
        known = {"federation-upstream": UPSTREAM_KEYS, "shovel": SHOVEL_KEYS}[
            parameter["component"]]
        assert set(parameter["value"]) <= known, set(parameter["value"]) - known
        assert parameter["value"]["ack-mode"] == "on-confirm"  # nothing lost
    upstreams = {p["name"] for p in defs["parameters"] if p["component"] == "federation-upstream"}
    for policy in defs["policies"]:
        assert set(policy) == POLICY_KEYS and policy["vhost"] == vhost
        assert policy["apply-to"] == "queues"
        assert set(policy["definition"]) == {"federation-upstream"}
        assert policy["definition"]["federation-upstream"] in upstreams
    used = {p["definition"]["federation-upstream"] for p in defs["policies"]}
    assert used == upstreams, "an upstream no policy uses"


def test_check_definitions_refuses_what_rabbitmq_would():
    good = definitions("fega", URI)
    check_definitions(good)
    # the old name of a shovel key, a policy naming no upstream, an unknown section, an
    # acknowledgement that may lose messages
    for spoil in (lambda d: d["parameters"][-1]["value"].update({"add-forward-headers": False}),
                  lambda d: d["policies"][0]["definition"].update({"federation-upstream": "x"}),
                  lambda d: d.update({"shovels": []}),
                  lambda d: d["parameters"][-1]["value"].update({"ack-mode": "no-ack"})):
        spoiled = json.loads(json.dumps(good))
        spoil(spoiled)
        with pytest.raises(AssertionError):
            check_definitions(spoiled)


def upstreams(defs):
    return {p["name"]: p["value"] for p in defs["parameters"]
            if p["component"] == "federation-upstream"}


def shovel(defs):
    (value,) = [p["value"] for p in defs["parameters"] if p["component"] == "shovel"]
    return value


def applies(pattern, name):
    """A policy's pattern applies to a name as RabbitMQ matches it: anywhere in the name
    (not anchored unless the pattern says so)."""
    return re.search(pattern, name) is not None


def test_applies_like_rabbitmq():
    assert applies("from_cega", "xfrom_cegax") and not applies("^from_cega$", "xfrom_cega")


def matched(defs, queue):
    """The upstreams federating our ``queue``: those of the policies matching it."""
    return [p["definition"]["federation-upstream"] for p in defs["policies"]
            if applies(p["pattern"], queue)]


# -- the federated way (today's) ------------------------------------------------------

@pytest.mark.parametrize("affiliate, theirs", [("fega", "to_fega"), ("se", "to_se"),
                                               ("fi-csc.2", "to_fi-csc.2")])
def test_federated_pulls_to_affiliate_into_from_cega(affiliate, theirs):
    defs = definitions(affiliate, URI)
    check_definitions(defs)
    (name, upstream), = upstreams(defs).items()
    assert upstream["queue"] == theirs
    assert upstream["uri"] == URI
    assert upstream["trust-user-id"] is False
    assert matched(defs, broker.CEGA_QUEUE) == [name]


@pytest.mark.parametrize("cega_queue", ["from_cega", "from_cega.v2", "cega:in"])
def test_the_policy_matches_exactly_the_federated_queue(cega_queue):
    defs = definitions("fega", URI, cega_queue=cega_queue)
    (policy,) = defs["policies"]
    assert applies(policy["pattern"], cega_queue)
    # not a longer or shorter name, not another of ours ('.' is not any character)
    for other in (f"x{cega_queue}", f"{cega_queue}x", cega_queue[:-1],
                  cega_queue.replace(".", "X").replace(":", "X"), *broker.OWN_QUEUES):
        if other != cega_queue:
            assert not applies(policy["pattern"], other), other


def test_federated_leaves_files_and_accession_alone():
    defs = definitions("fega", URI)
    assert matched(defs, "files") == [] and matched(defs, "accession") == []


# -- the design document's way ----------------------------------------------------------

def test_legacy_pulls_their_files_and_accession_into_ours():
    defs = definitions(None, URI, way=LEGACY)
    check_definitions(defs)
    found = upstreams(defs)
    for queue in ("files", "accession"):
        (name,) = matched(defs, queue)
        assert found[name]["queue"] == queue and found[name]["uri"] == URI
    assert len(found) == 2
    assert matched(defs, broker.CEGA_QUEUE) == []


def test_legacy_queues_of_other_names():
    defs = definitions(None, URI, way=LEGACY, legacy_queues={"files": "v1.files",
                                                            "accession": "v1.stableIDs"})
    found = upstreams(defs)
    assert found[matched(defs, "files")[0]]["queue"] == "v1.files"
    assert found[matched(defs, "accession")[0]]["queue"] == "v1.stableIDs"


@pytest.mark.parametrize("kwargs", [
    {"affiliate": "fega", "way": LEGACY},                       # to_<affiliate> is federated
    {"affiliate": None, "way": LEGACY, "legacy_queues": {"archived": "x"}},
    {"affiliate": None, "way": LEGACY, "legacy_queues": {"files": "no spaces"}},
    {"affiliate": "fega", "legacy_queues": {"files": "v1.files"}},
    {"affiliate": None},                                        # federated needs one
    {"affiliate": "to fega"}, {"affiliate": ""}, {"affiliate": "a/b"},
    {"affiliate": "fega", "cega_queue": "files"},                # our own queues
    {"affiliate": "fega", "cega_queue": "lega.dead_letters"},
    {"affiliate": "fega", "cega_queue": "^from_cega$"},
    {"affiliate": "fega", "cega_exchange": ""},
    {"affiliate": "fega", "vhost": ""},
    {"affiliate": "fega", "way": "both"},
])
def test_wrong_parameters_are_refused(kwargs):
    affiliate = kwargs.pop("affiliate")
    with pytest.raises(LinkError) as refused:
        definitions(affiliate, URI, **kwargs)
    assert PASSWORD not in str(refused.value)


# -- the shovel, both ways ----------------------------------------------------------------

@pytest.mark.parametrize("way", [FEDERATED, LEGACY])
def test_the_shovel_ships_to_cega_with_its_routing_keys(way):
    defs = definitions("fega" if way == FEDERATED else None, URI, way=way)
    value = shovel(defs)
    assert value["src-queue"] == broker.TO_CEGA_QUEUE == "to_cega"
    assert value["src-uri"] == "amqp:///%2F"          # our broker, our vhost
    assert value["dest-uri"] == URI
    assert value["dest-exchange"] == "localega"
    # each message keeps its routing key (files.verified...): none is forced
    assert "dest-exchange-key" not in value and "dest-queue" not in value
    assert value["ack-mode"] == "on-confirm" and value["src-delete-after"] == "never"


def test_another_exchange_and_vhost():
    defs = definitions("fega", URI, vhost="lega/1", cega_exchange="localega.v1")
    check_definitions(defs, vhost="lega/1")
    assert shovel(defs)["dest-exchange"] == "localega.v1"
    assert shovel(defs)["src-uri"] == "amqp:///lega%2F1"


# -- Central EGA's URI ------------------------------------------------------------------

def test_parse_uris():
    assert parse_uris(f"  {URI}\n") == (URI, [])
    second = URI.replace("cega.example.org:", "cega2.example.org:")
    assert parse_uris(f"{URI}\n{second}\n") == ([URI, second], [])
    uri, warnings = parse_uris(f"amqp://node1:{PASSWORD}@cega.example.org/node1")
    assert uri.startswith("amqp://") and len(warnings) == 1 and "unencrypted" in warnings[0]
    _, warnings = parse_uris(f"amqps://node1:{PASSWORD}@cega.example.org/node1")
    assert len(warnings) == 1 and "verify_peer" in warnings[0]
    assert not any(PASSWORD in w for w in warnings)


@pytest.mark.parametrize("text", ["", "\n  \n", f"http://u:{PASSWORD}@cega.example.org/",
                                  f"amqps://u:{PASSWORD}@/vhost", f"amqps:///{PASSWORD}",
                                  f"amqps://u:{PASSWORD}@cega.example.org:56x1/v",
                                  f"amqps://u:{PASSWORD}@[cega/v"])
def test_wrong_uris_are_refused_without_repeating_them(text):
    with pytest.raises(LinkError) as refused:
        parse_uris(text)
    assert PASSWORD not in str(refused.value)


# -- python -m lega.cega_link -------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    """No LEGA_* variable of the machine's; our own broker URL, with a password of its
    own, which must not appear anywhere either."""
    for variable in list(os.environ):
        if variable.startswith("LEGA_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("LEGA_BROKER_URL", "amqp://admin:local-broker-secret@mq:5672/%2F")
    return "local-broker-secret"


def uri_file(tmp_path, text):
    path = tmp_path / "cega_uri"
    path.write_text(text)
    return str(path)


def test_main_uses_the_uri_from_the_file_and_leaks_nothing(tmp_path, capsys, clean_env):
    assert main(["--affiliate", "fega", "--cega-uri-file", uri_file(tmp_path, URI + "\n")]) == 0
    out, err = capsys.readouterr()
    defs = json.loads(out)
    check_definitions(defs)
    assert [u["uri"] for u in upstreams(defs).values()] == [URI]
    assert shovel(defs)["dest-uri"] == URI
    assert out.count(PASSWORD) == 2            # the upstream and the shovel, nowhere else
    assert PASSWORD not in err and err == ""
    assert clean_env not in out + err          # our broker's own password stays out


def test_main_legacy_with_other_names(tmp_path, capsys, clean_env):
    assert main(["--legacy", "--cega-uri-file", uri_file(tmp_path, URI),
                 "--cega-files-queue", "v1.files", "--vhost", "lega",
                 "--cega-exchange", "localega.v1"]) == 0
    defs = json.loads(capsys.readouterr().out)
    check_definitions(defs, vhost="lega")
    assert upstreams(defs)[matched(defs, "files")[0]]["queue"] == "v1.files"
    assert upstreams(defs)[matched(defs, "accession")[0]]["queue"] == "accession"
    assert shovel(defs)["dest-exchange"] == "localega.v1"


def test_main_federates_the_configured_queue(tmp_path, capsys, clean_env):
    conf = tmp_path / "lega.yaml"
    conf.write_text("broker:\n  cega_queue: from_cega_node1\n")
    assert main(["--affiliate", "se", "--cega-uri-file", uri_file(tmp_path, URI),
                 "--conf", str(conf)]) == 0
    defs = json.loads(capsys.readouterr().out)
    assert matched(defs, "from_cega_node1") and not matched(defs, "from_cega")


def test_main_warns_of_plain_amqp_without_the_password(tmp_path, capsys, clean_env):
    plain = f"amqp://node1:{PASSWORD}@cega.example.org:5672/node1"
    assert main(["--affiliate", "fega", "--cega-uri-file", uri_file(tmp_path, plain)]) == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "unencrypted" in err and PASSWORD not in err
    assert shovel(json.loads(out))["dest-uri"] == plain


@pytest.mark.parametrize("text", ["", f"http://node1:{PASSWORD}@cega.example.org/",
                                  f"amqps://node1:{PASSWORD}@:5671/node1"])
def test_main_refuses_a_wrong_uri_without_printing_it(tmp_path, capsys, clean_env, text):
    assert main(["--affiliate", "fega", "--cega-uri-file", uri_file(tmp_path, text)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("cega_link: ") and PASSWORD not in err


def test_main_names_a_missing_file(tmp_path, capsys, clean_env):
    missing = str(tmp_path / "nowhere")
    assert main(["--affiliate", "fega", "--cega-uri-file", missing]) == 2
    out, err = capsys.readouterr()
    assert out == "" and missing in err


def test_main_refuses_a_wrong_affiliate(tmp_path, capsys, clean_env):
    assert main(["--affiliate", "to fega", "--cega-uri-file", uri_file(tmp_path, URI)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "affiliate" in err and PASSWORD not in err


@pytest.mark.parametrize("argv", [
    [],                                                   # neither way chosen
    ["--legacy", "--affiliate", "fega"],                  # both
    ["--affiliate", "fega", "--cega-files-queue", "v1.files"],
])
def test_main_refuses_muddled_options(tmp_path, capsys, clean_env, argv):
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--cega-uri-file", uri_file(tmp_path, URI)])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and PASSWORD not in err


def test_module_constants_are_those_of_the_topology():
    assert cega_link.LEGACY_QUEUES == (broker.FILES_QUEUE, broker.ACCESSION_QUEUE)
    assert cega_link.cega_queue_of(cega_link.FEGA) == "to_fega"
