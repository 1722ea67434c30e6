"""marshmallow schemas for everything Workmatic accepts: job options, worker options,
payloads, and (below) CSV rows.

Each public entry point validates through these and raises
:class:`workmatic.ValidationError` with marshmallow's ``messages`` dict; nothing is
written when validation fails.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import marshmallow
from marshmallow import Schema, fields, validate, validates_schema

from .exceptions import ValidationError
from .job import STATUSES
from .job import now_ms as current_ms

__all__ = [
    "AddOptionsSchema",
    "Seconds",
    "StrictInteger",
    "WorkerOptionsSchema",
    "dump_payload",
    "validate_add_options",
    "validate_queue",
    "validate_worker_options",
]

#: SQLite stores 64-bit signed integers.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Longest queue name or idempotency key accepted.
MAX_NAME_LENGTH = 255
#: Longest delay accepted (100 years), so that run_at stays a sane integer.
MAX_DELAY_SECONDS = 100 * 365 * 24 * 3600.0


class StrictInteger(fields.Integer):
    """An integer that is really an ``int``: no bools, floats or numeric strings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(value)


class Seconds(fields.Field[float]):
    """A duration in seconds: an ``int``, a finite ``float`` or a ``datetime.timedelta``."""

    default_error_messages = {
        "invalid": "Not a valid duration: give seconds (int or float) or a timedelta.",
        "finite": "Must be a finite number of seconds.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        if not math.isfinite(value):
            raise self.make_error("finite")
        return float(value)


def _name_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=MAX_NAME_LENGTH), **kwargs)


