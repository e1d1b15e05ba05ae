#!/usr/bin/env python3
"""Independent check with Confluent's own Python client (confluent-kafka, fastavro).

Reads a responses topic from the beginning with a plain Consumer, decodes every value with
Confluent's AvroDeserializer against the given schema registry (which fetches each schema by
the id in the record's header), and exercises the registry calls that Confluent clients make.
Prints a JSON summary; exits non-zero if any expected response id is missing or anything
fails. No code of this project is used here.

usage: confluent_check.py --brokers B --registry URL --topic T --expect-file F [--timeout S]
"""

import argparse
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--expect-file", required=True)
    p.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()

    expected = set(json.load(open(a.expect_file)))
    registry = SchemaRegistryClient({"url": a.registry})

    # Registry calls a Confluent client makes.
    subject = a.topic + "-value"
    subjects = registry.get_subjects()
    assert subject in subjects, f"{subject} not in {subjects}"
    latest = registry.get_latest_version(subject)
    assert latest.schema.schema_type == "AVRO", latest.schema.schema_type
    assert "ResponseEvent" in latest.schema.schema_str
    again = registry.get_schema(latest.schema_id)
    assert "ResponseEvent" in again.schema_str
    versions = registry.get_versions(subject)
    assert latest.version in versions, versions
    assert registry.test_compatibility(subject, latest.schema) is True
    scratch = a.topic + "-confluent-check"
    v1 = Schema('{"type":"record","name":"C","fields":[{"name":"a","type":"string"}]}', "AVRO")
    v2_ok = Schema('{"type":"record","name":"C","fields":[{"name":"a","type":"string"},'
                   '{"name":"b","type":"int","default":1}]}', "AVRO")
    v2_bad = Schema('{"type":"record","name":"C","fields":[{"name":"a","type":"string"},'
                    '{"name":"b","type":"int"}]}', "AVRO")
    id1 = registry.register_schema(scratch, v1)
    assert registry.register_schema(scratch, v1) == id1
    assert registry.test_compatibility(scratch, v2_ok) is True
    assert registry.test_compatibility(scratch, v2_bad) is False
    id2 = registry.register_schema(scratch, v2_ok)
    assert id2 != id1
    found = registry.lookup_schema(scratch, v1)
    assert found.schema_id == id1 and found.version == 1, found
    v3_bad = Schema('{"type":"record","name":"C","fields":[{"name":"a","type":"int"},'
                    '{"name":"b","type":"int","default":1}]}', "AVRO")
    assert registry.test_compatibility(scratch, v3_bad) is False
    try:
        registry.register_schema(scratch, v3_bad)
        raise AssertionError("an incompatible schema was accepted")
    except Exception as e:  # SchemaRegistryError
        assert getattr(e, "http_status_code", None) == 409, e
        assert getattr(e, "error_code", None) == 409, e

    deserializer = AvroDeserializer(registry)
    consumer = Consumer({
        "bootstrap.servers": a.brokers,
        "group.id": "confluent-check",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
    })
    meta = consumer.list_topics(a.topic, timeout=10)
    partitions = sorted(meta.topics[a.topic].partitions)
    consumer.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in partitions])

    seen = set()
    records = 0
    partition_of_form = {}
    deadline = time.time() + a.timeout
    while not expected <= seen:
        if time.time() > deadline:
            print(json.dumps({"error": "timeout", "missing": len(expected - seen), "records": records}))
            return 1
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise RuntimeError(msg.error())
        value = deserializer(msg.value(), SerializationContext(a.topic, MessageField.VALUE))
        records += 1
        seen.add(value["response_id"])
        # One form, one partition.
        previous = partition_of_form.setdefault(value["form_id"], msg.partition())
        assert previous == msg.partition(), "a form's events are spread over partitions"
        assert msg.key().decode() == value["response_id"]
    consumer.close()
    print(json.dumps({"records": records, "responses": len(seen), "forms": len(partition_of_form),
                      "registry_ids": [latest.schema_id, id1, id2]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
