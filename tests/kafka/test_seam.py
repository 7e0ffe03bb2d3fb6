"""Only ktasks.kafka imports kafka-python: every other module goes through the seam."""

from __future__ import annotations

import ast
from pathlib import Path

import ktasks

PACKAGE = Path(ktasks.__file__).parent
SEAM = PACKAGE / "kafka"


def kafka_imports(source: str, filename: str = "<source>") -> list[int]:
    """Line numbers of the absolute imports of kafka-python (``kafka`` or ``kafka.*``) in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "kafka" or name.startswith("kafka.") for name in names):
            lines.append(node.lineno)
    return lines


def test_the_checker_tells_kafka_python_from_the_seam() -> None:
    source = """
import kafka
import os, kafka.errors as errors
from kafka import KafkaConsumer
from kafka.admin import OffsetSpec
from .kafka import TopicPartition
from ..kafka.errors import KafkaError
from ktasks.kafka import KafkaProducer
import kafkaesque
def lazy():
    from kafka.structs import OffsetAndMetadata
"""
    assert kafka_imports(source) == [2, 3, 4, 5, 11]


def test_no_module_outside_ktasks_kafka_imports_kafka_python() -> None:
    offenders = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50 and any(p.is_relative_to(SEAM) for p in modules)
    for path in modules:
        if path.is_relative_to(SEAM):
            continue
        for line in kafka_imports(path.read_text(encoding="utf-8"), str(path)):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not offenders, f"import kafka-python through ktasks.kafka, not directly: {offenders}"