class AddOptionsSchema(Schema):
    """Options of :meth:`Client.add` and :meth:`Client.add_many`."""

    class Meta:
        unknown = marshmallow.RAISE

    priority = StrictInteger(
        load_default=0, validate=validate.Range(min=INT64_MIN // 2, max=INT64_MAX // 2)
    )
    delay = Seconds(load_default=0.0, validate=validate.Range(min=0, max=MAX_DELAY_SECONDS))
    max_attempts = StrictInteger(load_default=3, validate=validate.Range(min=1, max=1_000_000))
    key = _name_field(load_default=None, allow_none=True)


class WorkerOptionsSchema(Schema):
    """Options of :func:`workmatic.create_worker`."""

    class Meta:
        unknown = marshmallow.RAISE

    queue = _name_field(load_default="default")
    concurrency = StrictInteger(load_default=1, validate=validate.Range(min=1, max=100_000))
    lease = Seconds(load_default=30.0, validate=validate.Range(min=0.05, max=MAX_DELAY_SECONDS))
    poll_interval = Seconds(load_default=1.0, validate=validate.Range(min=0.001, max=24 * 3600.0))
    timeout = Seconds(
        load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False)
    )
    backoff = fields.Raw(load_default=None, allow_none=True)

    @validates_schema
    def _check(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        backoff = data.get("backoff")
        if backoff is not None and not callable(backoff):
            raise marshmallow.ValidationError(
                "Must be a callable backoff(n) -> seconds, or None.", "backoff"
            )


_ADD_SCHEMA = AddOptionsSchema()
_WORKER_SCHEMA = WorkerOptionsSchema()
_QUEUE_FIELD = _name_field(required=True)


def _load(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = schema.load(data)
    except marshmallow.ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationError(messages) from None
    return result


@functools.lru_cache(maxsize=4096, typed=True)
def _add_options(priority: Any, delay: Any, max_attempts: Any) -> tuple[int, int, int]:
    data = _load(_ADD_SCHEMA, {"priority": priority, "delay": delay, "max_attempts": max_attempts})
    return data["priority"], round(data["delay"] * 1000), data["max_attempts"]


def validate_add_options(
    priority: Any, delay: Any, max_attempts: Any, key: Any, unknown: Mapping[str, Any]
) -> tuple[int, int, int, str | None]:
    """Validate the options of one add.

    :returns: ``(priority, delay_ms, max_attempts, key)``.
    :raises ValidationError: on any bad or unknown option.
    """
    if unknown:
        raise ValidationError({name: ["Unknown option."] for name in unknown})
    try:
        priority, delay_ms, max_attempts = _add_options(priority, delay, max_attempts)
    except TypeError:  # unhashable values cannot be cached, and are never valid
        _load(_ADD_SCHEMA, {"priority": priority, "delay": delay, "max_attempts": max_attempts})
        raise
    if key is not None:
        key = validate_queue(key, "key")
    return priority, delay_ms, max_attempts, key


def validate_worker_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate :func:`create_worker` options; durations come back as float seconds."""
    return _load(_WORKER_SCHEMA, options)


def validate_queue(queue: Any, name: str = "queue") -> str:
    """Validate a queue name: a non-empty string of at most 255 characters."""
    try:
        value: str = _QUEUE_FIELD.deserialize(queue)
    except marshmallow.ValidationError as exc:
        raise ValidationError({name: exc.messages}) from None
    if not value.isascii() and not _is_utf8(value):
        raise ValidationError({name: ["Not valid Unicode text."]})
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)

# ``JSONEncoder.encode`` builds a new C encoder on every call (~2 µs, more than encoding a
# small payload): build it once. Without a markers dict it does not track containers, so a
# circular reference ends in RecursionError (reported as such) instead of a ValueError.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode: Callable[[Any], str]
if _c_make_encoder is not None:
    _c_encoder = _c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def _encode(value: Any) -> str:
        return "".join(_c_encoder(value, 0))

    #: ``encode_parts(value, 0)``: the same encoding as a tuple of strings, for a loop
    #: over many payloads to call without three Python calls around each (``add_many``).
    #: It checks nothing more: a payload it fails on, or whose text is not ASCII, goes
    #: through :func:`dump_payload`, which decides. None without the C encoder.
    encode_parts: Callable[[Any, int], Sequence[str]] | None = _c_encoder

else:  # pragma: no cover - CPython always has the C encoder
    _encode = _ENCODER.encode
    encode_parts = None


def _to_json(value: Any, field: str) -> str:
    try:
        text = _encode(value)
    except RecursionError:
        raise ValidationError(
            {field: ["Not JSON-serialisable: a circular reference, or nested too deeply."]}
        ) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError({field: [f"Not JSON-serialisable: {exc}"]}) from None
    if not text.isascii() and not _is_utf8(text):
        raise ValidationError({field: ["Not JSON-serialisable: contains invalid Unicode."]})
    return text


def dump_payload(payload: Any, schema: Schema | None = None) -> str:
    """Validate a payload (against ``schema`` if given) and return its JSON text.

    :raises ValidationError: the payload is not JSON-serialisable or fails the schema.
    """
    if schema is not None:
        errors = schema.validate(payload) if isinstance(payload, Mapping) else None
        if errors is None:
            raise ValidationError({"payload": ["A payload with a schema must be an object."]})
        if errors:
            raise ValidationError({"payload": errors})
    return _to_json(payload, "payload")


def dump_result(result: Any) -> str | None:
    """Return a handler's result as JSON text (``None`` stays ``NULL``).

    :raises ValidationError: the result is not JSON-serialisable.
    """
    if result is None:
        return None
    return _to_json(result, "result")


# --- CSV rows (the CLI's import format; used by workmatic/_csv.py)


#: Largest timestamp accepted: 9999-12-31T23:59:59.999Z, in epoch milliseconds.
MAX_EPOCH_MS = 253_402_300_799_999
_PUBLIC_ID = r"[A-Za-z0-9_.~-]{1,128}\Z"


class CsvInteger(fields.Field[int]):
    """An integer written as decimal text in a CSV cell (an ``int`` is accepted too)."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            digits = value.strip()
            if digits[:1] in ("+", "-"):
                digits = digits[1:]
            if digits.isascii() and digits.isdigit():
                return int(value)
        raise self.make_error("invalid")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


class JsonText(fields.String):
    """JSON text, kept exactly as given once it is known to decode (no NaN or Infinity)."""

    default_error_messages = {"json": "Not valid JSON: {error}."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        try:
            _STRICT_JSON.decode(text)
        except (ValueError, RecursionError) as exc:
            raise self.make_error("json", error=str(exc).rstrip(".")) from None
        return text


def _epoch_ms(**kwargs: Any) -> CsvInteger:
    return CsvInteger(validate=validate.Range(min=0, max=MAX_EPOCH_MS), **kwargs)


class CsvRowSchema(Schema):
    """One CSV row of ``workmatic import``, as the strings the ``csv`` module reads.

    Only ``payload`` (JSON text) is required. Empty cells take the defaults: no
    ``public_id`` (the database gives the job one), ``default_queue``, status ``ready``,
    priority 0, attempts 0, max_attempts 3, and "now" for ``run_at``, ``created_at`` and
    ``updated_at``; an empty or ``0`` ``lease_until`` means no lease. ``load`` returns the
    record :meth:`Database.import_jobs` takes.

    :param default_queue: the queue of rows without one.
    :param now_ms: "now" for the defaults, in epoch ms (the current time if ``None``).

    Example::

        record = CsvRowSchema(default_queue="emails").load({"payload": '{"to": "a@b.c"}'})
    """

    class Meta:
        unknown = marshmallow.RAISE

    public_id = fields.String(
        load_default=None,
        validate=validate.Regexp(
            _PUBLIC_ID, error="Must be 1 to 128 letters, digits, '_', '-', '.' or '~'."
        ),
    )
    queue = _name_field(load_default=None)
    payload = JsonText(required=True)
    status = fields.String(load_default="ready", validate=validate.OneOf(STATUSES))
    priority = CsvInteger(
        load_default=0, validate=validate.Range(min=INT64_MIN // 2, max=INT64_MAX // 2)
    )
    run_at = _epoch_ms(load_default=None)
    attempts = CsvInteger(load_default=0, validate=validate.Range(min=0, max=1_000_000))
    max_attempts = CsvInteger(load_default=3, validate=validate.Range(min=1, max=1_000_000))
    lease_until = _epoch_ms(load_default=None)
    created_at = _epoch_ms(load_default=None)
    updated_at = _epoch_ms(load_default=None)
    last_error = fields.String(load_default=None)
    result = JsonText(load_default=None)
    key = _name_field(load_default=None)

    def __init__(
        self, *, default_queue: str = "default", now_ms: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.default_queue = validate_queue(default_queue)
        self.now_ms = now_ms
        self._memo: dict[str, dict[str, Any]] = {name: {} for name in self.MEMOISED}

    #: Columns whose values repeat from row to row: :meth:`load_row` memoises their checks.
    MEMOISED = frozenset(
        {"queue", "status", "priority", "run_at", "attempts", "max_attempts", "lease_until",
         "created_at", "updated_at", "key"}
    )  # fmt: skip

    def load_row(self, row: Mapping[str, str]) -> dict[str, Any]:
        """Validate one row like :meth:`load` does, about four times faster.

        Each field's own ``deserialize`` runs (type, validators), without marshmallow's
        per-load machinery; the results for the :attr:`MEMOISED` columns are cached.

        :raises marshmallow.ValidationError: as :meth:`load` would.
        """
        fields_ = self.load_fields
        if not row.keys() <= fields_.keys():
            return self.load(row)  # type: ignore[no-any-return]  # it reports them
        memo = self._memo
        data: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, field in fields_.items():
            value = row.get(name)
            if value is None or value == "":
                if field.required:
                    errors[name] = [field.error_messages["required"]]
                else:
                    data[name] = field.load_default
                continue
            cache = memo.get(name)
            if cache is not None and value in cache:
                data[name] = cache[value]
                continue
            try:
                data[name] = field.deserialize(value)
            except marshmallow.ValidationError as exc:
                errors[name] = exc.messages
                continue
            if cache is not None:
                if len(cache) >= 10_000:
                    cache.clear()
                cache[value] = data[name]
        if errors:
            raise marshmallow.ValidationError(errors)
        record: dict[str, Any] = self._fill_defaults(data)
        return record

    @marshmallow.pre_load
    def _drop_empty_cells(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None and v != ""}
        return data

    @marshmallow.post_load
    def _fill_defaults(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        now = self.now_ms if self.now_ms is not None else current_ms()
        if data["queue"] is None:
            data["queue"] = self.default_queue
        for name in ("run_at", "created_at", "updated_at"):
            if data[name] is None:
                data[name] = now
        if not data["lease_until"]:
            data["lease_until"] = None
        return data
