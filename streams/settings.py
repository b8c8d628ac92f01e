"""Kafka connection settings, read from the environment (secrets never from code or logs).

Every command that talks to Kafka takes ``--bootstrap-servers``; when it is not given,
``RECSTREAM_BOOTSTRAP_SERVERS`` is used, then ``127.0.0.1:9092``. Security settings come
only from the environment:

====================================  =============================================
``RECSTREAM_KAFKA_SECURITY_PROTOCOL``  PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
``RECSTREAM_KAFKA_SASL_MECHANISM``     PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
``RECSTREAM_KAFKA_SASL_USERNAME``      SASL user name
``RECSTREAM_KAFKA_SASL_PASSWORD``      SASL password (never logged: hidden from ``repr``)
``RECSTREAM_KAFKA_SSL_CAFILE``         CA bundle for SSL / SASL_SSL
``RECSTREAM_KAFKA_SESSION_TIMEOUT_MS``  consumer-group session timeout (10000)
``RECSTREAM_KAFKA_REBALANCE_TIMEOUT_MS``  rebalance timeout (30000); group joins wait about
                                       half of it on small brokers, so the embedded default
                                       uses 6000
``RECSTREAM_KAFKA_ONE_RECORD_BATCHES``  1 = every changelog partition the interests worker
                                       wrote in a batch ends on a one-record batch (a
                                       tombstone for a key no table holds). The embedded
                                       broker (tansu 0.1.x) reports a partition's end
                                       offset as the last *batch*'s base offset + 1, so
                                       faust's changelog recovery (which reads up to that
                                       end) would miss the tail of the last batch; the
                                       closing record keeps it exact. Unneeded on Apache
                                       Kafka.
``RECSTREAM_KAFKA_FETCH_MAX_WAIT_MS``   longest a consumer's fetch waits for data (500).
                                       Apache Kafka answers a fetch as soon as data
                                       arrives; the embedded broker answers a fetch over
                                       several partitions only at this deadline, so its
                                       default (``EMBEDDED_ENV``) is 50 ms
====================================  =============================================
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is and how to authenticate to it."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    client_id: str = "recstream"
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = 30_000
    one_record_batches: bool = False
    fetch_max_wait_ms: int = 500

    def __post_init__(self) -> None:
        if self.security_protocol not in _PROTOCOLS:
            raise ValueError(
                f"unknown Kafka security protocol {self.security_protocol!r}; "
                f"expected one of {', '.join(_PROTOCOLS)}"
            )
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                "SASL needs RECSTREAM_KAFKA_SASL_USERNAME and RECSTREAM_KAFKA_SASL_PASSWORD"
            )

    @classmethod
    def from_env(cls, bootstrap_servers: str | None = None) -> KafkaSettings:
        env = os.environ
        return cls(
            bootstrap_servers=bootstrap_servers
            or env.get("RECSTREAM_BOOTSTRAP_SERVERS")
            or DEFAULT_BOOTSTRAP_SERVERS,
            security_protocol=env.get("RECSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            sasl_mechanism=env.get("RECSTREAM_KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("RECSTREAM_KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("RECSTREAM_KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=env.get("RECSTREAM_KAFKA_SSL_CAFILE") or None,
            session_timeout_ms=int(env.get("RECSTREAM_KAFKA_SESSION_TIMEOUT_MS", "10000")),
            rebalance_timeout_ms=int(env.get("RECSTREAM_KAFKA_REBALANCE_TIMEOUT_MS", "30000")),
            one_record_batches=env.get("RECSTREAM_KAFKA_ONE_RECORD_BATCHES", "0") == "1",
            fetch_max_wait_ms=int(env.get("RECSTREAM_KAFKA_FETCH_MAX_WAIT_MS", "500")),
        )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def _connection(self) -> dict[str, Any]:
        """Servers, client id and SASL keyword arguments, the same for both client libraries."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            kw.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kw

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients (producer, consumer, admin)."""
        kw = self._connection()
        if self.uses_ssl and self.ssl_cafile:
            kw["ssl_cafile"] = self.ssl_cafile
        return kw

    def consumer(self) -> dict[str, Any]:
        """kafka-python consumer keyword arguments: ``kafka_python()`` plus the fetch wait."""
        return {**self.kafka_python(), "fetch_max_wait_ms": self.fetch_max_wait_ms}

    def group_consumer(self) -> dict[str, Any]:
        """kafka-python consumer-group timeouts (its rebalance timeout is max_poll_interval_ms)."""
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "max_poll_interval_ms": self.rebalance_timeout_ms,
            "heartbeat_interval_ms": max(self.session_timeout_ms // 4, 100),
        }

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients."""
        kw = self._connection()
        if self.uses_ssl:
            kw["ssl_context"] = self.ssl_context()
        return kw

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ssl_cafile)

    def faust_broker(self) -> str:
        return ";".join(f"kafka://{s}" for s in self.servers)

    def faust_credentials(self) -> Any:
        """faust's broker_credentials, or None for PLAINTEXT."""
        if not (self.uses_sasl or self.uses_ssl):
            return None
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism or "PLAIN",
                ssl_context=self.ssl_context() if self.uses_ssl else None,
            )
        return faust.SSLCredentials(self.ssl_context())
